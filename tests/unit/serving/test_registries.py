"""Serving's choices come from its registries: the chart's backend enum, `ServeArgs.backend` and
the `--backend`/`--format` choices of `vft serve`, `vft eval` and `vft export` are the registered
names, and every registered task answers serving's part of the task protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from serving.app import ServeArgs
from serving.cli import Backend, Decode
from serving.export.base import EXPORTERS, ExportError, parse_formats, with_requirements
from serving.runtime.registry import backend_names, backends_for
from trainer.cli import app
from trainer.registry import list_tasks
from trainer.tasks.base import Task, get_task

ROOT = Path(__file__).resolve().parents[3]
SERVING_METHODS = (
    "graph_outputs", "metric_inputs", "onnx_graph", "parity", "parity_failures", "serve_handler", "evaluation"
)  # fmt: skip


def test_the_charts_backends_are_the_runtime_registry():
    schema = json.loads((ROOT / "charts/vft/values.schema.json").read_text())
    assert sorted(schema["properties"]["serve"]["properties"]["backend"]["enum"]) == backend_names()
    assert backend_names() == ["int8", "onnx", "tensorrt", "torch"]


def test_serve_args_accept_exactly_the_registered_backends():
    assert ServeArgs.model_json_schema()["properties"]["backend"]["enum"] == backend_names()
    for name in backend_names():
        assert ServeArgs(run_dir="runs/x", backend=name).backend == name
    with pytest.raises(ValidationError):
        ServeArgs(run_dir="runs/x", backend="coreml")


def test_decode_choices_agree_and_gpu_decoding_without_a_gpu_is_refused_before_a_cluster_starts(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as here, on a GPU machine too
    schema = json.loads((ROOT / "charts/vft/values.schema.json").read_text())
    chart = schema["properties"]["serve"]["properties"]["decode"]["enum"]
    assert chart == ServeArgs.model_json_schema()["properties"]["decode"]["enum"] == [d.value for d in Decode]
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--decode", "gpu"])
    assert result.exit_code == 2 and "--decode gpu" in result.output


def test_command_choices_are_the_registered_names():
    assert [b.value for b in Backend] == backend_names()
    assert EXPORTERS.names() == ["int8", "onnx", "tensorrt"]
    assert parse_formats("tensorrt, onnx,tensorrt") == ("tensorrt", "onnx")
    with pytest.raises(ExportError, match="--format: unknown coreml; allowed: int8, onnx, tensorrt"):
        parse_formats("onnx,coreml")
    assert with_requirements(("int8",)) == ("onnx", "int8")


@pytest.mark.parametrize("name", list_tasks())
def test_every_task_answers_serving(name):
    task = get_task(name)
    missing = [m for m in SERVING_METHODS if getattr(type(task), m) is getattr(Task, m)]
    assert not missing, f"{name} does not implement {missing}"
    spec = task.export_spec
    assert set(spec.default_formats) <= set(spec.formats) <= set(EXPORTERS.names())
    assert backends_for(task) == sorted(["torch", *spec.formats])
