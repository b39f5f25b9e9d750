"""Ray Tune components chosen by registered name: trial schedulers and search algorithms.

A space file names them (`scheduler: asha`, `search: optuna`), never an import path. Every
scheduler measures time in epochs: the `epoch` each trial reports.
"""

from __future__ import annotations

import functools
from typing import Any

from tuner.registry import SCHEDULERS, SEARCHERS
from tuner.space import Distribution, Space, clip_to_bounds

TIME_ATTR = "epoch"


def domain(dist: Distribution, grid: bool = False) -> Any:
    """A distribution as Ray Tune's search-space object; `grid` turns a choice into a grid."""
    from ray import tune

    args = dist.args
    kind = "grid" if grid and dist.kind == "choice" else dist.kind
    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    return {
        "loguniform": tune.loguniform,
        "uniform": tune.uniform,
        "quniform": tune.quniform,
        "randint": tune.randint,
    }[kind](*args)


def param_space(space: Space) -> dict[str, Any]:
    return {key: domain(dist, grid=space.search == "grid") for key, dist in space.params.items()}


# ----------------------------------------------------------------------------- schedulers


@SCHEDULERS.register("asha")
def asha(space: Space, max_t: int):
    from ray.tune.schedulers import ASHAScheduler

    s = space.scheduler
    return ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=max_t,
        grace_period=min(s.grace_period, max_t),
        reduction_factor=s.reduction_factor,
    )


@SCHEDULERS.register("median")
def median(space: Space, max_t: int):
    from ray.tune.schedulers import MedianStoppingRule

    s = space.scheduler
    return MedianStoppingRule(
        time_attr=TIME_ATTR, grace_period=s.grace_period, min_samples_required=s.min_samples_required
    )


@SCHEDULERS.register("pbt")
def pbt(space: Space, max_t: int):
    """Population based training: every `perturbation_interval` epochs the bottom quantile
    copies a top trial's checkpoint (exploit) and perturbs or resamples its hyperparameters
    (explore). Grid values stay fixed per trial."""
    from ray.tune.schedulers import PopulationBasedTraining

    s = space.scheduler
    mutations = {
        key: list(dist.args) if dist.kind == "choice" else domain(dist)
        for key, dist in space.params.items()
        if dist.kind != "grid"
    }
    bounds = {key: dist.bounds() for key, dist in space.params.items() if dist.bounds() is not None}
    return PopulationBasedTraining(
        time_attr=TIME_ATTR,
        perturbation_interval=s.perturbation_interval,
        hyperparam_mutations=mutations,
        quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
        synch=s.synch,
        custom_explore_fn=functools.partial(clip_to_bounds, bounds=bounds),
    )


@SCHEDULERS.register("fifo")
def fifo(space: Space, max_t: int):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def create_scheduler(space: Space, max_t: int):
    return SCHEDULERS.get(space.scheduler.name)(space, max_t)


# ----------------------------------------------------------------------------- search


def _variants(space: Space, concurrent: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=concurrent, random_state=space.seed)


SEARCHERS.register("random")(_variants)
SEARCHERS.register("grid")(_variants)  # choices become grids (see param_space)


@SEARCHERS.register("optuna")
def optuna(space: Space, concurrent: int):
    import optuna as ot
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(sampler=ot.samplers.TPESampler(seed=space.seed)), concurrent)


def create_search(space: Space, concurrent: int):
    """The search algorithm, limited to `concurrent` trials at once."""
    return SEARCHERS.get(space.search)(space, concurrent)


def uses_checkpoints(space: Space) -> bool:
    """Whether trials hand their checkpoints to Tune (PBT copies them between trials)."""
    return space.scheduler.name == "pbt"
