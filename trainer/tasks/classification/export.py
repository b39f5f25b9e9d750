"""What `vft export` needs from a classifier: the model itself as the ONNX graph (torch.onnx's
dynamo exporter; input `input`, N x 3 x S x S float32 with a dynamic batch axis; output
`logits`), its outputs in the form its metrics take, and the formats (all of them)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.components.deploy import ExportSpec, OnnxGraph

SPEC = ExportSpec(formats=("onnx", "int8", "tensorrt"), default_formats=("onnx", "int8"))
INPUT, OUTPUT = "input", "logits"


def graph_outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Logits (N, C) of a preprocessed batch."""
    return model(inputs)


def onnx_graph(model: nn.Module, meta: dict) -> OnnxGraph:
    size = int(meta["preprocessing"]["input_size"])
    return OnnxGraph(
        model, (torch.randn(2, 3, size, size),), (INPUT,), (OUTPUT,), {INPUT: {0: "batch"}}, dynamo=True
    )


def metric_inputs(outputs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(outputs)
