"""What `vft export` needs from Mask R-CNN: the model, its own resize/normalise, box and mask
post-processing included, as the ONNX graph through torch.onnx's TorchScript exporter (the dynamo
exporter does not trace torchvision's detection heads): one image `image` (3, H, W) of any size
in; `boxes` (x1, y1, x2, y2 in the image's pixels), `labels` (class i is label i + 1), `scores`
and `masks` ((N, H, W) probabilities at the image's size) out. Parity with PyTorch: the images
whose object count agrees, their labels, the largest box difference and the lowest IoU of an
object's mask between the two. FP32 ONNX only."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.components.deploy import ExportSpec, OnnxGraph, Thresholds

SPEC = ExportSpec(
    formats=("onnx",), default_formats=("onnx",), unsupported="instance segmentation exports ONNX (FP32) only"
)
INPUT, OUTPUTS = "image", ("boxes", "labels", "scores", "masks")
MIN_BOX_DIFF = 1e-2  # boxes are in pixels: the largest difference never gates below this
MASK_THRESHOLD = 0.5


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
    """`reference` and `outputs`: per backend call, per image (boxes, labels, scores, masks)."""
    ref = [image for call in reference for image in call]
    out = [image for call in outputs for image in call]
    same = [(r, o) for r, o in zip(ref, out, strict=True) if len(r[0]) == len(o[0])]
    diffs = [float(np.abs(r[0] - o[0]).max()) for r, o in same if len(r[0])]
    labels = [bool((r[1] == o[1]).all()) for r, o in same]
    ious = [float(mask_iou(r[3], o[3]).min()) for r, o in same if len(r[0])]
    return {
        "count_agreement": len(same) / max(len(ref), 1),
        "label_agreement": sum(labels) / max(len(ref), 1),
        "max_abs_box_diff": max(diffs, default=0.0),
        "min_mask_iou": min(ious, default=1.0),
    }


def instance_failures(result: dict, exact: bool, t: Thresholds) -> list[str]:
    failed = []
    if result["count_agreement"] < t.min_agreement:
        failed.append(f"object count agrees on {result['count_agreement']:.4f} of images < {t.min_agreement}")
    if result["max_abs_box_diff"] > max(t.max_abs_diff, MIN_BOX_DIFF):
        failed.append(f"max abs box diff {result['max_abs_box_diff']:.2e} px")
    if result["min_mask_iou"] < t.min_agreement:
        failed.append(f"an object's mask IoU with torch is {result['min_mask_iou']:.4f} < {t.min_agreement}")
    if -result["metric_delta"] > t.max_metric_drop:
        failed.append(f"{result['metric']} drops {-result['metric_delta']:.4f} > {t.max_metric_drop}")
    return failed
