"""What `vft export` needs from Mask R-CNN: the model, its own resize/normalise, box and mask
post-processing included, as the ONNX graph through torch.onnx's TorchScript exporter (the dynamo
exporter does not trace torchvision's detection heads): one image `image` (3, H, W) of any size
in; `boxes` (x1, y1, x2, y2 in the image's pixels), `labels` (class i is label i + 1), `scores`
and `masks` ((N, H, W) probabilities at the image's size) out. Parity with PyTorch:
components/parity.py's box parity and the lowest IoU of an object's mask between the two. FP32
ONNX only."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.components.deploy import ExportSpec, OnnxGraph, Thresholds
from trainer.components.parity import box_failures, box_parity
from trainer.tasks.instance_segmentation.metrics import MASK_THRESHOLD

SPEC = ExportSpec(
    formats=("onnx",), default_formats=("onnx",), unsupported="instance segmentation exports ONNX (FP32) only"
)
INPUT, OUTPUTS = "image", ("boxes", "labels", "scores", "masks")


def graph_outputs(model: nn.Module, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Per image (boxes, labels, scores, masks (N, H, W)): the model's list of dicts as tensors."""
    return [(o["boxes"], o["labels"], o["scores"], o["masks"][:, 0]) for o in model(images)]


class MaskRcnnOutputs(nn.Module):
    """One image in, (boxes, labels, scores, masks) out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        return graph_outputs(self.model, [image])[0]


def onnx_graph(model: nn.Module, meta: dict) -> OnnxGraph:
    size = meta["preprocessing"]["min_size"]
    dynamic = {
        INPUT: {1: "height", 2: "width"},
        **{k: {0: "objects"} for k in OUTPUTS[:3]},
        "masks": {0: "objects", 1: "height", 2: "width"},
    }
    return OnnxGraph(MaskRcnnOutputs(model).eval(), (torch.rand(3, size, size),), (INPUT,), OUTPUTS, dynamic,
                     dynamo=False)  # fmt: skip


def metric_inputs(outputs: list[tuple[np.ndarray, ...]]) -> list[dict]:
    return [{k: torch.from_numpy(v) for k, v in zip(OUTPUTS, out, strict=True)} for out in outputs]


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per object, the IoU of two (N, H, W) probability masks thresholded at 0.5."""
    a, b = a >= MASK_THRESHOLD, b >= MASK_THRESHOLD
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, (a & b).reshape(len(a), -1).sum(1) / np.maximum(union, 1), 1.0)


def instance_parity(reference: list[list], outputs: list[list]) -> dict:
    """The box parity plus, over the images whose object count agrees, the lowest IoU of an
    object's mask between the two. Per backend call, per image (boxes, labels, scores, masks)."""
    ref = [image for call in reference for image in call]
    out = [image for call in outputs for image in call]
    ious = [
        float(mask_iou(r[3], o[3]).min()) for r, o in zip(ref, out, strict=True) if len(r[0]) == len(o[0]) > 0
    ]
    return {**box_parity(reference, outputs), "min_mask_iou": min(ious, default=1.0)}


def instance_failures(result: dict, exact: bool, t: Thresholds) -> list[str]:
    failed = box_failures(result, exact, t)
    if result["min_mask_iou"] < t.min_agreement:
        failed.append(f"an object's mask IoU with torch is {result['min_mask_iou']:.4f} < {t.min_agreement}")
    return failed
