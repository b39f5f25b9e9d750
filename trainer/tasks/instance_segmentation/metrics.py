"""Instance segmentation metrics: COCO mask mAP and box mAP (IoU 0.50:0.95), their AP50 and
AP75, mask mAR@100 and per-class mask AP, through torchmetrics' MeanAveragePrecision
(pycocotools; crowd regions ignored as COCO does), synced across Ray workers on compute."""

from __future__ import annotations

import torch
from torchmetrics.detection import MeanAveragePrecision

MASK_THRESHOLD = 0.5  # a pixel belongs to the object where the mask probability reaches this

METRICS = {  # vft's name -> torchmetrics' key
    "mask_map": "segm_map",
    "mask_map50": "segm_map_50",
    "mask_map75": "segm_map_75",
    "mask_mar100": "segm_mar_100",
    "box_map": "bbox_map",
    "box_map50": "bbox_map_50",
}


def instance_metric_names(multilabel: bool = False) -> list[str]:
    return ["train/loss", *(f"val/{name}" for name in METRICS)]


def binary_masks(masks: torch.Tensor) -> torch.Tensor:
    """Mask R-CNN's (N, 1, H, W) (or (N, H, W)) probabilities as (N, H, W) bool masks."""
    return (
        (masks.reshape(-1, *masks.shape[-2:]) >= MASK_THRESHOLD)
        if masks.is_floating_point()
        else masks.bool()
    )


class InstanceMetrics:
    """Labels are the model's (0 = background, class i = i + 1)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.map = MeanAveragePrecision(iou_type=("bbox", "segm"), class_metrics=True).to(device)

    def update(self, outputs: list[dict], targets: list[dict], loss: torch.Tensor | None = None) -> None:
        preds = [
            {
                "boxes": o["boxes"].float(),
                "scores": o["scores"].float(),
                "labels": o["labels"],
                "masks": binary_masks(o["masks"]),
            }
            for o in outputs
        ]
        truth = [
            {"boxes": t["boxes"], "labels": t["labels"], "masks": t["masks"].bool(), "iscrowd": t["iscrowd"]}
            for t in targets
        ]
        self.map.update(preds, truth)

    def compute(self, prefix: str = "val/") -> tuple[dict[str, float], dict[str, list]]:
        r = self.map.compute()
        scalars = {f"{prefix}{name}": max(float(r[key]), 0.0) for name, key in METRICS.items()}  # -1: none
        per_class: list[float | None] = [None] * self.num_classes
        for label, ap in zip(
            r["classes"].reshape(-1).tolist(), r["segm_map_per_class"].reshape(-1).tolist(), strict=True
        ):
            if 1 <= label <= self.num_classes and ap >= 0:  # -1: class absent from truth and predictions
                per_class[label - 1] = float(ap)
        return scalars, {"per_class_ap": per_class}

    def reset(self) -> None:
        self.map.reset()
