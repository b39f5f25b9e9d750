"""Learning-rate schedules: warmup, shapes, plateau, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainer.components.schedules import ScheduleSpec, create_schedule
from trainer.registry import list_schedulers

TOTAL, PER_EPOCH, WARMUP, START = 100, 10, 10, 0.01
WARMUP_SCHEDULES = ["cosine", "step", "multistep", "constant", "plateau"]


def make_optimizer() -> torch.optim.Optimizer:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}], lr=1.0)


def make_spec(**kw) -> ScheduleSpec:
    base = {
        "total_steps": TOTAL,
        "steps_per_epoch": PER_EPOCH,
        "warmup_steps": WARMUP,
        "warmup_start_factor": START,
        "min_lr": 0.01,
        "gamma": 0.5,
        "step_epochs": 3,
        "milestones": (4, 7),
        "plateau_patience": 2,
    }
    return ScheduleSpec(**{**base, **kw})


def constant_metric(epoch: int) -> float:
    return 0.5


def run(name: str, spec: ScheduleSpec | None = None, metric=constant_metric, steps: int = TOTAL):
    """lrs[k] = (group 0 lr, group 1 lr) after k optimizer steps; step_epoch at each epoch end."""
    opt = make_optimizer()
    schedule = create_schedule(name, opt, spec or make_spec())
    lrs = [tuple(g["lr"] for g in opt.param_groups)]
    for k in range(1, steps + 1):
        opt.step()
        schedule.step_update()
        if k % PER_EPOCH == 0:
            schedule.step_epoch(metric(k // PER_EPOCH))
        lrs.append(tuple(g["lr"] for g in opt.param_groups))
    return lrs


def top(lrs) -> list[float]:
    return [lr[0] for lr in lrs]


def test_every_documented_schedule_is_registered():
    assert set(list_schedulers()) == {
        "cosine",
        "step",
        "multistep",
        "plateau",
        "onecycle",
        "cyclic",
        "constant",
    }


@pytest.mark.parametrize("name", sorted({"cosine", "step", "multistep", "plateau", "onecycle", "cyclic"}))
def test_every_schedule_runs_and_keeps_the_group_ratio(name):
    assert name in list_schedulers()
    lrs = run(name)
    assert len(lrs) == TOTAL + 1
    for k, (lr0, lr1) in enumerate(lrs):
        assert lr0 > 0, (name, k)
        assert lr1 == pytest.approx(lr0 * 0.1, rel=1e-9), (name, k)
    assert len({round(lr0, 9) for lr0, _ in lrs}) > 2  # it does change the lr


@pytest.mark.parametrize("name", WARMUP_SCHEDULES)
def test_warmup_rises_linearly_from_the_start_factor(name):
    lrs = run(name)
    for k in range(WARMUP + 1):
        expected = START + (1 - START) * k / WARMUP
        assert lrs[k][0] == pytest.approx(expected), (name, k)
        assert lrs[k][1] == pytest.approx(0.1 * expected), (name, k)


def test_no_warmup_starts_at_the_full_lr():
    lrs = run("cosine", make_spec(warmup_steps=0))
    assert lrs[0] == pytest.approx((1.0, 0.1))
    assert lrs[1][0] < 1.0


def test_cosine_decays_to_min_lr():
    lrs = top(run("cosine"))
    after = lrs[WARMUP:]
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:], strict=False))
    assert lrs[TOTAL] == pytest.approx(0.01)
    assert lrs[WARMUP + (TOTAL - WARMUP) // 2] == pytest.approx(0.01 + 0.99 * 0.5)
    assert run("cosine")[TOTAL][1] == pytest.approx(0.001)  # the group's ratio is kept
    assert top(run("cosine", make_spec(min_lr=0.0)))[TOTAL] == pytest.approx(0.0, abs=1e-12)


def test_step_decays_every_step_epochs():
    lrs = top(run("step"))  # gamma 0.5 every 3 epochs
    for k, expected in [(11, 1.0), (29, 1.0), (30, 0.5), (59, 0.5), (60, 0.25), (89, 0.25), (90, 0.125)]:
        assert lrs[k] == pytest.approx(expected), k


def test_multistep_decays_at_milestones():
    lrs = top(run("multistep"))  # milestones at epochs 4 and 7
    for k, expected in [(15, 1.0), (39, 1.0), (40, 0.5), (69, 0.5), (70, 0.25), (100, 0.25)]:
        assert lrs[k] == pytest.approx(expected), k


def test_constant_stays_after_warmup():
    assert set(top(run("constant"))[WARMUP:]) == {1.0}


def test_plateau_reduces_after_patience_epochs_without_improvement():
    # improving until epoch 5, then flat: epochs 6, 7 are within patience, epoch 8 reduces
    def metric(epoch: int) -> float:
        return min(epoch, 5) / 10

    lrs = top(run("plateau", metric=metric))
    assert lrs[79] == pytest.approx(1.0)
    assert lrs[80] == pytest.approx(0.5)
    assert lrs[100] == pytest.approx(0.5)  # epochs 9, 10: patience again


def test_plateau_keeps_the_lr_while_improving_and_honours_mode():
    assert set(top(run("plateau", metric=lambda e: float(e)))[WARMUP:]) == {1.0}
    falling = make_spec(mode="min")
    assert set(top(run("plateau", falling, metric=lambda e: 1.0 / e))[WARMUP:]) == {1.0}
    # a loss that rises is no improvement in min mode
    assert top(run("plateau", falling, metric=lambda e: float(e)))[TOTAL] < 1.0


def test_plateau_ignores_metrics_during_warmup():
    spec = make_spec(warmup_steps=30, plateau_patience=0)
    lrs = top(run("plateau", spec, metric=constant_metric))
    assert lrs[30] == pytest.approx(1.0)  # epochs 1-3 are warmup: no reduction yet
    assert lrs[50] == pytest.approx(0.5)  # epoch 4 sets the best, epoch 5 reduces


def test_onecycle_peaks_near_pct_start():
    lrs = top(run("onecycle", make_spec(pct_start=0.3)))
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert abs(peak - 30) <= 2
    assert lrs[peak] == pytest.approx(1.0, rel=1e-3)
    assert lrs[0] < 0.1 and lrs[TOTAL] < 1e-3
    assert top(run("onecycle", make_spec(pct_start=0.6))).index(max(lrs)) != peak


def test_cyclic_oscillates():
    lrs = top(run("cyclic", make_spec(cycle_epochs=2.0, cyclic_base_factor=0.1)))  # 20-step cycles
    for k in range(0, TOTAL + 1, 20):
        assert lrs[k] == pytest.approx(0.1), k
    for k in range(10, TOTAL, 20):
        assert lrs[k] == pytest.approx(1.0), k
    assert lrs[5] == pytest.approx(0.55)
    assert lrs[15] == pytest.approx(0.55)


@pytest.mark.parametrize("name", ["cosine", "step", "multistep", "constant", "plateau", "onecycle", "cyclic"])
def test_state_dict_round_trip_continues_identically(name):
    def metric(epoch: int) -> float:
        return min(epoch, 3) / 10

    spec = make_spec(plateau_patience=1)
    opt = make_optimizer()
    schedule = create_schedule(name, opt, spec)

    def advance(optimizer, sched, steps) -> list[list[float]]:
        lrs = []
        for k in steps:
            optimizer.step()
            sched.step_update()
            if k % PER_EPOCH == 0:
                sched.step_epoch(metric(k // PER_EPOCH))
            lrs.append([g["lr"] for g in optimizer.param_groups])
        return lrs

    lrs = advance(opt, schedule, range(1, 46))
    saved = copy.deepcopy({"opt": opt.state_dict(), "schedule": schedule.state_dict()})
    lrs += advance(opt, schedule, range(46, TOTAL + 1))

    opt2 = make_optimizer()
    schedule2 = create_schedule(name, opt2, spec)
    opt2.load_state_dict(saved["opt"])
    schedule2.load_state_dict(saved["schedule"])
    assert [g["lr"] for g in opt2.param_groups] == lrs[44]
    resumed = advance(opt2, schedule2, range(46, TOTAL + 1))
    assert resumed == lrs[45:]
    assert schedule2.state_dict()["steps"] == TOTAL


def test_unknown_schedule_name():
    with pytest.raises(KeyError, match="cosine"):
        create_schedule("cosin", make_optimizer(), make_spec())
