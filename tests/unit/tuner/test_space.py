"""`vft tune`'s space file without Ray: bad spaces exit 2 before Ray starts, a resume keeps the
space, and the shipped and chart spaces fit their configs."""

from __future__ import annotations

import pytest
import yaml
from tune_tools import ROOT, digits_config, tune_args, write_space
from typer.testing import CliRunner

from trainer.cli import app
from trainer.errors import ConfigError

runner = CliRunner()


def vft(*args):
    return runner.invoke(app, [str(a) for a in args])


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


# ----------------------------------------------------------------------------- shipped spaces


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


def test_lora_rank_and_alpha_are_tunable(digits_dir):
    """A LoRA sweep: rank and alpha are checked against the schema like any key, and only for a
    config whose strategy is lora."""
    from tuner.space import check_against_config, parse_space

    params = {"finetune.lora.rank": {"choice": [4, 8, 16]}, "finetune.lora.alpha": {"uniform": [4.0, 32.0]}}
    lora = digits_config(digits_dir, "finetune.strategy=lora")
    assert set(check_against_config(parse_space({"params": params}), lora).params) == set(params)
    with pytest.raises(ConfigError, match="params.finetune.lora.rank: value 0"):
        check_against_config(parse_space({"params": {"finetune.lora.rank": {"choice": [0, 8]}}}), lora)
    with pytest.raises(ConfigError, match="only used by strategy 'lora'"):
        check_against_config(parse_space({"params": params}), digits_config(digits_dir))
