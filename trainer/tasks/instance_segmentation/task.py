"""Instance segmentation on the task interface: COCO instances (polygons or RLE) or YOLO
segmentation labels, torchvision's Mask R-CNN (or Mask R-CNN over a timm encoder + FPN), joint
image+mask transforms with tv_tensors (boxes taken from the transformed masks), Mask R-CNN's own
losses with configurable weights, COCO mask and box mAP through torchmetrics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2 as T

from trainer.components.deploy import IMAGES, OnnxGraph, Thresholds
from trainer.components.loader import ListCollate
from trainer.components.models import BuiltModel
from trainer.errors import DataError
from trainer.registry import filter_names
from trainer.tasks.base import DataSplit, Task, split_samples
from trainer.tasks.instance_segmentation import export
from trainer.tasks.instance_segmentation.config import InstanceSegmentationConfig
from trainer.tasks.instance_segmentation.data import (
    InstanceDataset,
    InstanceSamples,
    read_instances,
)
from trainer.tasks.instance_segmentation.evaluate import InstanceEval
from trainer.tasks.instance_segmentation.metrics import InstanceMetrics, binary_masks
from trainer.tasks.instance_segmentation.model import (
    create_instance_model,
    list_instance_models,
    model_source,
    rebuild_instance_model,
)
from trainer.tasks.instance_segmentation.plots import instance_predictions
from trainer.tasks.instance_segmentation.serve import InstanceHandler
from trainer.tasks.instance_segmentation.shapes import shapes_instances


class MaskRcnnLoss:
    """Mask R-CNN's own loss terms (train mode, with targets), weighted and summed."""

    def __init__(self, weights: dict[str, float]):
        self.weights = weights

    def __call__(
        self, model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]
    ) -> torch.Tensor:
        terms = model(images, targets)
        return sum(self.weights.get(name, 1.0) * value for name, value in terms.items())

    def on_outputs(self, outputs, targets) -> None:
        return None  # no losses in eval mode


@dataclass
class InstancePreprocessing:
    """Decoded RGB scaled to [0, 1]; the model resizes (shorter side to min_size, longer side at
    most max_size), normalises with mean/std, and maps boxes and masks back to the input."""

    min_size: int
    max_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_meta(self) -> dict:
        return {
            **asdict(self),
            "channel_order": "RGB",
            "input": "a list of (3, H, W) float tensors, any size",
            "steps": [
                "scale to [0, 1]",
                f"inside the model: normalize (x - mean) / std, resize (bilinear) by "
                f"min({self.min_size}/shorter side, {self.max_size}/longer side), batch with zero padding",
                "inside the model: boxes and masks mapped back to the input image's pixels",
            ],
        }


class InstanceSegmentation(Task):
    name = "instance_segmentation"
    config = InstanceSegmentationConfig
    draws_predictions = True

    # -- data
    def read_data(self, cfg) -> DataSplit:
        d = cfg.data
        train = read_instances(d.train, d.format)
        if d.val:
            val = read_instances(d.val, d.format)
            if val.classes != train.classes:
                raise DataError(f"data.val: {d.val} has classes {val.classes}, data.train {train.classes}")
        else:
            train, val = split_samples(train, d.val_fraction, d.split_seed)
        return DataSplit(train, val, train.classes)

    def check_data(self, cfg) -> DataSplit:
        split = self.read_data(cfg)
        if not any(len(labels) for labels in split.train.labels):
            raise DataError(f"data.train: {cfg.data.train} has no objects")
        return split

    def manifest(self, samples: InstanceSamples, classes: list[str]) -> list[tuple[str, list[str] | None]]:
        lines = []
        for path, labels, crowd in zip(samples.images, samples.labels, samples.crowd, strict=True):
            names = [classes[c] + (" (crowd)" if k else "") for c, k in zip(labels, crowd, strict=True)]
            lines.append((f"{path}\t{';'.join(names)}", sorted({classes[c] for c in labels})))
        return lines

    def build_datasets(self, cfg, split: DataSplit, prep, encoded: bool = False):
        d = cfg.data
        common = {"max_pixels": d.max_image_pixels, "skip_bad": d.skip_bad_images}
        return (
            InstanceDataset(split.train, instance_train_transform(d.augment), crowd=False, **common),
            InstanceDataset(split.val, instance_eval_transform(), **common),
        )

    def collate(self, cfg, num_classes: int, train: bool) -> ListCollate:
        return ListCollate()

    # -- model
    def build_model(self, cfg, num_classes: int) -> BuiltModel:
        m = cfg.model
        return create_instance_model(
            m.name,
            num_classes + 1,
            m.weights,
            m.backbone_weights,
            m.trainable_backbone_layers,
            cfg.data.img_size,
            m.proposals,
            m.rois_per_image,
            m.detections_per_image,
        )

    def model_names(self, pattern: str | None = None) -> list[tuple[str, str]]:
        names = filter_names(list_instance_models(), pattern)
        return [(name, model_source(name) or "timm") for name in names]

    def build_preprocessing(self, cfg, built: BuiltModel) -> InstancePreprocessing:
        return self.preprocessing_from_meta({"preprocessing": built.data_defaults})

    def build_loss(self, cfg) -> MaskRcnnLoss:
        return MaskRcnnLoss(dict(cfg.loss.weights))

    def write_example_data(self, out, n_train: int, n_val: int, size: int, seed: int) -> dict[str, int]:
        return shapes_instances(out, n_train, n_val, size, seed)

    def create_metrics(self, meta: dict, device="cpu") -> InstanceMetrics:
        return InstanceMetrics(meta["num_classes"], device)

    def postprocess(self, outputs: list[dict], meta: dict) -> list[dict]:
        """Per image: boxes (x1, y1, x2, y2 in input pixels), class indices (0-based), scores and
        (N, H, W) bool masks."""
        return [
            {
                "boxes": o["boxes"],
                "labels": o["labels"] - 1,
                "scores": o["scores"],
                "masks": binary_masks(o["masks"]),
            }
            for o in outputs
        ]

    def rebuild_model(self, meta: dict) -> torch.nn.Module:
        fields = meta["instance_segmentation"]
        return rebuild_instance_model(
            meta["model"]["name"], meta["num_classes"] + 1, fields["img_size"], fields["detections_per_image"]
        )

    def preprocessing_from_meta(self, meta: dict) -> InstancePreprocessing:
        p = meta["preprocessing"]
        return InstancePreprocessing(p["min_size"], p["max_size"], p["mean"], p["std"])

    @torch.inference_mode()
    def plot_predictions(self, model, meta: dict, dataset, path, n: int = 8) -> bool:
        samples = [s for s in (dataset[i] for i in range(min(n, len(dataset)))) if s is not None]
        images = [x for x, _ in samples]
        preds = self.postprocess(model(images), meta)
        truth = [{**t, "labels": t["labels"] - 1} for _, t in samples]
        instance_predictions(images, preds, truth, meta["classes"], path)
        return True

    def meta_fields(self, cfg) -> dict:
        return {
            "instance_segmentation": {
                "img_size": cfg.data.img_size,
                "detections_per_image": cfg.model.detections_per_image,
                "labels": "model label 0 is background; class i of `classes` is label i + 1",
                "output": "per image: boxes (x1, y1, x2, y2) in the input image's pixels, labels, scores, "
                "masks (N, H, W) probabilities at the input's size (an object is where >= 0.5)",
                "box_format": "xyxy",
            }
        }

    # -- export, serving, evaluation (called by serving/)
    input_kind = IMAGES
    export_spec = export.SPEC

    def graph_outputs(self, model, inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
        return export.graph_outputs(model, inputs)

    def metric_inputs(self, outputs) -> list[dict]:
        return export.metric_inputs(outputs)

    def onnx_graph(self, model, meta: dict) -> OnnxGraph:
        return export.onnx_graph(model, meta)

    def parity(self, reference: list, outputs: list) -> dict:
        return export.instance_parity(reference, outputs)

    def parity_failures(self, result: dict, exact: bool, thresholds: Thresholds) -> list[str]:
        return export.instance_failures(result, exact, thresholds)

    def serve_handler(self, meta: dict, top_k: int, score_threshold: float) -> InstanceHandler:
        return InstanceHandler(meta, score_threshold, instance_eval_transform())

    def evaluation(self, meta: dict, n_bins: int) -> InstanceEval:
        return InstanceEval(self, meta, instance_eval_transform())


def instance_train_transform(aug) -> T.Compose:
    """Joint image+mask augmentation (`aug` is the config's InstanceAugment): masks move with the
    image; boxes are taken from them afterwards. No resize: the model does it."""
    steps: list = [T.ToImage()]
    if aug.color_jitter:
        cj = aug.color_jitter
        steps.append(T.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    if aug.zoom_out > 1:
        steps.append(T.RandomZoomOut(fill=0, side_range=(1.0, aug.zoom_out)))
    if aug.hflip:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(T.RandomVerticalFlip(aug.vflip))
    if aug.rotation:
        steps.append(T.RandomRotation(aug.rotation, expand=False))
    steps.append(T.ToDtype(torch.float32, scale=True))
    return T.Compose(steps)


def instance_eval_transform() -> T.Compose:
    return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])
