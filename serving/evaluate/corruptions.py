"""The corruption suite on one domain: the task's metric per corruption and severity, per
corruption and per severity, the mean corruption error (1 - mean corrupted metric,
unnormalised: there is no reference model to divide by) and the relative drop from clean."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from serving.evaluate.base import EvalOptions
from serving.evaluate.domains import Alter, score
from trainer.components.deploy import Batches, TaskEval


def report_name(spec: TaskEval, name: str) -> str:
    """A corruption suite field's name in report.json (the task may keep its own)."""
    return spec.report_names.get(name, name)


def corrupted(spec: TaskEval, name: str, severity: int, seed: int) -> Alter:
    return lambda inputs, index: spec.corrupt(inputs, name, severity, seed, index)


def corruption_suite(
    spec: TaskEval, backend: Callable, batches: Batches, opts: EvalOptions, clean: float
) -> dict:
    table = {
        name: {
            str(s): score(spec, backend, batches, corrupted(spec, name, s, opts.seed))[0][spec.metric]
            for s in opts.severities
        }
        for name in opts.corruptions
    }
    per_corruption = {name: float(np.mean(list(row.values()))) for name, row in table.items()}
    mean = float(np.mean(list(per_corruption.values())))
    fields = {
        "metric": spec.metric,
        "clean": clean,
        "table": table,
        "per_corruption": per_corruption,
        "mean_corruption_error": 1.0 - mean,
        "relative_drop": (clean - mean) / clean if clean else 0.0,
        "by_severity": {str(s): float(np.mean([table[n][str(s)] for n in table])) for s in opts.severities},
    }
    return {report_name(spec, k): v for k, v in fields.items()}
