"""Quantization-aware training's building blocks on small real models (timm's test_resnet):
capture and prepare, train/eval on a captured graph, freezing, the EMA, the split of the state,
and conversion to a QDQ ONNX model that ONNX Runtime runs."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

from serving.export.to_onnx import export_onnx
from trainer.components.deploy import OnnxGraph
from trainer.components.qat import (
    QPARAM_PREFIX,
    QatEma,
    QatPrepareError,
    QatSettings,
    convert,
    freeze_bn,
    freeze_observers,
    is_qat,
    load_qparams,
    prepare,
    set_mode,
    split_state,
)

SIZE = 32


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=4)


def _batch(n: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def prepared():
    """A QAT graph after a few training steps (so its observers hold ranges)."""
    model = prepare(_model(), _batch(2), QatSettings())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        loss = nn.functional.cross_entropy(model(_batch(seed=step)), torch.arange(8) % 4)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def test_prepare_shares_the_parameters_and_zero_bn_scales_do_not_give_nan():
    model = _model()
    zero_init = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()]
    assert zero_init, "timm zero-initialises the last BN of each block: the case to cover"
    params = dict(model.named_parameters())
    graph = prepare(model, _batch(2), QatSettings())
    assert is_qat(graph) and not is_qat(model)
    assert all(p is params[n] for n, p in graph.named_parameters())  # the optimizer keeps training them
    out = graph(_batch(5))  # another batch size: the batch axis is free
    assert out.shape == (5, 4) and torch.isfinite(out).all()


def test_eval_mode_uses_running_statistics_and_train_mode_updates_them(prepared):
    running = {k: v.clone() for k, v in prepared.state_dict().items() if k.endswith("running_mean")}
    set_mode(prepared, train=False)
    x = _batch(4, seed=9)
    first = prepared(x)
    assert torch.equal(first[:1], prepared(x[:1]))  # eval: a sample's output is independent of its batch
    assert all(torch.equal(v, prepared.state_dict()[k]) for k, v in running.items())
    set_mode(prepared, train=True)
    prepared(x)
    assert any(not torch.equal(v, prepared.state_dict()[k]) for k, v in running.items())


def test_frozen_bn_and_observers_stop_updating_in_train_mode():
    model = prepare(_model(), _batch(2), QatSettings())
    model(_batch())
    freeze_bn(model)
    freeze_observers(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or k.endswith(".scale")}
    model(_batch(seed=5) * 3)  # wider ranges, other statistics
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_layer_torch_export_cannot_capture_is_named():
    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Gate()))
    with pytest.raises(QatPrepareError, match=r"at layer '1\.1'"):
        prepare(model, _batch(2), QatSettings())


def test_the_state_splits_into_the_plain_model_and_the_quantization_state(prepared):
    weights, qparams = split_state(prepared.state_dict())
    assert qparams and all(k.startswith(QPARAM_PREFIX) for k in qparams)
    plain = _model(seed=3)
    plain.load_state_dict(weights)  # strict: model.safetensors is the plain model
    again = prepare(plain, _batch(2), QatSettings())
    load_qparams(again, qparams, "qat.safetensors")
    set_mode(again, train=False)
    set_mode(prepared, train=False)
    x = _batch(seed=11)
    assert torch.allclose(again(x), prepared(x), atol=1e-6)
    with pytest.raises(ValueError, match="qat.safetensors: its quantization state does not fit"):
        load_qparams(again, dict(list(qparams.items())[:-1]), "qat.safetensors")
    set_mode(prepared, train=True)


def test_the_ema_averages_weights_by_name_and_copies_quantization_state(prepared):
    ema = QatEma(prepared, decay=0.5)
    with torch.no_grad():
        for p in prepared.parameters():
            p.add_(1.0)
    prepared(_batch(seed=4) * 5)  # new observed ranges
    ema.update(prepared, step=10)
    mine, theirs = ema.module.state_dict(), prepared.state_dict()
    weight = next(n for n, _ in prepared.named_parameters())
    assert torch.allclose(mine[weight], theirs[weight] - 0.5)  # halfway between old and new
    scales = [k for k in mine if k.startswith(QPARAM_PREFIX) and k.endswith(".scale")]
    assert all(torch.equal(mine[k], theirs[k]) for k in scales)


def test_weights_quantize_per_channel_or_per_tensor():
    def weight_schemes(settings):
        graph = prepare(_model(), _batch(2), settings)
        return {
            m.qscheme
            for n, m in graph.named_modules()
            if n.startswith(QPARAM_PREFIX) and m.dtype == torch.int8
        }

    assert weight_schemes(QatSettings()) == {torch.per_channel_symmetric}
    assert weight_schemes(QatSettings(per_channel=False)) == {torch.per_tensor_symmetric}


def test_converted_graph_exports_to_a_qdq_model_onnx_runtime_runs(prepared, tmp_path):
    converted = convert(copy.deepcopy(prepared))  # the fixture's graph stays trainable
    graph = OnnxGraph(converted, (_batch(2),), ("input",), ("logits",), {"input": {0: "batch"}}, dynamo=True)
    export_onnx(graph, tmp_path / "m.onnx", opset=18, slim=False)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and "Conv" in ops
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= 5  # weights stored as int8, not folded back to floats
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = _batch(6, seed=21)
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = converted(x).numpy()
    assert got.shape == (6, 4)
    assert np.abs(got - want).max() < 0.1 * max(np.abs(want).max(), 1.0)
