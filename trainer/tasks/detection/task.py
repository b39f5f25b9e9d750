"""Object detection on the task interface: COCO-format or YOLO txt data, torchvision's Faster
R-CNN/RetinaNet/FCOS/SSD (or the same detectors over a timm encoder + FPN), joint image+box
transforms with tv_tensors, the detectors' own losses with configurable weights, COCO mAP
through torchmetrics plus the mean IoU of matched boxes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2 as T

from trainer.components.deploy import IMAGES, OnnxGraph, Thresholds
from trainer.components.loader import ListCollate
from trainer.components.models import BuiltModel
from trainer.components.parity import box_failures, box_parity
from trainer.errors import DataError
from trainer.registry import filter_names
from trainer.tasks.base import DataSplit, Task, split_samples
from trainer.tasks.detection import export
from trainer.tasks.detection.config import DetectionConfig
from trainer.tasks.detection.data import BoxDataset, BoxSamples, read_detection
from trainer.tasks.detection.evaluate import DetectionEval
from trainer.tasks.detection.metrics import DetectionMetrics
from trainer.tasks.detection.model import create_detector, detector_source, list_detectors, rebuild_detector
from trainer.tasks.detection.plots import detection_predictions
from trainer.tasks.detection.serve import DetectionHandler
from trainer.tasks.detection.shapes import shapes_detection


class DetectionLoss:
    """The detector's own loss terms (train mode, with targets), weighted and summed."""

    def __init__(self, weights: dict[str, float]):
        self.weights = weights

    def __call__(
        self, model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict]
    ) -> torch.Tensor:
        terms = model(images, targets)
        return sum(self.weights.get(name, 1.0) * value for name, value in terms.items())

    def on_outputs(self, outputs, targets) -> None:
        return None  # torchvision detectors return no losses in eval mode


@dataclass
class DetectionPreprocessing:
    """What a detector's input goes through: decoded RGB scaled to [0, 1]; the model itself
    resizes (shorter side to min_size, longer side at most max_size, or to fixed_size) and
    normalises with mean/std, and maps boxes back to the input's pixels."""

    min_size: int
    max_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fixed_size: list[int] | None = None

    def to_meta(self) -> dict:
        resize = (
            f"resize to {self.fixed_size[1]}x{self.fixed_size[0]} (bilinear)"
            if self.fixed_size
            else f"resize (bilinear) by min({self.min_size}/shorter side, {self.max_size}/longer side)"
        )
        return {
            **asdict(self),
            "channel_order": "RGB",
            "input": "a list of (3, H, W) float tensors, any size",
            "steps": [
                "scale to [0, 1]",
                f"inside the model: normalize (x - mean) / std, {resize}, batch with zero padding",
                "inside the model: boxes mapped back to the input image's pixels",
            ],
        }


class Detection(Task):
    name = "detection"
    device_decoding = True
    config = DetectionConfig
    draws_predictions = True

    # -- data
    def read_data(self, cfg) -> DataSplit:
        d = cfg.data
        train = read_detection(d.train, d.format)
        if d.val:
            val = read_detection(d.val, d.format)
            if val.classes != train.classes:
                raise DataError(f"data.val: {d.val} has classes {val.classes}, data.train {train.classes}")
        else:
            train, val = split_samples(train, d.val_fraction, d.split_seed)
        return DataSplit(train, val, train.classes)

    def check_data(self, cfg) -> DataSplit:
        split = self.read_data(cfg)
        if not sum(len(b) for b in split.train.boxes):
            raise DataError(f"data.train: {cfg.data.train} has no boxes")
        return split

    def manifest(self, samples: BoxSamples, classes: list[str]) -> list[tuple[str, list[str] | None]]:
        lines = []
        for path, boxes, labels in zip(samples.images, samples.boxes, samples.labels, strict=True):
            pairs = zip(boxes, labels, strict=True)
            objects = ";".join(f"{classes[c]}:{','.join(f'{v:.1f}' for v in box)}" for box, c in pairs)
            lines.append((f"{path}\t{objects}", sorted({classes[c] for c in labels})))
        return lines

    def build_datasets(self, cfg, split: DataSplit, prep, encoded: bool = False):
        d = cfg.data
        common = {"max_pixels": d.max_image_pixels, "skip_bad": d.skip_bad_images, "encoded": encoded}
        common["collate"] = ListCollate()
        return (
            BoxDataset(split.train, detection_train_transform(d.augment), **common),
            BoxDataset(split.val, detection_eval_transform(), **common),
        )

    def collate(self, cfg, num_classes: int, train: bool) -> ListCollate:
        return ListCollate()

    # -- model
    def build_model(self, cfg, num_classes: int) -> BuiltModel:
        m = cfg.model
        return create_detector(
            m.name,
            num_classes + 1,
            m.weights,
            m.backbone_weights,
            m.trainable_backbone_layers,
            cfg.data.img_size,
        )

    def model_names(self, pattern: str | None = None) -> list[tuple[str, str]]:
        return [(name, detector_source(name)) for name in filter_names(list_detectors(), pattern)]

    def build_preprocessing(self, cfg, built: BuiltModel) -> DetectionPreprocessing:
        return self.preprocessing_from_meta({"preprocessing": built.data_defaults})

    def build_loss(self, cfg) -> DetectionLoss:
        return DetectionLoss(dict(cfg.loss.weights))

    def write_example_data(self, out, n_train: int, n_val: int, size: int, seed: int) -> dict[str, int]:
        return shapes_detection(out, n_train, n_val, size, seed)

    def create_metrics(self, meta: dict, device="cpu") -> DetectionMetrics:
        return DetectionMetrics(meta["num_classes"], device)

    def postprocess(self, outputs: list[dict], meta: dict) -> list[dict]:
        """Per image: boxes (x1, y1, x2, y2 in input pixels), class indices (0-based), scores."""
        return [{"boxes": o["boxes"], "labels": o["labels"] - 1, "scores": o["scores"]} for o in outputs]

    def rebuild_model(self, meta: dict) -> torch.nn.Module:
        return rebuild_detector(meta["model"]["name"], meta["num_classes"] + 1, meta["detection"]["img_size"])

    def preprocessing_from_meta(self, meta: dict) -> DetectionPreprocessing:
        p = meta["preprocessing"]
        return DetectionPreprocessing(p["min_size"], p["max_size"], p["mean"], p["std"], p["fixed_size"])

    @torch.inference_mode()
    def plot_predictions(self, model, meta: dict, dataset, path, n: int = 8) -> bool:
        samples = [s for s in (dataset[i] for i in range(min(n, len(dataset)))) if s is not None]
        images = [x for x, _ in samples]
        preds = self.postprocess(model(images), meta)
        truth = [{**t, "labels": t["labels"] - 1} for _, t in samples]
        detection_predictions(images, preds, truth, meta["classes"], path)
        return True

    def meta_fields(self, cfg) -> dict:
        return {
            "detection": {
                "img_size": cfg.data.img_size,
                "labels": "model label 0 is background; class i of `classes` is label i + 1",
                "output": "per image: boxes (x1, y1, x2, y2) in the input image's pixels, labels, scores",
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
        return box_parity(reference, outputs)

    def parity_failures(self, result: dict, exact: bool, thresholds: Thresholds) -> list[str]:
        return box_failures(result, exact, thresholds)

    def serve_handler(self, meta: dict, top_k: int, score_threshold: float) -> DetectionHandler:
        return DetectionHandler(meta, score_threshold, detection_eval_transform())

    def evaluation(self, meta: dict, n_bins: int) -> DetectionEval:
        return DetectionEval(self, meta, detection_eval_transform())


def detection_train_transform(aug) -> T.Compose:
    """Joint image+box augmentation (`aug` is the config's AugmentConfig); boxes are clamped to
    the image and degenerate ones dropped with their labels. No resize: the model does it."""
    steps: list = [T.ToImage()]
    if aug.color_jitter:
        cj = aug.color_jitter
        steps.append(T.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    if aug.zoom_out > 1:
        steps.append(T.RandomZoomOut(fill=0, side_range=(1.0, aug.zoom_out)))
    if aug.iou_crop:
        steps.append(T.RandomIoUCrop())
    if aug.hflip:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(T.RandomVerticalFlip(aug.vflip))
    if aug.rotation:
        steps.append(T.RandomRotation(aug.rotation, expand=False))
    steps += [
        T.ClampBoundingBoxes(),
        T.SanitizeBoundingBoxes(min_size=1),
        T.ToDtype(torch.float32, scale=True),
    ]
    return T.Compose(steps)


def detection_eval_transform() -> T.Compose:
    return T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])
