"""Tasks by registered name. Classification (single- or multi-label) is the task today; the
detection and segmentation issues add theirs behind the same registry."""

from __future__ import annotations

from trainer.registry import TASKS


@TASKS.register("classification")
def classification() -> str:
    return "classification"
