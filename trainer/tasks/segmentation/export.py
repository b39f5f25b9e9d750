"""What `vft export` needs from a segmenter: its logits tensor as the ONNX graph (torch.onnx's
dynamo exporter; input `input`, N x 3 x S x S float32 with a dynamic batch axis; output `logits`,
N x C x S x S), its outputs in the form its metrics take, and the formats (all of them; parity on
at most 100 images, whose logits of every pixel are held for the comparison)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.components.deploy import ExportSpec, OnnxGraph
from trainer.tasks.segmentation.model import seg_logits

SPEC = ExportSpec(
    formats=("onnx", "int8", "tensorrt"), default_formats=("onnx", "int8"), max_parity_images=100
)
INPUT, OUTPUT = "input", "logits"


class Logits(nn.Module):
    """A segmenter's logits tensor (torchvision segmenters return a dict with `out`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return seg_logits(self.model(x))


def graph_outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Logits (N, C, H, W) of a preprocessed batch."""
    return seg_logits(model(inputs))


def onnx_graph(model: nn.Module, meta: dict) -> OnnxGraph:
    size = int(meta["preprocessing"]["input_size"])
    return OnnxGraph(
        Logits(model).eval(), (torch.randn(2, 3, size, size),), (INPUT,), (OUTPUT,), {INPUT: {0: "batch"}},
        dynamo=True,
    )  # fmt: skip


def metric_inputs(outputs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(outputs)
