"""The sweep's pieces without Ray: a sampled point becomes a validated trial config, concurrency
follows the cluster's resources, a PBT resume keeps the configured learning rate, and a sweep
where no trial finished exits 1 (the sweep itself stubbed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tune_tools import digits_config, tune_args, write_space
from typer.testing import CliRunner

from trainer.cli import app
from trainer.errors import ConfigError

runner = CliRunner()


def vft(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_no_finished_trial_exits_1(digits_dir, tmp_path, monkeypatch):
    """Every trial failed: the outputs are written and `vft tune` exits 1."""
    from tuner.report import SweepSummary, TrialRow
    from tuner.sweep import SweepRun

    failed = TrialRow(
        "abc_00000", "ERROR", {"optim.lr": 1e6}, str(tmp_path / "t"), error="NonFiniteLossError"
    )
    # patched where `vft tune` looks them up (tuner.cli imports both by name)
    monkeypatch.setattr(
        "tuner.cli.run_sweep", lambda cfg, space, address, datasets: SweepRun(str(tmp_path), "", 1.0, 1)
    )
    summary = SweepSummary("nan", "val/top1", "max", str(tmp_path), [failed], None, 1.0, 1)
    monkeypatch.setattr("tuner.cli.collect", lambda cfg, space, run: summary)
    space = write_space(tmp_path / "space.yaml", {"params": {"optim.lr": {"choice": [1e6]}}})
    result = vft(*tune_args(digits_dir, tmp_path, space, "nan"))
    assert result.exit_code == 1, result.output
    assert "no trial finished" in result.output
    assert "abc_00000,ERROR,0" in (tmp_path / "results.csv").read_text()


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
    from trainer.engine.state import keep_configured_hparams

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
