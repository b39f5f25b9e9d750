"""Quantization-aware training end to end on the real local Ray cluster: a short QAT run from a
finished run (2 DDP workers), then `vft export --format int8 --check` writes a QDQ model with
the scales the run learned (no calibration) and passes the INT8 gate in ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.torch import load_file
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_qat_run_from_a_finished_run_exports_int8_with_its_learned_scales(digits_run, digits_dir, tmp_path):
    storage = tmp_path / "runs"
    result = vft(
        "train", ROOT / "configs/digits.yaml", f"data.train={digits_dir}/train", f"data.val={digits_dir}/val",
        f"model.weights={digits_run}", "qat.enabled=true", "train.epochs=1", "schedule.warmup_epochs=0",
        "optim.lr=0.0005", f"run.storage={storage}", "--name", "qat", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = storage / "qat"
    best = run / "best"
    meta = ckpt.read_meta(best)
    assert meta["training"]["qat"]["epochs"] == 1 and meta["training"]["world_size"] == 2
    assert meta["monitor"]["value"] >= 0.9  # the quantization-aware model itself, on the digits
    qparams = load_file(str(best / ckpt.QAT_FILE))

    result = vft("export", run, "--format", "int8", "--check", "--no-register")
    assert result.exit_code == 0, result.output
    assert "int8 (qat)" in result.output
    report = json.loads((run / "export" / "report.json").read_text())
    int8 = report["formats"]["int8"]
    assert int8["mode"] == "qat" and int8["calibration_images"] == 0 and int8["status"] == "passed"
    assert int8["value"] >= 0.9 and int8["metric_delta"] >= -report["thresholds"]["max_metric_drop"]
    assert report["formats"]["onnx"]["status"] == "passed"  # the float model, for comparison

    model = onnx.load(str(run / "export" / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 10 and ops.count("DequantizeLinear") >= 20
    # the input's quantizer carries the scale the run learned, not one calibrated at export
    learned = float(qparams["activation_post_process_0.scale"][0])
    first_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scale = scales.get(first_q.input[1])
    if scale is None:  # a Constant node holds it
        node = next(n for n in model.graph.node if first_q.input[1] in n.output)
        scale = numpy_helper.to_array(node.attribute[0].t)
    assert np.isclose(float(scale), learned, rtol=1e-6)
