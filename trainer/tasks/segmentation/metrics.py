"""Segmentation metrics: mIoU, per-class IoU, Dice and pixel accuracy from torchmetrics'
confusion matrix (synced across Ray workers on compute)."""

from __future__ import annotations

import torch
import torchmetrics as tm
from torchmetrics import classification as C

from trainer.tasks.segmentation.model import seg_logits


def segmentation_metric_names(multilabel: bool = False) -> list[str]:
    return ["train/loss", "val/loss", "val/miou", "val/dice", "val/pixel_acc"]


def scores_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class IoU and Dice, their means over the classes that occur (in truth or prediction),
    and pixel accuracy, from a (truth x prediction) pixel confusion matrix."""
    confusion = confusion.double()
    tp = confusion.diag()
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    occurs = (tp + fp + fn) > 0
    iou = torch.where(occurs, tp / (tp + fp + fn).clamp(min=1), torch.nan)
    dice = torch.where(occurs, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.nan)
    return {
        "iou": iou,
        "dice": dice,
        "miou": iou.nanmean(),
        "mdice": dice.nanmean(),
        "pixel_acc": tp.sum() / confusion.sum().clamp(min=1),
    }


class SegmentationMetrics:
    """mIoU, per-class IoU, Dice and pixel accuracy over all validation pixels except
    `ignore_index`, from torchmetrics' confusion matrix (synced across workers on compute).
    Classes absent from both truth and prediction are left out of the means."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"):
        self.confusion = C.MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index).to(device)
        self.loss = tm.MeanMetric().to(device)

    def update(self, logits, target: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        self.confusion.update(seg_logits(logits).argmax(1), target)
        if loss is not None:
            self.loss.update(loss.detach().float(), weight=target.shape[0])

    def compute(self, prefix: str = "val/") -> tuple[dict[str, float], dict[str, list]]:
        confusion = self.confusion.compute()
        s = scores_from_confusion(confusion)
        scalars = {f"{prefix}{k}": float(s[k]) for k in ("miou", "pixel_acc")}
        scalars[f"{prefix}dice"] = float(s["mdice"])
        if self.loss.update_called:
            scalars[f"{prefix}loss"] = float(self.loss.compute())
        tables = {
            "per_class_iou": [None if v.isnan() else float(v) for v in s["iou"]],
            "per_class_dice": [None if v.isnan() else float(v) for v in s["dice"]],
            "confusion": confusion.long().tolist(),
        }
        return scalars, tables

    def reset(self) -> None:
        self.confusion.reset()
        self.loss.reset()
