"""Detection metrics: COCO mAP through torchmetrics' MeanAveragePrecision (pycocotools) and the
mean IoU of one-to-one matched boxes (synced across Ray workers on compute)."""

from __future__ import annotations

import torch
import torchmetrics as tm
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

MATCH_IOU = 0.5  # a prediction matches a same-class truth box at this IoU (COCO's AP50 rule)
MATCH_SCORE = 0.5  # predictions below this score are not counted as detections for box_iou


def detection_metric_names(multilabel: bool = False) -> list[str]:
    return ["train/loss", "val/map", "val/map50", "val/map75", "val/mar100", "val/box_iou"]


def match_boxes(pred: dict, target: dict, iou_threshold: float = MATCH_IOU, min_score: float = MATCH_SCORE):
    """IoUs of the matched pairs: predictions (score >= `min_score`, highest score first) each
    take the unmatched truth box of the same label with the highest IoU, if >= `iou_threshold`."""
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
