"""Experiment tracking and the model registry against a real MLflow tracking server (`mlflow
server`, SQLite, proxied artifacts: the session's, started by tests/conftest.py and named by
MLFLOW_TRACKING_URI like a chart's tracking.uri): the digits run's tracked run and TensorBoard
event files, its export registered and served by alias. A tracker that is down:
test_train_ray.py's multilabel run. The resumed run
and the sweeps' parent and child runs are asserted where those runs are made (test_cli_train.py,
test_tune.py); the Tracker's retry logic and the embedded store with `vft ui`: tests/unit/."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from tracking_tools import artifact_paths, mlflow_client, steps, tracked_run
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.runlog import read_metrics_csv

ROOT = Path(__file__).resolve().parents[2]


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_training_run_logs_its_config_epochs_plots_datasets_and_lineage(digits_run, digits_dir):
    client, run = tracked_run(digits_run)
    run_id, rows = run.info.run_id, read_metrics_csv(str(digits_run / "metrics.csv"))
    assert run.info.status == "FINISHED" and run.info.run_name == "digits"
    params = run.data.params
    assert params["model.name"] == "resnet18" and params["data.train"] == f"{digits_dir}/train"
    assert params["train.epochs"] == str(len(rows)) and params["optim.lr"] == str(float(params["optim.lr"]))
    for key in ("val/top1", "train/loss", "train/img_s", "lr"):
        logged = steps(client, run_id, key)
        assert [s for s, _ in logged] == [r["epoch"] for r in rows], key  # step = epoch, once each
        assert [v for _, v in logged] == pytest.approx([r[key] for r in rows], rel=1e-4), key
    tags = run.data.tags
    assert tags["vft.version"] == metadata.version("vft") and tags["vft.version.torch"] == metadata.version(
        "torch"
    )
    assert (tags["vft.world_size"], tags["vft.device"], tags["vft.precision"]) == ("2", "cpu", "fp32")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.getcwd())
    if head.returncode == 0:  # the tests run in a clone: its commit is the code that trained
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    files = artifact_paths(client, run_id)
    wanted = {
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "meta.json",
        "metrics.csv",
        "config.yaml",
    }
    assert wanted | {"dataset.json"} <= files
    meta = json.loads(Path(client.download_artifacts(run_id, "meta.json")).read_text())
    assert meta == json.loads((digits_run / "best" / "meta.json").read_text())

    inputs = {d.dataset.name: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val"}
    for split in ("train", "val"):
        profile = json.loads(inputs[split].profile)
        per_class = {d.name: len(list(d.glob("*.png"))) for d in (digits_dir / split).iterdir()}
        assert profile["images_per_class"] == per_class and profile["images"] == sum(per_class.values())
        assert inputs[split].source == f"{digits_dir}/{split}" and len(inputs[split].digest) == 16


def test_tensorboard_event_files_hold_the_epochs_and_the_plots(digits_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(digits_run / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = read_metrics_csv(str(digits_run / "metrics.csv"))
    top1 = events.Scalars("val/top1")
    assert [e.step for e in top1] == [r["epoch"] for r in rows]
    assert [e.value for e in top1] == pytest.approx([r["val/top1"] for r in rows], rel=1e-4)
    assert {"learning_curves", "confusion_matrix"} <= set(events.Tags()["images"])


def test_export_registers_a_version_with_its_files_and_parity_results(exported_run, registered_digits):
    run_dir, report = exported_run
    client, run = tracked_run(run_dir)
    version = client.get_model_version("digits", registered_digits.rsplit("/", 1)[1])
    assert version.run_id == run.info.run_id and version.source == f"runs:/{run.info.run_id}/model"
    assert version.tags["passed"] == str(report["passed"]).lower()
    for fmt, result in report["formats"].items():
        assert version.tags[f"{fmt}.status"] == result["status"]
        assert float(version.tags[f"{fmt}.metric_delta"]) == pytest.approx(result["metric_delta"], abs=1e-6)
    files = artifact_paths(client, run.info.run_id, "model")
    assert {"model/best/meta.json", "model/config.yaml", "model/export/model.onnx"} <= files
    assert {"model/export/model.int8.onnx", "model/export/report.json"} <= files
    assert not any(f.endswith(".safetensors") for f in files)  # weights stay in the run directory
    delta = client.get_metric_history(run.info.run_id, "export/int8.metric_delta")
    assert delta and delta[-1].value == pytest.approx(report["formats"]["int8"]["metric_delta"], abs=1e-6)


def test_promote_moves_an_alias_and_refuses_unknown_versions(registered_digits):
    version = registered_digits.rsplit("/", 1)[1]
    moved = vft("promote", "digits", version, "--alias", "staging")
    assert moved.exit_code == 0, moved.output
    client = mlflow_client(os.environ["MLFLOW_TRACKING_URI"])
    assert client.get_model_version_by_alias("digits", "staging").version == version
    unknown = vft("promote", "digits", "999", "--alias", "staging")
    assert unknown.exit_code == 2 and "models:/digits/999" in unknown.output
    reserved = vft("promote", "digits", version, "--alias", "latest")
    assert reserved.exit_code == 2 and "--alias" in reserved.output
    missing = vft("serve", "models:/no-such-model@production")
    assert missing.exit_code == 2 and "no-such-model" in missing.output
