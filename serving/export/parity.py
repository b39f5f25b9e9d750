"""The parity check's data and metric: a split's samples through the run's own validation
pipeline (the task's val dataset and collate, as in training) as labelled backend inputs, a
backend run over them, and the run's monitored metric of its outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainer.components.deploy import Batches, OutputMetrics, loader_batches
from trainer.config import VftConfig
from trainer.tasks.base import DataSplit, Task


def parity_batches(task: Task, cfg: VftConfig, meta: dict, samples: Any, batch_size: int) -> Batches:
    split = DataSplit(samples, samples, meta["classes"])
    dataset = task.build_datasets(cfg, split, task.preprocessing_from_meta(meta))[1]
    return loader_batches(dataset, task.collate(cfg, meta["num_classes"], train=False), batch_size)


def first(samples: Any, count: int) -> Any:
    return samples.subset(range(min(count, len(samples))))


def run_batches(backend: Callable, batches: Batches) -> list:
    """The backend's outputs, one entry per batch."""
    return [backend(inputs) for inputs, _ in batches]


def monitored_value(task: Task, meta: dict, outputs: list, batches: Batches) -> float:
    """The run's monitored metric (meta.json's `monitor`) of `outputs` on `batches`."""
    metrics = OutputMetrics(task.create_metrics(meta), task.metric_inputs)
    for out, (_, targets) in zip(outputs, batches, strict=True):
        metrics.update(out, targets)
    return metrics.compute("val/")[0][meta["monitor"]["metric"]]
