"""Per-epoch classification metrics with torchmetrics, synchronised across Ray workers by
torchmetrics itself (its states are all-gathered over the process group on compute)."""

from __future__ import annotations

import torch
import torchmetrics as tm
from torchmetrics import classification as C

ROBUST_METRIC = "val/robust_acc"  # top-1 under light corruptions (train.robust_val)


def metric_names(multilabel: bool = False) -> list[str]:
    scores = (
        ["map", "accuracy", "precision", "recall", "f1"]
        if multilabel
        else ["top1", "top5", "precision", "recall", "f1"]
    )
    return ["train/loss", "val/loss", *[f"val/{s}" for s in scores]]


class ClassificationMetrics:
    def __init__(self, num_classes: int, multilabel: bool = False, device: torch.device | str = "cpu"):
        self.multilabel = multilabel
        if multilabel:
            n = {"num_labels": num_classes}
            scalars = {
                "map": C.MultilabelAveragePrecision(**n, average="macro"),
                "accuracy": C.MultilabelAccuracy(**n, average="macro"),
                "precision": C.MultilabelPrecision(**n, average="macro"),
                "recall": C.MultilabelRecall(**n, average="macro"),
                "f1": C.MultilabelF1Score(**n, average="macro"),
            }
            self.per_class = C.MultilabelAccuracy(**n, average=None)
            self.confusion = None
        else:
            n = {"num_classes": num_classes}
            scalars = {
                "top1": C.MulticlassAccuracy(**n, top_k=1, average="micro"),
                "top5": C.MulticlassAccuracy(**n, top_k=min(5, num_classes), average="micro"),
                "precision": C.MulticlassPrecision(**n, average="macro"),
                "recall": C.MulticlassRecall(**n, average="macro"),
                "f1": C.MulticlassF1Score(**n, average="macro"),
            }
            self.per_class = C.MulticlassAccuracy(**n, average=None)
            self.confusion = C.MulticlassConfusionMatrix(**n)
        self.scalars = tm.MetricCollection(scalars).to(device)
        self.per_class = self.per_class.to(device)
        self.confusion = self.confusion.to(device) if self.confusion is not None else None
        self.loss = tm.MeanMetric().to(device)

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        logits = logits.float()
        if self.multilabel:
            target = target.int()
        self.scalars.update(logits, target)
        self.per_class.update(logits, target)
        if self.confusion is not None:
            self.confusion.update(logits, target)
        if loss is not None:
            self.loss.update(loss.detach().float(), weight=target.shape[0])

    def compute(self, prefix: str = "val/") -> tuple[dict[str, float], dict[str, list]]:
        """Scalars ({'val/top1': ...}) and tables ({'per_class_acc': [...], 'confusion': [[...]]})."""
        scalars = {f"{prefix}{k}": float(v) for k, v in self.scalars.compute().items()}
        if self.loss.update_called:  # evaluation without a loss (export checks, vft eval) has none
            scalars[f"{prefix}loss"] = float(self.loss.compute())
        tables = {"per_class_acc": [float(v) for v in self.per_class.compute()]}
        if self.confusion is not None:
            tables["confusion"] = self.confusion.compute().int().tolist()
        return scalars, tables

    def reset(self) -> None:
        for metric in (self.scalars, self.per_class, self.confusion, self.loss):
            if metric is not None:
                metric.reset()
