"""`vft export` on a trained digits run: ONNX parity, INT8 accuracy, the --check gate, the
TensorRT message on a machine without it, and a third party reproducing predictions from
model.onnx + meta.json alone (real torch.onnx, onnxslim, ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from serving.export.to_int8 import quantize_int8
from serving.runtime.tensorrt_backend import tensorrt_unavailable
from trainer.cli import app
from trainer.components.preprocess import Preprocessing, eval_transform
from trainer.tasks.base import model_from_checkpoint

runner = CliRunner()


def vft(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_onnx_export_passes_parity_with_a_dynamic_batch(exported_run):
    run_dir, report = exported_run
    result = report["formats"]["onnx"]
    assert result["status"] == "passed", result
    assert result["max_abs_diff"] <= 1e-3
    assert result["top1_agreement"] >= 0.99
    assert abs(result["metric_delta"]) <= 0.003
    assert result["opset"] >= 17
    assert report["images"] == 360 and report["torch"]["value"] >= 0.9
    model = onnx.load(run_dir / "export" / "model.onnx")
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(run_dir / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        (out,) = session.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})
        assert out.shape == (batch, 10)


def test_int8_static_quantization_loses_at_most_one_point(exported_run):
    run_dir, report = exported_run
    result = report["formats"]["int8"]
    assert result["mode"] == "static" and result["calibration_images"] == 256
    assert result["metric_delta"] >= -0.01, result
    assert result["status"] == "passed"
    assert result["speedup_vs_onnx_fp32"] > 0
    ops = {node.op_type for node in onnx.load(run_dir / "export" / "model.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result["bytes"] < 0.5 * report["formats"]["onnx"]["bytes"]  # int8 weights


def reference_preprocess(img: Image.Image, p: dict) -> np.ndarray:
    """meta.json's steps with PIL and numpy only: no vft, no torchvision."""
    interp = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
        p["interpolation"]
    ]
    img = img.convert("RGB")
    scale = p["resize_size"] / min(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)), interp)
    left, top = (img.width - p["input_size"]) // 2, (img.height - p["input_size"]) // 2
    img = img.crop((left, top, left + p["input_size"], top + p["input_size"]))
    x = np.asarray(img, np.float32) / 255.0
    x = (x - np.array(p["mean"], np.float32)) / np.array(p["std"], np.float32)
    return x.transpose(2, 0, 1)[None]


def test_a_third_party_reproduces_predictions_from_model_onnx_and_meta_json(exported_run, digits_dir):
    run_dir, _ = exported_run
    meta = json.loads((run_dir / "export" / "meta.json").read_text())
    p = meta["preprocessing"]
    session = ort.InferenceSession(str(run_dir / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    model, _ = model_from_checkpoint(run_dir / "best")
    transform = eval_transform(Preprocessing.from_meta(p))
    files = sorted((digits_dir / "val").rglob("*.png"))[::12]
    agree = 0
    for path in files:
        img = Image.open(path).convert("RGB").resize((45, 38))  # not the training size: resize + crop matter
        (theirs,) = session.run(None, {"input": reference_preprocess(img, p)})
        with torch.inference_mode():
            ours = model(transform(img)[None]).numpy()
        agree += int(theirs.argmax() == ours.argmax())
        assert meta["classes"][int(theirs.argmax())] in meta["classes"]
    assert agree / len(files) >= 0.9, f"{agree}/{len(files)}"


def test_check_exits_1_when_a_threshold_is_exceeded(exported_run, tmp_path):
    run_dir, _ = exported_run
    copy = tmp_path / "run"
    copy.mkdir()
    for sub in ("best", "config.yaml"):
        src = run_dir / sub
        (copy / sub).symlink_to(src, target_is_directory=src.is_dir())
    result = vft("export", copy, "--format", "onnx", "--check", "--max-abs-diff", "0", "--max-images", "64")
    assert result.exit_code == 1, result.output
    assert "parity check failed" in result.output and "max abs diff" in result.output
    report = json.loads((copy / "export" / "report.json").read_text())
    assert report["passed"] is False and report["formats"]["onnx"]["status"] == "failed"
    without_check = vft("export", copy, "--format", "onnx", "--max-abs-diff", "0", "--max-images", "64")
    assert without_check.exit_code == 0, without_check.output


def test_tensorrt_says_why_it_cannot_build_here(exported_run, tmp_path):
    reason = tensorrt_unavailable()
    run_dir, _ = exported_run
    copy = tmp_path / "run"
    copy.mkdir()
    for sub in ("best", "config.yaml"):
        (copy / sub).symlink_to(run_dir / sub)
    result = vft("export", copy, "--format", "tensorrt", "--max-images", "32", "--calibration-images", "32")
    if reason is None:  # a GPU machine with TensorRT: a real engine
        assert result.exit_code == 0, result.output
        assert (copy / "export" / "model.plan").stat().st_size > 0
        return
    assert result.exit_code == 2
    assert f"tensorrt: not built: {reason}" in " ".join(result.output.split())
    # refused before anything was built: no ONNX model exported only to feed it, no report
    assert not (copy / "export").exists()


def test_dynamic_int8_runs_and_agrees(exported_run, tmp_path):
    run_dir, _ = exported_run
    out = tmp_path / "model.int8.onnx"
    info = quantize_int8(run_dir / "export" / "model.onnx", out, [], "dynamic", "input")
    assert info["mode"] == "dynamic"
    fp32 = ort.InferenceSession(str(run_dir / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    assert int8.run(None, {"input": x})[0].shape == fp32.run(None, {"input": x})[0].shape


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "{missing}"], "no best/meta.json"),
        (["export", "{run}", "--format", "onnx,coreml"], "--format: unknown coreml"),
        (["export", "{run}", "--data", "{missing}"], "data.val"),
        (["serve", "{missing}"], "no best/meta.json"),
        (["serve", "{run}", "--backend", "int8"], "run `vft export"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(digits_run, tmp_path, args, message):
    empty = tmp_path / "fresh"
    empty.mkdir()
    (empty / "best").symlink_to(digits_run / "best")  # a run without export/
    (empty / "config.yaml").symlink_to(digits_run / "config.yaml")
    names = {"missing": tmp_path / "nope", "run": empty}
    result = vft(*[a.format(**names) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (empty / "export" / "model.onnx").exists()


def test_export_artifacts_sit_in_the_run_dir_contract(exported_run):
    run_dir, report = exported_run
    export = Path(run_dir, "export")
    for name in ("model.onnx", "model.int8.onnx", "report.json", "meta.json"):
        assert (export / name).is_file(), name
    assert report["passed"] is True
