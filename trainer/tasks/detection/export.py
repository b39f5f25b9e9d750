"""What `vft export` needs from a detector: the detector, its own resize/normalise and box
post-processing included, as the ONNX graph through torch.onnx's TorchScript exporter (the
dynamo exporter does not trace torchvision's detection heads): one image `image` (3, H, W) of any
size in; `boxes` (x1, y1, x2, y2 in the image's pixels), `labels` (class i is label i + 1) and
`scores` out. Parity with PyTorch: components/parity.py's box parity. FP32 ONNX only."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.components.deploy import ExportSpec, OnnxGraph

SPEC = ExportSpec(
    formats=("onnx",), default_formats=("onnx",), unsupported="detection exports ONNX (FP32) only"
)
INPUT, OUTPUTS = "image", ("boxes", "labels", "scores")


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
