"""Tasks by registered name. A task names its metrics (what `train.monitor` may choose), its
default monitor, and builds its metric collection. Classification (single- or multi-label)
is the task today; detection and segmentation register theirs here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trainer.metrics import ClassificationMetrics, metric_names
from trainer.registry import TASKS


@dataclass(frozen=True)
class Task:
    name: str
    metric_names: Callable[[bool], list[str]]
    default_monitor: Callable[[bool], str]
    create_metrics: Callable[..., object]


TASKS.register("classification")(
    Task(
        name="classification",
        # val/robust_acc: measured by the loop when train.robust_val is on (single-label only)
        metric_names=lambda multilabel: metric_names(multilabel) + ([] if multilabel else ["val/robust_acc"]),
        default_monitor=lambda multilabel: "val/map" if multilabel else "val/top1",
        create_metrics=ClassificationMetrics,
    )
)


def get_task(name: str) -> Task:
    return TASKS.get(name)
