"""What `vft export` needs from a detector: the detector, its own resize/normalise and box
post-processing included, as the ONNX graph through torch.onnx's TorchScript exporter (the
dynamo exporter does not trace torchvision's detection heads): one image `image` (3, H, W) of any
size in; `boxes` (x1, y1, x2, y2 in the image's pixels), `labels` (class i is label i + 1) and
`scores` out. Parity with PyTorch: the images whose box count agrees, their labels, the largest
box difference. FP32 ONNX only."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.components.deploy import ExportSpec, OnnxGraph, Thresholds

SPEC = ExportSpec(
    formats=("onnx",), default_formats=("onnx",), unsupported="detection exports ONNX (FP32) only"
)
INPUT, OUTPUTS = "image", ("boxes", "labels", "scores")
MIN_BOX_DIFF = 1e-2  # boxes are in pixels: the largest difference never gates below this


def graph_outputs(model: nn.Module, images: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Per image (boxes, labels, scores): the detector's list of dicts as plain tensors."""
    return [tuple(out[k] for k in OUTPUTS) for out in model(images)]


class DetectorOutputs(nn.Module):
    """One image in, (boxes, labels, scores) out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        return graph_outputs(self.model, [image])[0]


def onnx_graph(model: nn.Module, meta: dict) -> OnnxGraph:
    size = meta["preprocessing"]["min_size"]
    dynamic = {INPUT: {1: "height", 2: "width"}, **{k: {0: "detections"} for k in OUTPUTS}}
    return OnnxGraph(DetectorOutputs(model).eval(), (torch.rand(3, size, size),), (INPUT,), OUTPUTS, dynamic,
                     dynamo=False)  # fmt: skip


def metric_inputs(outputs: list[tuple[np.ndarray, ...]]) -> list[dict]:
    return [{k: torch.from_numpy(v) for k, v in zip(OUTPUTS, out, strict=True)} for out in outputs]


def box_parity(reference: list[list], outputs: list[list]) -> dict:
    """`reference` and `outputs`: per backend call, per image (boxes, labels, scores)."""
    ref = [image for call in reference for image in call]
    out = [image for call in outputs for image in call]
    same = [(r, o) for r, o in zip(ref, out, strict=True) if len(r[0]) == len(o[0])]
    diffs = [float(np.abs(r[0] - o[0]).max()) for r, o in same if len(r[0])]
    labels = [bool((r[1] == o[1]).all()) for r, o in same]
    return {
        "count_agreement": len(same) / max(len(ref), 1),
        "label_agreement": sum(labels) / max(len(ref), 1),
        "max_abs_box_diff": max(diffs, default=0.0),
    }


def box_failures(result: dict, exact: bool, t: Thresholds) -> list[str]:
    failed = []
    if result["count_agreement"] < t.min_agreement:
        failed.append(f"box count agrees on {result['count_agreement']:.4f} of images < {t.min_agreement}")
    if result["max_abs_box_diff"] > max(t.max_abs_diff, MIN_BOX_DIFF):
        failed.append(f"max abs box diff {result['max_abs_box_diff']:.2e} px")
    if -result["metric_delta"] > t.max_metric_drop:
        failed.append(f"{result['metric']} drops {-result['metric_delta']:.4f} > {t.max_metric_drop}")
    return failed
