"""`vft tune`: the space file, and real sweeps on a local Ray cluster (tiny digits runs on CPU:
16 px images, ResNet-10t, one Train worker per trial)."""

from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.runlog import read_metrics_csv
from trainer.config import load_config
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
TINY = [
    "data.img_size=16",
    "model.name=resnet10t",
    "data.batch_size=128",
    "data.num_workers=0",
    "scaling.num_workers=1",
]


def vft(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def tune_args(digits_dir: Path, storage: Path, space: Path, name: str, *extra: str) -> list:
    return [
        "tune",
        ROOT / "configs/digits.yaml",
        "--space",
        space,
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        f"run.storage={storage}",
        *TINY,
        "--name",
        name,
        *extra,
    ]


def digits_config(digits_dir: Path):
    data = [f"data.train={digits_dir}/train", f"data.val={digits_dir}/val"]
    return load_config(ROOT / "configs/digits.yaml", data)


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
    # the trial with the largest learning rate learns fastest and wins
    best_id = max(rows, key=lambda t: float(rows[t]["val/top1"]))
    assert float(rows[best_id]["optim.lr"]) == max(float(row["optim.lr"]) for row in rows.values())
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
    assert best_config["model"]["name"] == "resnet10t"
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


def test_best_config_trains(asha_sweep, tmp_path):
    config = asha_sweep / "best_config.yaml"
    result = vft("train", config, "train.epochs=1", f"run.storage={tmp_path}", "--quiet")
    assert result.exit_code == 0, result.output
    history = read_metrics_csv(str(tmp_path / "asha-best" / "metrics.csv"))
    assert [row["epoch"] for row in history] == [1]


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
    args = tune_args(digits_dir, tmp_path / "runs", space, "crash", "train.epochs=3")
    tune_dir = tmp_path / "runs" / "crash" / "tune"
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("first", vft(*args)))
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((tune_dir / "trials").glob("*"))) < 3:
        time.sleep(0.2)
    nan, done, killed = sorted((tune_dir / "trials").glob("*"))
    _wait_for_rows(done / "metrics.csv", 3, thread)
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
    assert rows[done.name]["status"] == "TERMINATED" and rows[done.name]["epochs"] == "3"
    assert rows[nan.name]["status"] == "ERROR" and "NonFiniteLossError" in rows[nan.name]["error"]
    assert rows[killed.name]["status"] == "ERROR" and 1 <= int(rows[killed.name]["epochs"]) < 3
    assert (tune_dir / "best_config.yaml").is_file()
    finished_files = [done / "metrics.csv", done / "config.yaml"]
    stamps = [p.stat().st_mtime_ns for p in finished_files]
    tune_result = (tune_dir / "experiment" / done.name / "result.json").read_text()
    killed_before = read_metrics_csv(str(killed / "metrics.csv"))
    nan_config = (nan / "config.yaml").stat().st_mtime_ns

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
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[: len(killed_before)] == killed_before  # resumed, not trained again


def test_no_finished_trial_exits_1(digits_dir, tmp_path, monkeypatch):
    """Every trial failed: the outputs are written and `vft tune` exits 1."""
    from tuner.report import SweepSummary, TrialRow
    from tuner.sweep import SweepRun

    failed = TrialRow(
        "abc_00000", "ERROR", {"optim.lr": 1e6}, str(tmp_path / "t"), error="NonFiniteLossError"
    )
    monkeypatch.setattr(
        "tuner.sweep.run_sweep", lambda cfg, space, address: SweepRun(str(tmp_path), "", 1.0, 1)
    )
    summary = SweepSummary("nan", "val/top1", "max", str(tmp_path), [failed], None, 1.0, 1)
    monkeypatch.setattr("tuner.report.collect", lambda cfg, space, run: summary)
    space = write_space(tmp_path / "space.yaml", {"params": {"optim.lr": {"choice": [1e6]}}})
    result = vft(*tune_args(digits_dir, tmp_path, space, "nan"))
    assert result.exit_code == 1, result.output
    assert "no trial finished" in result.output
    assert "abc_00000,ERROR,0" in (tmp_path / "results.csv").read_text()


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
    result = vft(*tune_args(digits_dir, tmp_path / "runs", space, "pbt", "train.epochs=2"))
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
    assert mine[1] != theirs[1]  # then it trained on with its own (perturbed) learning rate
    assert {row["status"] for row in results(tune_dir).values()} == {"TERMINATED"}


# ----------------------------------------------------------------------------- bad input (no Ray)


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("Ray must not start for bad input")

    monkeypatch.setattr("tuner.sweep.init_ray", refuse)


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"params": {"optim.lrr": {"loguniform": [1e-4, 1e-2]}}}, "params.optim.lrr: unknown config key"),
        ({"params": {"optim.lr": {"normal": [0, 1]}}}, "params.optim.lr: unknown distribution 'normal'"),
        ({"params": {"optim.lr": {"loguniform": [1e-2, 1e-4]}}}, "loguniform: need low < high"),
        ({"params": {"model.drop_rate": {"uniform": [0.0, 1.0]}}}, "params.model.drop_rate: value 1.0"),
        ({"params": {"optim.name": {"choice": ["adamw", "nope"]}}}, "params.optim.name: value 'nope'"),
        ({"params": {"data.batch_size": {"uniform": [16, 64]}}}, "params.data.batch_size: an integer"),
        ({"params": {"scaling.num_workers": {"choice": [1, 2]}}}, "params.scaling.num_workers: not tunable"),
        ({"params": {"optim.lr": {"choice": [0.1]}}, "metric": "val/nope"}, "metric: unknown metric"),
        ({"params": {"optim.lr": {"choice": [0.1]}}, "scheduler": "hyperband"}, "unknown scheduler"),
        ({"params": {"optim.lr": {"uniform": [0.1, 1]}}, "search": "grid"}, "params.optim.lr: search 'grid'"),
        ({"params": {"optim.lr": {"choice": [0.1]}}, "num_sample": 3}, "num_sample: unknown key"),
    ],
)
def test_bad_space_exits_2_before_ray_starts(no_ray, digits_dir, tmp_path, space, expected):
    path = write_space(tmp_path / "space.yaml", space)
    result = vft(*tune_args(digits_dir, tmp_path, path, "bad"))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not (tmp_path / "bad").exists()


def test_missing_space_file_exits_2(no_ray, digits_dir, tmp_path):
    result = vft(*tune_args(digits_dir, tmp_path, tmp_path / "nope.yaml", "bad"))
    assert result.exit_code == 2
    assert "file not found" in result.output
    assert vft("tune", ROOT / "configs/digits.yaml").exit_code == 2  # --space is required


def test_a_resume_must_keep_the_space(digits_dir, tmp_path):
    """The space a sweep started with is saved (as a valid space file); a resume may change
    max_concurrent_trials and time_budget_s, nothing else."""
    from tuner.space import check_against_config, parse_space, to_yaml
    from tuner.sweep import check_same_space

    cfg = digits_config(digits_dir)

    def space(**extra):
        raw = {"scheduler": "fifo", "params": {"optim.lr": {"choice": [0.1, 0.2]}}, **extra}
        return check_against_config(parse_space(raw), cfg)

    (tmp_path / "space.yaml").write_text(to_yaml(space()))
    assert parse_space(yaml.safe_load((tmp_path / "space.yaml").read_text())) == space()
    check_same_space(str(tmp_path), space(max_concurrent_trials=3, time_budget_s=60))
    with pytest.raises(ConfigError, match="differs from the one this sweep started with"):
        check_same_space(str(tmp_path), space(num_samples=3))


# ----------------------------------------------------------------------------- units


def test_shipped_space_fits_the_shipped_config(digits_dir):
    from tuner.space import load_space

    cfg = digits_config(digits_dir)
    space = load_space(ROOT / "configs/digits_space.yaml", cfg)
    assert space.metric == "val/top1" and space.scheduler.name == "asha"
    assert set(space.params) == {"optim.lr", "optim.weight_decay", "data.batch_size", "model.drop_rate"}


def test_the_chart_space_shape_is_accepted(digits_dir):
    """What charts/vft writes to /config/space.yaml (values.yaml and the CI autoscaling example)."""
    from tuner.space import check_against_config, parse_space

    chart = yaml.safe_load((ROOT / "charts/vft/values.yaml").read_text())["tune"]["space"]
    ci = yaml.safe_load((ROOT / "charts/vft/ci/tune-autoscaling-values.yaml").read_text())["tune"]["space"]
    cfg = digits_config(digits_dir)
    for space in (chart, ci):
        checked = check_against_config(parse_space({**space, "max_concurrent_trials": 2}), cfg)
        assert checked.max_concurrent_trials == 2 and checked.scheduler.name == "asha"


def test_sampled_point_is_validated_in_the_trial(digits_dir):
    from tuner.sweep import TrialPlan, trial_config

    cfg = digits_config(digits_dir)
    plan = TrialPlan(cfg.model_dump(mode="json"), "/tmp/trials", "val/top1", "max", False)
    trial = trial_config(plan, {"optim.lr": 0.01, "data.batch_size": 16.0}, "abc_00001")
    assert (trial.optim.lr, trial.data.batch_size, trial.run.name) == (0.01, 16, "abc_00001")
    assert trial.run.storage == "/tmp/trials"
    with pytest.raises(ConfigError, match=r"sampled point optim.lr=-1.0 .*greater than 0"):
        trial_config(plan, {"optim.lr": -1.0}, "abc_00002")


def test_max_concurrent_trials_from_resources():
    from tuner.sweep import max_concurrent_trials

    assert max_concurrent_trials({"CPU": 3.0}, {"CPU": 16.0}) == 5
    assert max_concurrent_trials({"CPU": 2.0, "GPU": 2.0}, {"CPU": 64.0, "GPU": 8.0}) == 4
    assert max_concurrent_trials({"CPU": 2.0, "GPU": 1.0}, {"CPU": 4.0}) == 1  # autoscaler adds GPUs


def test_resume_keeps_the_configured_learning_rate():
    """PBT's explore step: a checkpoint saved at lr 0.1 resumed under lr 0.2 trains at 0.2,
    keeping the schedule's progress; weight decay comes from the config too."""
    from trainer.engine.loop import keep_configured_hparams

    def job(lr: float, wd: float):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr, weight_decay=wd)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
        step = SimpleNamespace(optimizer=optimizer, schedule=SimpleNamespace(per_step=schedule))
        return SimpleNamespace(step=step)

    saved = job(0.1, 0.01)
    resumed = job(0.2, 0.05)
    configured = [dict(g) for g in resumed.step.optimizer.param_groups]
    resumed.step.optimizer.load_state_dict(saved.step.optimizer.state_dict())
    resumed.step.schedule.per_step.load_state_dict(saved.step.schedule.per_step.state_dict())
    keep_configured_hparams(resumed, configured)
    group = resumed.step.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.1) and group["weight_decay"] == 0.05  # 0.2 x 0.5
    resumed.step.optimizer.step()
    resumed.step.schedule.per_step.step()
    assert group["lr"] == pytest.approx(0.1)  # base 0.2 x factor 0.5, not 0.1 x 0.5


def test_detection_space_fits_the_detection_config(tmp_path):
    """Sweeps cover every task: the shipped detection space (loss-term weights included) is
    checked against the detection config, and a sampled point builds a valid trial config."""
    from trainer.config import load_config
    from trainer.tasks.detection.shapes import shapes_detection
    from tuner.space import load_space
    from tuner.sweep import TrialPlan, trial_config

    shapes_detection(tmp_path, n_train=4, n_val=2, size=32)
    paths = [f"data.train={tmp_path}/train", f"data.val={tmp_path}/val"]
    cfg = load_config(ROOT / "configs/shapes_detection.yaml", paths)
    space = load_space(ROOT / "configs/shapes_detection_space.yaml", cfg)
    assert space.metric == "val/map50"
    assert set(space.params) == {"optim.lr", "loss.weights.bbox_regression", "data.augment.zoom_out"}
    plan = TrialPlan(cfg.model_dump(mode="json"), str(tmp_path / "trials"), "val/map50", "max", False)
    trial = trial_config(plan, {"loss.weights.bbox_regression": 1.5, "data.augment.zoom_out": 1.5}, "t_00001")
    assert trial.loss.weights["bbox_regression"] == 1.5 and trial.loss.weights["classification"] == 1.0
    with pytest.raises(ConfigError, match="loss.weights"):
        trial_config(plan, {"loss.weights.bogus": 1.0}, "t_00002")


def test_a_detection_sweep_runs_and_picks_its_best_by_map50(ray_cluster, tmp_path):
    """Two real detection trials (loss-term weight and lr sampled) on generated shapes."""
    from trainer.tasks.detection.shapes import shapes_detection

    shapes_detection(tmp_path / "data", n_train=48, n_val=16, size=48, seed=2)
    params = {"optim.lr": {"loguniform": [1e-3, 5e-3]}, "loss.weights.classification": {"uniform": [0.5, 2]}}
    space = write_space(tmp_path / "space.yaml", {"num_samples": 2, "seed": 0, "scheduler": {"name": "fifo"},
                                                  "params": params})  # fmt: skip
    data = [f"data.train={tmp_path}/data/train", f"data.val={tmp_path}/data/val"]
    result = vft(
        "tune", ROOT / "configs/shapes_detection.yaml", "--space", space, *data,
        f"run.storage={tmp_path}/runs", "train.epochs=1", "data.num_workers=0", "scaling.num_workers=1",
        "--name", "det", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tune_dir = tmp_path / "runs" / "det" / "tune"
    rows = results(tune_dir)
    assert len(rows) == 2 and all(0.0 <= float(r["val/map50"]) <= 1.0 for r in rows.values())
    best = yaml.safe_load((tune_dir / "best_config.yaml").read_text())
    assert best["task"] == "detection" and 0.5 <= best["loss"]["weights"]["classification"] <= 2
    meta = yaml.safe_load((tune_dir / "best" / "best" / "meta.json").read_text())  # a run-dir layout
    assert meta["task"] == "detection" and meta["monitor"]["metric"] == "val/map50"
