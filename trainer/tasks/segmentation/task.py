"""Semantic segmentation on the task interface: mask-folder data, torchvision DeepLabV3/FCN/
LRASPP or a U-Net over a timm encoder, joint image+mask transforms, CE/Dice/CE+Dice/BCE+Dice,
mIoU/per-class IoU/Dice/pixel accuracy."""

from __future__ import annotations

import torch

from trainer.components.deploy import OnnxGraph, Thresholds
from trainer.components.hf_data import HfOptions, is_hf_dataset
from trainer.components.hf_models import rebuild_hf
from trainer.components.losses import create_loss
from trainer.components.models import BuiltModel
from trainer.components.parity import logits_failures, logits_parity
from trainer.components.preprocess import eval_transform, train_transform
from trainer.errors import DataError
from trainer.registry import filter_names
from trainer.tasks.base import DataSplit, Task, split_samples
from trainer.tasks.segmentation import export
from trainer.tasks.segmentation.config import SegmentationConfig
from trainer.tasks.segmentation.data import (
    MaskCollate,
    MaskDataset,
    MaskSamples,
    check_class_indices,
    read_classes,
    read_hf_masks,
    read_masks,
)
from trainer.tasks.segmentation.evaluate import SegmentationEval
from trainer.tasks.segmentation.metrics import SegmentationMetrics
from trainer.tasks.segmentation.model import create_segmenter, list_segmenters, seg_logits, segmenter_source
from trainer.tasks.segmentation.plots import segmentation_overlays
from trainer.tasks.segmentation.serve import SegmentationHandler
from trainer.tasks.segmentation.shapes import shapes_segmentation

AUX_WEIGHT = 0.5
SEG_LOSSES = "cross_entropy, dice, ce_dice or bce_dice"


class SegmentationLoss:
    """The configured per-pixel loss on the logits; with an auxiliary head (training only),
    plus 0.5 x the same loss on its logits, as in torchvision's references."""

    def __init__(self, criterion: torch.nn.Module):
        self.criterion = criterion

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        outputs = model(images)
        loss = self.criterion(seg_logits(outputs), targets)
        if isinstance(outputs, dict) and "aux" in outputs:
            loss = loss + AUX_WEIGHT * self.criterion(outputs["aux"], targets)
        return loss

    def on_outputs(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(seg_logits(outputs).float(), targets)


class Segmentation(Task):
    name = "segmentation"
    device_decoding = True
    config = SegmentationConfig
    draws_predictions = True

    # -- data
    def read_data(self, cfg) -> DataSplit:
        d = cfg.data
        if d.format == "hf" or (d.format == "auto" and is_hf_dataset(d.train)):
            h = d.hf
            options = HfOptions(h.config, h.split, h.image_column, h.label_column)
            train = read_hf_masks(d.train, h.split, options, d.ignore_index)
            val = (
                read_hf_masks(d.val or d.train, h.val_split, options, d.ignore_index)
                if d.val or h.val_split
                else None
            )
        else:
            train = read_masks(d.train, d.format, d.ignore_index)
            val = read_masks(d.val, d.format, d.ignore_index) if d.val else None
            if val is not None and None not in (val.classes, train.classes) and val.classes != train.classes:
                raise DataError(f"data.val: {d.val} has classes {val.classes}, data.train {train.classes}")
        if val is None:
            train, val = split_samples(train, d.val_fraction, d.split_seed)
        # a dataset's masks are the only source of its classes (no classes.txt): both splits count
        classes = read_classes(train, val) if train.rows is not None else read_classes(train)
        for samples in (train, val):
            check_class_indices(samples, classes)
        return DataSplit(train, val, classes)

    def manifest(self, samples: MaskSamples, classes: list[str]) -> list[tuple[str, list[str] | None]]:
        return [(f"{image}\t{mask}", None) for image, mask in zip(samples.images, samples.masks, strict=True)]

    def check_data(self, cfg) -> DataSplit:
        split = self.read_data(cfg)
        n, train = len(split.classes), cfg.data.train
        if n < 2:
            raise DataError(f"data.train: {train} has {n} class(es); at least 2 are needed")
        if cfg.loss.name == "bce_dice" and n != 2:
            raise DataError(f"loss.name: bce_dice is binary; {train} has {n} classes")
        return split

    def build_datasets(self, cfg, split: DataSplit, prep, encoded: bool = False):
        d = cfg.data
        common = {"max_pixels": d.max_image_pixels, "skip_bad": d.skip_bad_images, "encoded": encoded}
        common["collate"] = MaskCollate()
        train = MaskDataset(split.train, train_transform(prep, d.augment, mask_fill=d.ignore_index), **common)
        val = MaskDataset(split.val, eval_transform(prep), **common)
        return train, val

    def collate(self, cfg, num_classes: int, train: bool) -> MaskCollate:
        return MaskCollate()

    # -- model
    def build_model(self, cfg, num_classes: int) -> BuiltModel:
        m = cfg.model
        return create_segmenter(m.name, num_classes, m.weights, m.aux_loss, m.source, cfg.data.img_size)

    def model_names(self, pattern: str | None = None) -> list[tuple[str, str]]:
        names = filter_names(list_segmenters(), pattern)
        return [(name, segmenter_source(name) or "timm") for name in names]

    def build_loss(self, cfg) -> SegmentationLoss:
        loss, name = cfg.loss, "cross_entropy" if cfg.loss.name == "auto" else cfg.loss.name
        criterion = create_loss(name, False, loss.label_smoothing, ignore_index=cfg.data.ignore_index)
        return SegmentationLoss(criterion)

    def write_example_data(self, out, n_train: int, n_val: int, size: int, seed: int) -> dict[str, int]:
        return shapes_segmentation(out, n_train, n_val, size, seed)

    def create_metrics(self, meta: dict, device="cpu") -> SegmentationMetrics:
        return SegmentationMetrics(meta["num_classes"], meta["segmentation"]["ignore_index"], device)

    def eval_outputs(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        return seg_logits(model(images))

    def postprocess(self, outputs, meta: dict) -> torch.Tensor:
        """Per-pixel class indices (N, H, W) at the logits' size."""
        return seg_logits(outputs).float().argmax(1)

    def rebuild_model(self, meta: dict) -> torch.nn.Module:
        m = meta["model"]
        if m["source"] == "hf":
            return rebuild_hf(m, "segmentation", meta["classes"])
        aux_loss = meta["segmentation"]["aux_loss"]
        return create_segmenter(
            m["name"], meta["num_classes"], "none", aux_loss, m["source"], m.get("img_size")
        ).module

    @torch.inference_mode()
    def plot_predictions(self, model, meta: dict, dataset, path, n: int = 6) -> bool:
        mean = torch.tensor(meta["preprocessing"]["mean"]).view(3, 1, 1)
        std = torch.tensor(meta["preprocessing"]["std"]).view(3, 1, 1)
        samples = [s for s in (dataset[i] for i in range(min(n, len(dataset)))) if s is not None]
        images = [x for x, _ in samples]
        preds = [self.postprocess(model(x[None]), meta)[0] for x in images]
        truth = [y.as_subclass(torch.Tensor) for _, y in samples]
        segmentation_overlays([x * std + mean for x in images], preds, truth, meta["classes"], path)
        return True

    def meta_fields(self, cfg) -> dict:
        return {
            "model": {"img_size": cfg.data.img_size},
            "segmentation": {
                "ignore_index": cfg.data.ignore_index,
                "mask_interpolation": "nearest",
                "mask_format": "PNG of class indices, one channel",
                "output": "logits (N, num_classes, H, W) at the input size; argmax over classes",
                "aux_loss": cfg.model.aux_loss,
            },
        }

    # -- export, serving, evaluation (called by serving/)
    export_spec = export.SPEC

    def graph_outputs(self, model, inputs: torch.Tensor) -> torch.Tensor:
        return export.graph_outputs(model, inputs)

    def metric_inputs(self, outputs) -> torch.Tensor:
        return export.metric_inputs(outputs)

    def onnx_graph(self, model, meta: dict) -> OnnxGraph:
        return export.onnx_graph(model, meta)

    def parity(self, reference: list, outputs: list) -> dict:
        return logits_parity(reference, outputs)

    def parity_failures(self, result: dict, exact: bool, thresholds: Thresholds) -> list[str]:
        return logits_failures(result, exact, thresholds)

    def serve_handler(self, meta: dict, top_k: int, score_threshold: float) -> SegmentationHandler:
        return SegmentationHandler(meta)

    def evaluation(self, meta: dict, n_bins: int) -> SegmentationEval:
        return SegmentationEval(self, meta)
