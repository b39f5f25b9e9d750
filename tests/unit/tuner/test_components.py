"""The sweep's search algorithms and schedulers as `vft tune` builds them from a space file,
driven directly (no Ray cluster): Ray Tune's searcher and scheduler objects are plain Python."""

from __future__ import annotations

import math

import pytest

from tuner.components import create_scheduler, create_search, param_space
from tuner.space import parse_space

METRIC, MODE = "val/top1", "max"


def _searcher(space):
    searcher = create_search(space, concurrent=1)
    assert searcher.set_search_properties(METRIC, MODE, param_space(space))
    return searcher


def _optuna_space(seed: int = 0):
    return parse_space(
        {
            "search": "optuna",
            "seed": seed,
            "params": {
                "optim.lr": {"loguniform": [1.0e-5, 1.0e-1]},
                "model.drop_rate": {"quniform": [0.0, 0.5, 0.1]},
                "data.batch_size": {"randint": [16, 65]},
                "optim.name": {"choice": ["adamw", "sgd"]},
            },
        }
    )


def test_optuna_suggests_inside_the_space_and_is_seeded():
    first, again = _searcher(_optuna_space(seed=3)), _searcher(_optuna_space(seed=3))
    for i in range(6):
        config = first.suggest(f"t{i}")
        assert config == again.suggest(f"t{i}")  # the space's seed makes the sweep repeatable
        assert 1.0e-5 <= config["optim.lr"] <= 1.0e-1
        assert config["model.drop_rate"] == pytest.approx(round(config["model.drop_rate"], 1))  # q=0.1
        assert 0.0 <= config["model.drop_rate"] <= 0.5
        assert isinstance(config["data.batch_size"], int) and 16 <= config["data.batch_size"] <= 64
        assert config["optim.name"] in ("adamw", "sgd")
        for searcher in (first, again):
            searcher.on_trial_complete(f"t{i}", {METRIC: 0.5, "epoch": 1})
    other = _searcher(_optuna_space(seed=4)).suggest("t0")
    assert other != _searcher(_optuna_space(seed=3)).suggest("t0")


def test_optuna_moves_toward_the_best_metric():
    """TPE, after its random start-up trials, samples near the learning rate that scored best
    (here 1e-3, on the space's metric and mode): a searcher told the wrong metric or mode, or
    never told the results, keeps sampling the whole range."""
    searcher = _searcher(_optuna_space(seed=0))

    def score(lr: float) -> float:
        return 1.0 - abs(math.log10(lr) + 3.0) / 4.0

    distances = []
    for i in range(40):
        config = searcher.suggest(f"t{i}")
        distances.append(abs(math.log10(config["optim.lr"]) + 3.0))
        searcher.on_trial_complete(f"t{i}", {METRIC: score(config["optim.lr"]), "epoch": 1})
    start, late = distances[:10], distances[-10:]
    assert sum(late) / 10 < 0.5 * sum(start) / 10


def test_optuna_limits_concurrent_trials():
    space = _optuna_space()
    searcher = create_search(space, concurrent=2)
    searcher.set_search_properties(METRIC, MODE, param_space(space))
    assert searcher.suggest("a") is not None and searcher.suggest("b") is not None
    assert searcher.suggest("c") is None  # a third waits until one finishes
    searcher.on_trial_complete("a", {METRIC: 0.1, "epoch": 1})
    assert searcher.suggest("c") is not None


def test_pbt_explore_stays_inside_the_space():
    """PBT perturbs by x0.8 / x1.2 or resamples; vft's explore step clips the result to the
    space's bounds (randint's upper bound is exclusive)."""
    space = parse_space(
        {
            "scheduler": {"name": "pbt", "resample_probability": 0.0},
            "params": {
                "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                "data.batch_size": {"randint": [16, 65]},
            },
        }
    )
    pbt = create_scheduler(space, max_t=3)

    def explore(lr, batch):
        return pbt._custom_explore_fn({"optim.lr": lr, "data.batch_size": batch})

    assert explore(1.0e-2 * 1.2, 77) == {"optim.lr": 1.0e-2, "data.batch_size": 64}
    assert explore(1.0e-4 * 0.8, 12) == {"optim.lr": 1.0e-4, "data.batch_size": 16}
    assert explore(5.0e-3, 40) == {"optim.lr": 5.0e-3, "data.batch_size": 40}
    assert set(pbt._hyperparam_mutations) == {"optim.lr", "data.batch_size"}
    assert pbt._perturbation_interval == 1 and pbt._resample_probability == 0.0


class _Trial:
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


class _Controller:
    """What the median rule asks of Tune's controller: no trial is waiting to run."""

    def get_live_trials(self):
        return []


def test_median_stops_a_trial_below_the_median_after_the_grace_period():
    """The `median` scheduler compares trials at the same epoch (Tune's time attribute is the
    epoch each trial reports), once `grace_period` epochs passed and `min_samples_required`
    other trials got there."""
    from ray.tune.schedulers import TrialScheduler

    space = parse_space(
        {"scheduler": {"name": "median", "grace_period": 2, "min_samples_required": 2},
         "params": {"optim.lr": {"choice": [0.1]}}}
    )  # fmt: skip
    median = create_scheduler(space, max_t=5)
    median.set_search_properties(METRIC, MODE)
    controller = _Controller()

    def report(trial, epoch, value):
        return median.on_trial_result(controller, trial, {"epoch": epoch, METRIC: value})

    good = [_Trial("good0"), _Trial("good1")]
    for epoch in (1, 2, 3):
        for trial in good:
            assert report(trial, epoch, 0.5 + 0.1 * epoch) == TrialScheduler.CONTINUE
    bad, fine = _Trial("bad"), _Trial("fine")
    assert report(bad, 1, 0.0) == TrialScheduler.CONTINUE  # inside the grace period
    assert report(fine, 1, 0.9) == TrialScheduler.CONTINUE
    assert report(fine, 2, 0.9) == TrialScheduler.CONTINUE  # above the others' running mean
    assert report(bad, 2, 0.1) == TrialScheduler.STOP
