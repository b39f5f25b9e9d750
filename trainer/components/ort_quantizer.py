"""Where a QAT graph gets fake quantization, chosen for ONNX Runtime's QDQ kernels: the input,
weight and output of every convolution and linear layer (the output after its BatchNorm and
ReLU, which ONNX Runtime fuses), and the inputs and output of the elementwise and pooling ops
between them (add, mul, hard-swish, hard-sigmoid, SiLU, average and max pooling, means), so
each convolution's neighbours hand it uint8 tensors and it runs as QLinearConv.

torchao's x86 quantizer targets Inductor instead: it leaves a convolution's output float when
an activation such as hard-swish follows (Inductor fuses the pair), which ONNX Runtime then
runs as a float convolution with its weights dequantized on every call (measured on
MobileNetV3: 14 of 53 convolutions quantized, INT8 0.2x the speed of post-training INT8).
Imported only by `qat.py`, which imports torchao late.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

aten = torch.ops.aten
WEIGHTED = {aten.conv1d.default, aten.conv2d.default, aten.linear.default}
NORMS = {aten.batch_norm.default}
RELUS = {aten.relu.default, aten.relu_.default}
ELEMENTWISE = {
    aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor, aten.hardswish.default,
    aten.hardswish_.default, aten.hardsigmoid.default, aten.hardsigmoid_.default, aten.silu.default,
    aten.silu_.default, aten.sigmoid.default, aten.adaptive_avg_pool2d.default, aten.avg_pool2d.default,
    aten.mean.dim,
}  # fmt: skip
SAME_SCALE = {aten.max_pool2d.default, aten.flatten.using_ints, aten.reshape.default, aten.view.default}


def _annotated(node: Node) -> bool:
    annotation = node.meta.get("quantization_annotation")
    return annotation is not None and annotation._annotated


def _single_user(node: Node, targets: set) -> Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].target in targets else None


class OrtQuantizer(Quantizer):
    """`act`: uint8 per-tensor activations; `weight`: int8 weights (per channel or tensor)."""

    def __init__(self, act: QuantizationSpec, weight: QuantizationSpec):
        super().__init__()
        self.act, self.weight = act, weight

    def annotate(self, model: GraphModule) -> GraphModule:
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target in WEIGHTED and not _annotated(node):
                self._weighted(node)
        for node in model.graph.nodes:
            if node.op != "call_function" or _annotated(node):
                continue
            if node.target in ELEMENTWISE and _is_float_tensor(node) and _computed(node.args[0]):
                self._elementwise(node)
            elif node.target in SAME_SCALE and isinstance(node.args[0], Node) and _annotated(node.args[0]):
                shared = SharedQuantizationSpec(node.args[0])
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: shared}, output_qspec=shared, _annotated=True
                )
        return model

    def _weighted(self, node: Node) -> None:
        """Input and weight on the layer; the output on its last op of conv -> BN -> ReLU (the
        ops between are marked annotated so nothing quantizes them)."""
        source, weight = node.args[0], node.args[1]
        chain = [node]
        for targets in (NORMS, RELUS):
            follower = _single_user(chain[-1], targets)
            if follower is not None:
                chain.append(follower)
        tail = chain[-1]
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={source: self.act, weight: self.weight},
            output_qspec=self.act if tail is node else None,
            _annotated=True,
        )
        for middle in chain[1:-1]:
            middle.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
        if tail is not node:
            tail.meta["quantization_annotation"] = QuantizationAnnotation(
                output_qspec=self.act, _annotated=True
            )

    def _elementwise(self, node: Node) -> None:
        inputs = {arg: self.act for arg in node.args if isinstance(arg, Node) and _is_float_tensor(arg)}
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, output_qspec=self.act, _annotated=True
        )

    def validate(self, model: GraphModule) -> None:
        pass


def _computed(arg) -> bool:
    """An activation, not a parameter or buffer (BatchNorm's counter update adds to one)."""
    return isinstance(arg, Node) and arg.op != "get_attr"


def _is_float_tensor(node: Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_floating_point()
