"""The Tracker (one background thread, one warning per failing backend, missed epochs logged when
the backend is back, keyed by epoch), the MLflow backend on its embedded store (SQLite beside the
runs, continued on resume) and `vft ui` over it, the TensorBoard resume, the `track` config
section and the model registry's pure parts. Against a real tracking server:
tests/integration/test_tracking.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from local_ray import free_ports
from PIL import Image
from tracking_tools import artifact_paths, mlflow_client, steps

from trainer.components.model_registry import MODEL_URI, export_tags
from trainer.components.track_mlflow import read_state, tracking_uri
from trainer.components.tracking import RunInfo, Tracker, TrackOptions, open_tracker
from trainer.config import build_config
from trainer.engine.data_identity import datasets
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[4]


def record(epoch: int) -> dict:
    return {
        "epoch": epoch,
        "train/loss": 1.0 / epoch,
        "val/top1": 0.1 * epoch,
        "stopped": False,
        "tables": {},
    }


class FlakyBackend:
    """A backend whose first `failures` calls raise, as a tracking server that is down would."""

    name, where = "flaky", "http://tracker.invalid"

    def __init__(self, failures: int, logged: int = 0):
        self.failures, self.logged, self.calls, self.epochs, self.ended = failures, logged, 0, [], None

    def _call(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("connection refused")

    def start(self, info: RunInfo) -> int:
        self._call()
        return self.logged

    def log_epoch(self, rec: dict) -> None:
        self._call()
        self.epochs.append(rec["epoch"])

    def finish(self, status: str, files: dict[str, bytes]) -> None:
        self._call()
        self.ended = (status, sorted(files))


def info(run_dir: str = "/runs/x") -> RunInfo:
    return RunInfo("x", run_dir, {"a.b": "1"})


def test_a_tracker_that_comes_back_gets_the_missed_epochs_once_and_one_warning(capsys):
    backend = FlakyBackend(failures=3)
    tracker = Tracker([backend])
    tracker.begin(info())
    for epoch in (1, 2, 3):
        tracker.epoch(record(epoch))
        time.sleep(0.05)  # one flush per epoch (a driver gets epochs seconds apart)
    tracker.sync([record(e) for e in (1, 2, 3, 4)])  # the end: metrics.csv, epochs seen again
    tracker.finish("FINISHED", {"plots/a.png": b"png"})
    assert backend.epochs == [1, 2, 3, 4] and backend.ended == ("FINISHED", ["plots/a.png"])
    assert capsys.readouterr().err.count("tracking: flaky at http://tracker.invalid failed") == 1


def test_a_tracker_still_down_at_the_end_lists_what_it_missed(capsys):
    backend = FlakyBackend(failures=10**6)
    tracker = Tracker([backend])
    tracker.begin(info("/runs/down"))
    tracker.sync([record(1), record(2)])
    tracker.finish("FINISHED")
    text = " ".join(capsys.readouterr().err.split())
    assert text.count("failed (ConnectionError: connection refused)") == 1
    assert "did not record epochs 1-2" in text and "/runs/down/metrics.csv" in text
    assert backend.epochs == [] and backend.ended is None


def test_a_resumed_backend_logs_only_epochs_after_its_last():
    backend = FlakyBackend(failures=0, logged=2)
    tracker = Tracker([backend])
    tracker.begin(info())
    tracker.sync([record(e) for e in (1, 2, 3)])
    tracker.finish("FINISHED")
    assert backend.epochs == [3]


def test_no_backend_is_a_tracker_that_does_nothing():
    tracker = open_tracker(TrackOptions([], None, "vft", "runs", "runs/x"))
    tracker.begin(info())
    tracker.epoch(record(1))
    tracker.finish("FINISHED")
    assert not tracker.enabled and not tracker.thread.is_alive()


# ----------------------------------------------------------------------------- embedded MLflow store


@pytest.fixture(scope="module")
def embedded_store(tmp_path_factory) -> Path:
    """Two trackers over one run directory with neither track.uri nor MLFLOW_TRACKING_URI: the
    second, a resume, continues the first's MLflow run."""
    storage = tmp_path_factory.mktemp("storage")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        options = TrackOptions(["mlflow"], None, "vft", str(storage), str(storage / "run"))
        first = open_tracker(options)
        first.begin(
            RunInfo("run", str(storage / "run"), {"train.epochs": "3"}, {"vft.task": "classification"})
        )
        first.sync([record(1), record(2)])
        first.finish("KILLED")
        again = open_tracker(options)
        again.begin(RunInfo("run", str(storage / "run"), {"train.epochs": "3"}))
        again.sync([record(1), record(2), record(3)])
        again.finish("FINISHED", {"plots/learning_curves.png": b"\x89PNG", "meta.json": b"{}"})
    return storage


def test_the_default_store_is_sqlite_beside_the_runs_and_a_resume_continues_its_run(embedded_store):
    uri = f"sqlite:///{embedded_store / 'mlflow.db'}"
    state = read_state(str(embedded_store / "run"))
    assert state["uri"] == uri
    client = mlflow_client(uri)
    runs = client.search_runs([state["experiment_id"]])
    assert [r.info.run_id for r in runs] == [state["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params == {"train.epochs": "3"}
    assert steps(client, run.info.run_id, "epoch") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    top1 = steps(client, run.info.run_id, "val/top1")
    assert [s for s, _ in top1] == [1, 2, 3] and [v for _, v in top1] == pytest.approx([0.1, 0.2, 0.3])
    assert artifact_paths(client, run.info.run_id) == {"plots/learning_curves.png", "meta.json"}
    # artifacts beside the database, not in ./mlruns of wherever the command ran
    assert run.info.artifact_uri.startswith((embedded_store / "mlartifacts").as_uri())


def test_vft_ui_serves_the_embedded_store_on_localhost(embedded_store, tmp_path):
    port = free_ports(1)[0]
    command = [sys.executable, "-m", "trainer.cli", "ui", str(embedded_store), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline, answer = time.monotonic() + 90, None
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vft"
        while answer is None:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert answer["experiment"]["name"] == "vft"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0
    with pytest.raises(OSError):  # the UI server went with it
        urllib.request.urlopen(url, timeout=5)
    empty = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "ui", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert empty.returncode == 2 and "mlflow.db" in empty.stderr


def test_an_object_storage_run_needs_a_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="track.uri"):
        tracking_uri(None, "s3://bucket/runs")
    assert tracking_uri("http://mlflow:5000", "s3://bucket/runs") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert tracking_uri(None, "s3://bucket/runs") == "http://from-env:5000"


def test_tensorboard_resume_purges_and_rewrites_the_epochs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    options = TrackOptions(["tensorboard"], None, "vft", str(tmp_path), str(tmp_path / "run"))
    for epochs in ((1, 2), (1, 2, 3)):  # a run, then its resume (which sees metrics.csv again)
        tracker = open_tracker(options)
        tracker.begin(info(str(tmp_path / "run")))
        tracker.sync([record(e) for e in epochs])
        png = tmp_path / "curve.png"
        Image.new("RGB", (8, 6), (200, 10, 10)).save(png)
        tracker.finish("FINISHED", {"plots/learning_curves.png": png.read_bytes()})
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/top1")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert events.Images("learning_curves")[-1].width == 8


# ----------------------------------------------------------------------------- config, data, registry


def test_track_backend_takes_a_name_or_a_list_and_none_alone(tmp_path):
    raw = {"task": "classification", "data": {"train": str(tmp_path)}}
    assert build_config(raw).track.backends() == ["mlflow"]
    assert build_config({**raw, "track": {"backend": "tensorboard"}}).track.backend == ["tensorboard"]
    assert build_config({**raw, "track": {"backend": "none"}}).track.backends() == []
    with pytest.raises(ConfigError, match="track.backend"):
        build_config({**raw, "track": {"backend": ["none", "mlflow"]}})
    with pytest.raises(ConfigError, match="track.backend"):
        build_config({**raw, "track": {"backend": "wandb"}})
    remote = {**raw, "run": {"storage": "s3://bucket/runs"}, "track": {"backend": ["mlflow", "tensorboard"]}}
    with pytest.raises(ConfigError, match="tensorboard"):
        build_config(remote)


def test_the_dataset_digest_follows_files_and_labels_not_the_folder(tmp_path):
    for i, name in enumerate(["a/x.png", "a/y.png", "a/v.png", "b/z.png", "b/u.png", "b/t.png"]):
        (tmp_path / "one" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10 * i,) * 3).save(tmp_path / "one" / name)

    def identity(folder: Path) -> dict:
        cfg = build_config({"task": "classification", "data": {"train": str(folder), "val_fraction": 0.34}})
        return {d["name"]: d for d in datasets(cfg)}

    first = identity(tmp_path / "one")
    assert first["train"]["profile"]["images"] == 4 and first["val"]["profile"]["images"] == 2
    assert first["train"]["profile"]["images_per_class"] == {"a": 2, "b": 2}
    assert first["val"]["profile"]["images_per_class"] == {"a": 1, "b": 1}
    (tmp_path / "one").rename(tmp_path / "moved")
    moved = identity(tmp_path / "moved")
    assert [moved[s]["digest"] for s in ("train", "val")] == [first[s]["digest"] for s in ("train", "val")]
    (tmp_path / "moved" / "b" / "w.png").write_bytes((tmp_path / "moved" / "a" / "x.png").read_bytes())
    (tmp_path / "moved" / "a" / "x.png").unlink()  # relabelled: a/x.png -> b/w.png
    changed = identity(tmp_path / "moved")
    assert {changed[s]["digest"] for s in ("train", "val")} != {first[s]["digest"] for s in ("train", "val")}


def test_model_uris_and_export_tags():
    assert MODEL_URI.match("models:/digits/3")["version"] == "3"
    assert MODEL_URI.match("models:/digits@production")["alias"] == "production"
    assert MODEL_URI.match("models:/digits") is None and MODEL_URI.match("runs:/abc/model") is None
    report = {
        "passed": False,
        "epoch": 6,
        "formats": {
            "onnx": {"status": "passed", "max_abs_diff": 1.5e-6, "top1_agreement": 1.0, "exact": True},
            "int8": {"status": "failed", "metric_delta": -0.0375, "failed": ["metric_delta"]},
        },
    }
    tags = export_tags(report)
    assert tags["passed"] == "false" and tags["epoch"] == "6"
    assert (tags["onnx.status"], tags["onnx.max_abs_diff"], tags["int8.metric_delta"]) == (
        "passed",
        "1.5e-06",
        "-0.0375",
    )
    assert "onnx.exact" not in tags and "int8.failed" not in tags
