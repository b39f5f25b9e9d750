"""Quantization-aware training through PyTorch 2 export (torchao's pt2e QAT flow): the model is
captured with torch.export, annotated with fake quantization where ONNX Runtime's QDQ kernels
want it (`ort_quantizer.py`: uint8 activations per tensor, int8 weights per channel), trained
like any model, and converted to quantize/dequantize ops that torch.onnx writes as a QDQ model
carrying the learned scales.

A captured graph ignores `.train()`/`.eval()`: `set_mode` rewrites its BatchNorm and dropout
calls instead. Its quantization state (observers, scales, zero points) lives in top-level
`activation_post_process_*` modules, kept apart from the float weights so a checkpoint's
model.safetensors stays the plain model. torchao is imported only when a run uses QAT.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from timm.utils import ModelEmaV3
from torch import nn

QPARAM_PREFIX = "activation_post_process_"  # every quantization tensor's name starts with it
_MARK = "vft_qat"  # GraphModule.meta key: this graph is prepared for QAT (and its BN state)
_MAX_BATCH = 4096


@dataclass(frozen=True)
class QatSettings:
    per_channel: bool = True


class QatPrepareError(ValueError):
    """The model cannot be captured for quantization-aware training (names the layer)."""


def is_qat(model: nn.Module) -> bool:
    return _MARK in getattr(model, "meta", {})


def _quantizer(settings: QatSettings):
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    from trainer.components.ort_quantizer import OrtQuantizer

    # torchao's own QAT configs use the fused observer + fake-quant op, whose per-channel form
    # fails on this torch ("zero_point must be between quant_min and quant_max"): the unfused
    # FakeQuantize computes the same thing
    eps = 2**-12
    act = QuantizationSpec(
        dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=eps),
    )  # fmt: skip
    if settings.per_channel:
        observer, qscheme, axis = MovingAveragePerChannelMinMaxObserver, torch.per_channel_symmetric, 0
    else:
        observer, qscheme, axis = MovingAverageMinMaxObserver, torch.per_tensor_symmetric, None
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=qscheme, ch_axis=axis,
        observer_or_fake_quant_ctr=FakeQuantize.with_args(observer=observer, eps=eps),
    )  # fmt: skip
    return OrtQuantizer(act, weight)


@contextlib.contextmanager
def _layer_trace(model: nn.Module):
    """Yields a function naming the innermost layer running now (while torch.export traces)."""
    stack: list[str] = []

    def enter(name: str) -> None:
        stack.append(name)

    def leave() -> None:  # returns None: a forward hook's value would replace the output
        if stack:
            stack.pop()

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(n)))
            handles.append(module.register_forward_hook(lambda m, a, o: leave()))
    try:
        yield lambda: stack[-1] if stack else "the model's own forward"
    finally:
        for handle in handles:
            handle.remove()


def capture(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export in training mode with a free batch axis; QatPrepareError naming the layer
    the capture failed in."""
    with _layer_trace(model) as where:
        try:
            return torch.export.export(
                model.train(),
                (example,),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=_MAX_BATCH)},),
            )
        except Exception as exc:  # noqa: BLE001 - whatever stops the capture, say where
            layer = where()
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise QatPrepareError(
                f"qat.enabled: {type(model).__name__} cannot be captured for quantization-aware training "
                f"at layer '{layer}' ({type(exc).__name__}: {first.strip()})"
            ) from exc


@contextlib.contextmanager
def _present_convs_only():
    """torchao's conv-BN fusion (prepare) and folding (convert) capture their match patterns for
    every conv type (1d, 2d, transposed) on every device, about 100 small torch.export calls
    in convert: most of its time. A graph without convolutions of that type, or on another
    device, cannot match those patterns, so they are skipped."""
    from torchao.quantization.pt2e import qat_utils

    aten, fn = torch.ops.aten, torch.nn.functional
    packets = {fn.conv1d: aten.conv1d, fn.conv2d: aten.conv2d, fn.conv_transpose1d: aten.conv_transpose1d,
               fn.conv_transpose2d: aten.conv_transpose2d}  # fmt: skip

    def present(m: torch.fx.GraphModule, conv_fn, is_cuda: bool) -> bool:
        packet = packets.get(conv_fn)
        if packet is None:
            return True  # an unknown conv type: let torchao look
        convs = [n for n in m.graph.nodes if getattr(n.target, "overloadpacket", None) is packet]
        devices = {n.meta["val"].device.type for n in convs if "val" in n.meta}
        return bool(convs) and (not devices or ("cuda" in devices) == is_cuda)

    def skip_absent(helper):
        def helper_if_present(m, conv_fn, example_inputs, is_cuda):
            return helper(m, conv_fn, example_inputs, is_cuda=is_cuda) if present(m, conv_fn, is_cuda) else m

        return helper_if_present

    names = [n for n in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper") if hasattr(qat_utils, n)]
    originals = {name: getattr(qat_utils, name) for name in names}
    for name, helper in originals.items():
        setattr(qat_utils, name, skip_absent(helper))
    try:
        yield
    finally:
        for name, helper in originals.items():
            setattr(qat_utils, name, helper)


def prepare(model: nn.Module, example: torch.Tensor, settings: QatSettings) -> torch.fx.GraphModule:
    """The model as a QAT graph (training mode) sharing its parameters: an optimizer built on
    `model` trains it as it is."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    _nonzero_bn_scales(model)
    captured = capture(model, example).module()
    with _present_convs_only():
        prepared = prepare_qat_pt2e(captured, _quantizer(settings))
    prepared.meta[_MARK] = {"bn_frozen": False, "observers_frozen": False}
    set_mode(prepared, train=True)
    return prepared


def _nonzero_bn_scales(model: nn.Module) -> None:
    """pt2e's simulated conv-BN folding divides by the BN scale: a scale of exactly 0 (timm
    zero-initialises the last BN of each residual block) would give NaN, so it becomes 1e-4."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
                module.weight[module.weight == 0] = 1e-4


def set_mode(model: nn.Module, train: bool) -> None:
    """model.train(train), which on a QAT graph means rewriting its BatchNorm calls (batch
    statistics unless frozen) and dropout calls, and observing ranges in training only (unless
    frozen): evaluation images never move the scales."""
    if not is_qat(model):
        model.train(train)
        return
    from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer

    state = model.meta[_MARK]
    bn_training = train and not state["bn_frozen"]
    for node in model.graph.nodes:
        if node.target is torch.ops.aten.batch_norm.default:
            node.update_arg(5, bn_training)
        elif node.target is torch.ops.aten.dropout.default:
            node.update_arg(2, train)
    model.recompile()
    model.apply(enable_observer if train and not state["observers_frozen"] else disable_observer)
    model.training = train


def freeze_bn(model: nn.Module) -> None:
    """BatchNorm statistics stop updating (the usual last phase of QAT)."""
    _freeze(model, "bn_frozen")


def freeze_observers(model: nn.Module) -> None:
    """Activation and weight ranges stop updating; fake quantization goes on with the last ones."""
    _freeze(model, "observers_frozen")


def _freeze(model: nn.Module, what: str) -> None:
    if not model.meta[_MARK][what]:
        model.meta[_MARK][what] = True
        set_mode(model, model.training)


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(float weights as the plain model names them, quantization state)."""
    floats = {k: v for k, v in state.items() if not k.startswith(QPARAM_PREFIX)}
    return floats, {k: v for k, v in state.items() if k.startswith(QPARAM_PREFIX)}


def load_qparams(model: nn.Module, qparams: dict[str, torch.Tensor], source: str) -> None:
    """Quantization state saved from the same model prepared the same way (ValueError naming
    `source` otherwise)."""
    expected = {k for k in model.state_dict() if k.startswith(QPARAM_PREFIX)}
    if set(qparams) != expected:
        raise ValueError(
            f"{source}: its quantization state does not fit this model "
            f"({len(qparams)} tensors saved, {len(expected)} expected)"
        )
    model.load_state_dict(qparams, strict=False)


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The trained QAT graph in inference form: BN folded into the convolutions, int8 weights,
    quantize/dequantize around each quantized op (what torch.onnx writes as QDQ)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    set_mode(prepared, train=False)
    with _present_convs_only():
        converted = convert_pt2e(prepared)
    converted.training = False  # captured graphs refuse .eval(); their BN calls are in eval form
    return converted


class QatEma(ModelEmaV3):
    """timm's ModelEmaV3 over a QAT graph: tensors are paired by name (a copied graph may list
    its state in another order) and quantization state is copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float, device=None, start: nn.Module | None = None):
        super().__init__(model, decay=decay, device=device)
        if start is not None:  # carry on the EMA of the float model QAT starts from
            self.module.load_state_dict(start.state_dict(), strict=False)

    @torch.no_grad()
    def apply_update_(self, model: nn.Module, decay: float) -> None:
        mine, theirs = self.module.state_dict(), model.state_dict()
        averaged = [k for k, v in mine.items() if v.is_floating_point() and not k.startswith(QPARAM_PREFIX)]
        torch._foreach_lerp_([mine[k] for k in averaged], [theirs[k] for k in averaged], 1.0 - decay)
        for key in mine.keys() - set(averaged):
            mine[key].resize_(theirs[key].shape).copy_(theirs[key])
