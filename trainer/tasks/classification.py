"""Classification (single- or multi-label) on the task interface: ImageFolder/CSV data, timm or
torchvision classifiers, MixUp/CutMix, cross-entropy/BCE/focal, torchmetrics scores."""

from __future__ import annotations

import torch

from trainer.data import Collate, ImageDataset, build_data, check_data
from trainer.losses import SEGMENTATION_ONLY, OutputLoss, create_loss
from trainer.metrics import ClassificationMetrics, metric_names
from trainer.models import BuiltModel, create_model, resolve_source
from trainer.preprocess import batch_mix, eval_transform, train_transform
from trainer.tasks import DETECTION_ONLY, DataSplit, Task, register_task, reject_unsupported


class Classification(Task):
    name = "classification"

    def metric_names(self, multilabel: bool = False) -> list[str]:
        # val/robust_acc: measured by the loop when train.robust_val is on (single-label only)
        return metric_names(multilabel) + ([] if multilabel else ["val/robust_acc"])

    def default_monitor(self, multilabel: bool = False) -> str:
        return "val/map" if multilabel else "val/top1"

    def validate_config(self, cfg) -> None:
        reject_unsupported(cfg, self.name, DETECTION_ONLY)
        if cfg.data.format == "maskfolder":
            raise ValueError("data.format: 'maskfolder' needs task segmentation")
        if cfg.data.format in ("coco", "yolo"):
            raise ValueError(f"data.format: '{cfg.data.format}' needs task detection")
        if cfg.loss.name in SEGMENTATION_ONLY:
            raise ValueError(f"loss.name: '{cfg.loss.name}' is a segmentation loss")
        if resolve_source(cfg.model.name, cfg.model.source) is None:
            raise ValueError(f"model.name: '{cfg.model.name}' is not a classification model")

    def read_data(self, cfg) -> DataSplit:
        return DataSplit(*build_data(cfg))

    def check_data(self, cfg) -> list[str]:
        return check_data(cfg)

    def build_datasets(self, cfg, split: DataSplit, prep):
        d = cfg.data
        common = {"multilabel": d.multilabel, "max_pixels": d.max_image_pixels, "skip_bad": d.skip_bad_images}
        train = ImageDataset(split.train, split.classes, train_transform(prep, d.augment), **common)
        val = ImageDataset(split.val, split.classes, eval_transform(prep), **common)
        return train, val

    def collate(self, cfg, num_classes: int, train: bool) -> Collate:
        mix = batch_mix(cfg.data.augment, num_classes) if train and not cfg.data.multilabel else None
        return Collate(mix)

    def build_model(self, cfg, num_classes: int) -> BuiltModel:
        m = cfg.model
        return create_model(m.name, num_classes, m.source, m.weights, m.drop_rate, m.drop_path_rate)

    def build_loss(self, cfg) -> OutputLoss:
        loss = cfg.loss
        return OutputLoss(create_loss(loss.name, cfg.data.multilabel, loss.label_smoothing, loss.focal_gamma))

    def create_metrics(self, num_classes: int, multilabel: bool = False, device="cpu"):
        return ClassificationMetrics(num_classes, multilabel, device)

    def rebuild_model(self, meta: dict) -> torch.nn.Module:
        m = meta["model"]
        return create_model(m["name"], meta["num_classes"], m["source"], "none").module

    def postprocess(self, outputs: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
        """Class probabilities: softmax, or per-label sigmoid for multilabel logits."""
        return outputs.float().sigmoid() if multilabel else outputs.float().softmax(-1)


register_task(Classification())
