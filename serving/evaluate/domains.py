"""A domain (a `--data` dataset) as the task reads it, and the task's metrics of a backend on it,
its inputs optionally altered (corrupted) batch by batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving.evaluate.base import EvalError, EvalOptions
from trainer.components.deploy import Batches, TaskEval
from trainer.errors import DataError

Alter = Callable[[Any, int], Any]  # (backend inputs, batch index) -> altered inputs


def load_domain(spec: TaskEval, name: str, path: Path, opts: EvalOptions) -> Batches:
    """At most `max_images` of the dataset at `path` (a seeded random choice), in batches."""
    if not path.exists():
        raise EvalError(f"--data {name}: {path} does not exist")
    try:
        samples = spec.read_samples(path)
        if not len(samples):
            raise EvalError(f"--data {name}: {path} holds no images")
        order = np.random.default_rng(opts.seed).permutation(len(samples))[: opts.max_images]
        return spec.batches(samples.subset(sorted(order)), opts.batch_size)
    except DataError as exc:
        raise EvalError(f"--data {name}: {exc}") from exc


def image_count(batches: Batches) -> int:
    return sum(len(inputs) for inputs, _ in batches)


def score(
    spec: TaskEval, backend: Callable, batches: Batches, alter: Alter | None = None
) -> tuple[dict, dict]:
    """The task's metrics (scalars, tables) of `backend` on `batches`."""
    metrics = spec.metrics()
    for i, (inputs, targets) in enumerate(batches):
        metrics.update(backend(alter(inputs, i) if alter else inputs), targets)
    return metrics.compute("")
