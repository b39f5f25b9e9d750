"""Per-epoch classification metrics with torchmetrics, synchronised across Ray workers by
torchmetrics itself (its states are all-gathered over the process group on compute)."""

from __future__ import annotations

import torch
import torchmetrics as tm
from torchmetrics import classification as C


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


# ----------------------------------------------------------------------------- segmentation


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
        from trainer.segmodels import seg_logits

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


# ----------------------------------------------------------------------------- detection

MATCH_IOU = 0.5  # a prediction matches a same-class truth box at this IoU (COCO's AP50 rule)
MATCH_SCORE = 0.5  # predictions below this score are not counted as detections for box_iou


def detection_metric_names(multilabel: bool = False) -> list[str]:
    return ["train/loss", "val/map", "val/map50", "val/map75", "val/mar100", "val/box_iou"]


def match_boxes(pred: dict, target: dict, iou_threshold: float = MATCH_IOU, min_score: float = MATCH_SCORE):
    """IoUs of the matched pairs: predictions (score >= `min_score`, highest score first) each
    take the unmatched truth box of the same label with the highest IoU, if >= `iou_threshold`."""
    from torchvision.ops import box_iou

    keep = pred["scores"] >= min_score
    boxes, labels, scores = pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep]
    truth, truth_labels = target["boxes"], target["labels"]
    if not len(boxes) or not len(truth):
        return torch.zeros(0, device=truth.device)
    iou = box_iou(boxes.float(), truth.float())
    iou[labels[:, None] != truth_labels[None, :]] = -1
    taken = torch.zeros(len(truth), dtype=torch.bool, device=truth.device)
    matched = []
    for i in scores.argsort(descending=True).tolist():
        row = iou[i].masked_fill(taken, -1)
        best = int(row.argmax())
        if row[best] >= iou_threshold:
            taken[best] = True
            matched.append(row[best])
    return torch.stack(matched) if matched else torch.zeros(0, device=truth.device)


class MatchedBoxIoU(tm.Metric):
    """Mean IoU of matched prediction/truth pairs (see `match_boxes`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: list[dict], targets: list[dict]) -> None:
        for pred, target in zip(preds, targets, strict=True):
            ious = match_boxes(pred, target)
            self.total += ious.double().sum()
            self.count += len(ious)

    def compute(self) -> torch.Tensor:
        return self.total / self.count if self.count else torch.tensor(float("nan"))


class DetectionMetrics:
    """COCO mAP (IoU 0.50:0.95), mAP50, mAP75, mAR@100 and per-class AP from torchmetrics'
    MeanAveragePrecision (pycocotools), plus the mean IoU of matched boxes; synced across
    workers on compute. Labels are the detector's (0 = background, class i = i + 1)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        from torchmetrics.detection import MeanAveragePrecision

        self.num_classes = num_classes
        self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True).to(device)
        self.box_iou = MatchedBoxIoU().to(device)

    def update(self, outputs: list[dict], targets: list[dict], loss: torch.Tensor | None = None) -> None:
        preds = [
            {k: o[k].float() if k != "labels" else o[k] for k in ("boxes", "scores", "labels")}
            for o in outputs
        ]
        self.map.update(preds, targets)
        self.box_iou.update(preds, targets)

    def compute(self, prefix: str = "val/") -> tuple[dict[str, float], dict[str, list]]:
        r = self.map.compute()
        scalars = {
            f"{prefix}map": float(r["map"]),
            f"{prefix}map50": float(r["map_50"]),
            f"{prefix}map75": float(r["map_75"]),
            f"{prefix}mar100": float(r["mar_100"]),
            f"{prefix}box_iou": float(self.box_iou.compute()),
        }
        per_class: list[float | None] = [None] * self.num_classes
        for label, ap in zip(
            r["classes"].reshape(-1).tolist(), r["map_per_class"].reshape(-1).tolist(), strict=True
        ):
            if 1 <= label <= self.num_classes and ap >= 0:  # -1: class absent from truth and predictions
                per_class[label - 1] = float(ap)
        return {k: (0.0 if v < 0 else v) for k, v in scalars.items()}, {"per_class_ap": per_class}

    def reset(self) -> None:
        self.map.reset()
        self.box_iou.reset()
