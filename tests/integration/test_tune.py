"""`vft tune`: real sweeps on a local Ray cluster (tiny digits runs on CPU: 16 px images,
timm's test_resnet, one Train worker per trial). The space file and the sweep's pieces without Ray:
tests/unit/tuner/."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from tracking_tools import artifact_paths, steps, tracked_run
from tune_tools import ROOT, tune_args, write_space
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.runlog import read_metrics_csv

runner = CliRunner()


def vft(*args):
    return runner.invoke(app, [str(a) for a in args])


def results(tune_dir: Path) -> dict[str, dict]:
    with (tune_dir / "results.csv").open() as f:
        return {row["trial_id"]: row for row in csv.DictReader(f)}


# ----------------------------------------------------------------------------- ASHA sweep


@pytest.fixture(scope="module")
def asha_sweep(ray_cluster, digits_dir, tmp_path_factory) -> Path:
    """4 trials, lr over five decades (the low ones barely learn in 3 epochs), ASHA halving at
    epochs 1 and 2."""
    tmp = tmp_path_factory.mktemp("asha")
    space = write_space(
        tmp / "space.yaml",
        {
            "num_samples": 4,
            "seed": 0,
            "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
            "params": {"optim.lr": {"loguniform": [1.0e-6, 3.0e-3]}},
        },
    )
    result = vft(*tune_args(digits_dir, tmp / "runs", space, "asha", "train.epochs=3"))
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "asha" / "tune"


def test_asha_stops_bad_trials_before_max_t(asha_sweep):
    rows = results(asha_sweep)
    assert len(rows) == 4
    assert {row["status"] for row in rows.values()} == {"TERMINATED"}
    stopped = [row for row in rows.values() if int(row["epochs"]) < 3]
    assert stopped and all(row["stopped_by"] == "asha" for row in stopped)
    assert any(int(row["epochs"]) == 3 for row in rows.values())
    # the sweep's best is a trial ASHA let run to max_t (which trials reach a rung first, and so
    # which one a rung's cutoff stops, depends on timing: after one epoch at 16 px all are near chance)
    best_id = max(rows, key=lambda t: float(rows[t]["val/top1"]))
    assert int(rows[best_id]["epochs"]) == 3
    assert float(rows[best_id]["optim.lr"]) > min(float(row["optim.lr"]) for row in rows.values())
    for trial_id, row in rows.items():
        history = read_metrics_csv(str(asha_sweep / "trials" / trial_id / "metrics.csv"))
        assert len(history) == int(row["epochs"])
        assert max(h["val/top1"] for h in history) == pytest.approx(float(row["val/top1"]), abs=1e-5)


def test_sweep_writes_best_config_checkpoint_and_plots(asha_sweep):
    rows = results(asha_sweep)
    best_id = max(rows, key=lambda t: float(rows[t]["val/top1"]))
    best_config = yaml.safe_load((asha_sweep / "best_config.yaml").read_text())
    assert best_config["run"]["name"] == "asha-best"
    assert best_config["optim"]["lr"] == pytest.approx(float(rows[best_id]["optim.lr"]))
    assert best_config["model"]["name"] == "test_resnet"
    best = asha_sweep / "best"
    for sub in ("best", "last"):
        for name in ("model.safetensors", "meta.json", "state.pt"):
            assert (best / sub / name).is_file(), f"{sub}/{name}"
    assert (best / "metrics.csv").read_text() == (asha_sweep / "trials" / best_id / "metrics.csv").read_text()
    assert (best / "plots" / "learning_curves.png").stat().st_size > 1000
    assert not list(best.glob("checkpoint_epoch_*"))  # Ray Train's own copies stay with the trial
    assert (asha_sweep / "plots" / "metric_vs_epoch.png").stat().st_size > 1000
    assert (asha_sweep / "plots" / "param_optim.lr.png").stat().st_size > 1000
    assert vft("validate", asha_sweep / "best_config.yaml").exit_code == 0


def test_a_sweep_is_one_mlflow_parent_run_with_a_child_per_trial(asha_sweep):
    rows = results(asha_sweep)
    client, parent = tracked_run(asha_sweep)
    assert parent.info.status == "FINISHED" and parent.data.params["space.scheduler.name"] == "asha"
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"train", "val"}
    files = artifact_paths(client, parent.info.run_id)
    assert {"results.csv", "best_config.yaml", "plots/metric_vs_epoch.png"} <= files
    query = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    children = {
        r.data.tags["vft.trial_id"]: r for r in client.search_runs([parent.info.experiment_id], query)
    }
    assert sorted(children) == sorted(rows)
    best_id = max(rows, key=lambda t: float(rows[t]["val/top1"]))
    assert parent.data.tags["vft.best_trial"] == best_id
    for trial_id, row in rows.items():
        child = children[trial_id]
        assert child.info.status == "FINISHED" and child.data.tags["vft.trial_status"] == "TERMINATED"
        assert float(child.data.params["optim.lr"]) == pytest.approx(float(row["optim.lr"]))
        assert child.data.tags.get("vft.stopped_by", "") == row["stopped_by"]
        assert child.data.tags["vft.best"] == str(trial_id == best_id).lower()
        assert [s for s, _ in steps(client, child.info.run_id, "val/top1")] == list(
            range(1, int(row["epochs"]) + 1)
        )


# ----------------------------------------------------------------------------- failures and resume


def _wait_for_rows(path: Path, rows: int, thread: threading.Thread, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        if len(read_metrics_csv(str(path))) >= rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} never reached {rows} row(s)")


def test_crashed_trials_leave_the_sweep_successful_and_a_rerun_resumes(ray_cluster, digits_dir, tmp_path):
    """Two trials at a time: one's loss goes NaN at once, one finishes, and the third (started
    when the NaN one failed) has its Train worker killed after its first epoch. The sweep still
    succeeds. Running it again re-runs no finished trial, retries the errored ones, and the
    killed trial resumes from its last checkpoint instead of epoch 1."""
    from ray.util.state import list_actors

    space = write_space(
        tmp_path / "space.yaml",
        {
            "search": "grid",
            "scheduler": "fifo",
            "max_concurrent_trials": 2,
            "params": {"optim.lr": {"grid": [1.0e6, 0.003, 0.001]}},
        },
    )
    args = tune_args(digits_dir, tmp_path / "runs", space, "crash", "train.epochs=2")
    tune_dir = tmp_path / "runs" / "crash" / "tune"
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("first", vft(*args)))
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((tune_dir / "trials").glob("*"))) < 3:
        time.sleep(0.2)
    nan, done, killed = sorted((tune_dir / "trials").glob("*"))
    _wait_for_rows(done / "metrics.csv", 2, thread)
    _wait_for_rows(killed / "metrics.csv", 1, thread)
    time.sleep(1.0)  # the finished trial's workers exit
    address = ray_cluster.get_runtime_context().gcs_address  # this session's cluster, not another
    alive = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
    workers = list_actors(address=address, filters=alive)
    assert len(workers) == 1
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=300)
    first = outcome["first"]
    assert first.exit_code == 0, first.output

    rows = results(tune_dir)
    assert rows[done.name]["status"] == "TERMINATED" and rows[done.name]["epochs"] == "2"
    assert rows[nan.name]["status"] == "ERROR" and "NonFiniteLossError" in rows[nan.name]["error"]
    assert rows[killed.name]["status"] == "ERROR" and int(rows[killed.name]["epochs"]) == 1
    assert (tune_dir / "best_config.yaml").is_file()
    finished_files = [done / "metrics.csv", done / "config.yaml"]
    stamps = [p.stat().st_mtime_ns for p in finished_files]
    tune_result = (tune_dir / "experiment" / done.name / "result.json").read_text()
    killed_before = read_metrics_csv(str(killed / "metrics.csv"))
    nan_config = (nan / "config.yaml").stat().st_mtime_ns
    client, parent = tracked_run(tune_dir)
    first_parent, killed_child = parent.info.run_id, tracked_run(killed)[1].info.run_id
    assert tracked_run(killed)[1].info.status == "FAILED"

    second = vft(*args)
    assert second.exit_code == 0, second.output
    rows = results(tune_dir)
    assert [p.stat().st_mtime_ns for p in finished_files] == stamps  # not re-run
    assert (tune_dir / "experiment" / done.name / "result.json").read_text() == tune_result
    assert rows[done.name]["status"] == "TERMINATED"
    assert rows[nan.name]["status"] == "ERROR"  # retried (and NaN again)
    assert (nan / "config.yaml").stat().st_mtime_ns != nan_config
    assert rows[killed.name]["status"] == "TERMINATED"
    history = read_metrics_csv(str(killed / "metrics.csv"))
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[: len(killed_before)] == killed_before  # resumed, not trained again

    # MLflow (the session's server): the rerun continued the sweep's parent run and the killed
    # trial's child run; the NaN trial's child ended FAILED with its error
    client, parent = tracked_run(tune_dir)
    assert parent.info.run_id == first_parent and parent.info.status == "FINISHED"
    assert parent.data.tags["vft.best_trial"] == done.name and parent.data.tags["vft.sweep"] == "true"
    assert {"results.csv", "best_config.yaml"} <= artifact_paths(client, parent.info.run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    by_trial = {run.data.tags["vft.trial_id"]: run for run in children}
    assert sorted(by_trial) == sorted(p.name for p in (nan, done, killed))
    assert (
        by_trial[nan.name].info.status == "FAILED"
        and by_trial[nan.name].data.tags["vft.trial_status"] == "ERROR"
    )
    assert "NonFiniteLossError" in by_trial[nan.name].data.tags["vft.error"]
    assert by_trial[killed.name].info.run_id == killed_child
    assert by_trial[killed.name].info.status == "FINISHED"
    assert steps(client, killed_child, "epoch") == [(1, 1.0), (2, 2.0)]  # once each, over two sweeps
    assert by_trial[done.name].data.tags["vft.best"] == "true"
    assert by_trial[done.name].data.params["optim.lr"] == "0.003"


def test_pbt_exploits_the_better_trials_checkpoint(ray_cluster, digits_dir, tmp_path):
    """Two trials, perturbation every epoch: the worse one continues from the better one's
    checkpoint (same history up to the exploit) with a new learning rate."""
    space = write_space(
        tmp_path / "space.yaml",
        {
            "num_samples": 2,
            "seed": 0,
            "scheduler": {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5, "synch": True},
            "params": {"optim.lr": {"loguniform": [1.0e-6, 3.0e-3]}},
        },
    )
    constant = ["schedule.name=constant", "schedule.warmup_epochs=0"]  # the logged LR is the configured one
    # untracked (track.backend=none): MLflow is the ASHA and crash sweeps' subject
    result = vft(
        *tune_args(
            digits_dir, tmp_path / "runs", space, "pbt", "train.epochs=2", "track.backend=none", *constant
        )
    )
    assert result.exit_code == 0, result.output
    tune_dir = tmp_path / "runs" / "pbt" / "tune"
    policies = list((tune_dir / "experiment").glob("pbt_policy_*.txt"))
    assert policies, "no trial exploited another"
    exploiter = policies[0].stem.removeprefix("pbt_policy_")
    donor = next(t for t in results(tune_dir) if t != exploiter)
    mine = read_metrics_csv(str(tune_dir / "trials" / exploiter / "metrics.csv"))
    theirs = read_metrics_csv(str(tune_dir / "trials" / donor / "metrics.csv"))
    assert mine[0] == theirs[0]  # epoch 1 is the donor's: its checkpoint was copied
    assert [row["epoch"] for row in mine] == [1, 2]
    # then it trained on with its own learning rate: PBT's new one, not the donor's from the
    # checkpoint it resumed (the donor's optimizer state)
    policy = json.loads(policies[0].read_text().splitlines()[-1])
    old_config, new_config = policy[-2], policy[-1]
    assert new_config["optim.lr"] != pytest.approx(old_config["optim.lr"])
    assert theirs[1]["lr"] == pytest.approx(old_config["optim.lr"], rel=1e-5)
    assert mine[1]["lr"] == pytest.approx(new_config["optim.lr"], rel=1e-5)
    assert {row["status"] for row in results(tune_dir).values()} == {"TERMINATED"}


# ----------------------------------------------------------------------------- other tasks


def test_an_instance_segmentation_sweep_monitors_mask_map(ray_cluster, tmp_path):
    """A real trial of a task with its own loss terms and monitor (Mask R-CNN: the mask loss
    weight and lr sampled) on generated shapes: the sweep ranks by the task's metric (ranking
    itself is the ASHA sweep's subject). Detection sweeps take the same path (their shipped
    space is checked against their config in tests/unit/tuner/test_space.py)."""
    from trainer.tasks.instance_segmentation.shapes import shapes_instances

    shapes_instances(tmp_path / "data", n_train=32, n_val=8, size=48, seed=2)
    params = {"optim.lr": {"loguniform": [1e-3, 3e-3]}, "loss.weights.loss_mask": {"uniform": [0.5, 2]}}
    space = write_space(tmp_path / "space.yaml", {"num_samples": 1, "seed": 0, "scheduler": {"name": "fifo"},
                                                  "params": params})  # fmt: skip
    data = [f"data.train={tmp_path}/data/train", f"data.val={tmp_path}/data/val"]
    result = vft(
        "tune", ROOT / "configs/shapes_instances.yaml", "--space", space, *data,
        f"run.storage={tmp_path}/runs", "train.epochs=1", "data.img_size=48", "data.num_workers=0",
        "scaling.num_workers=1", "track.backend=none", "--name", "inst", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tune_dir = tmp_path / "runs" / "inst" / "tune"
    rows = results(tune_dir)
    assert len(rows) == 1 and all(0.0 <= float(r["val/mask_map50"]) <= 1.0 for r in rows.values())
    best = yaml.safe_load((tune_dir / "best_config.yaml").read_text())
    assert best["task"] == "instance_segmentation" and 0.5 <= best["loss"]["weights"]["loss_mask"] <= 2
    meta = yaml.safe_load((tune_dir / "best" / "best" / "meta.json").read_text())
    assert meta["task"] == "instance_segmentation" and meta["monitor"]["metric"] == "val/mask_map50"
