"""The detection config: the shared sections plus what detectors add (COCO/YOLO data, box-safe
augmentation, pretrained backbones and their trainable stages, loss-term weights). Detectors
resize and normalise inside the model, so there are no mean/std/crop fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainer.config import AugmentConfig, DataConfig, LossConfig, ModelConfig, VftConfig
from trainer.tasks.detection.metrics import detection_metric_names
from trainer.tasks.detection.model import LOSS_TERMS, detector_family, detector_source, fixed_size


class DetectionModel(ModelConfig):
    name: str = "fcos_resnet50_fpn"
    backbone_weights: Literal["none", "hub"] = Field("none", description="an ImageNet backbone")
    trainable_backbone_layers: int | None = Field(
        None, ge=0, le=6, description="backbone stages (from the top) that train with pretrained weights"
    )

    @field_validator("name")
    @classmethod
    def _known_detector(cls, name: str, info: ValidationInfo) -> str:
        if detector_family(name, info.data.get("source", "auto")) is None:
            raise ValueError(
                f"'{name}' is not a detection model (torchvision fasterrcnn_*, retinanet_*, "
                "fcos_resnet50_fpn, ssdlite320_mobilenet_v3_large, ssd300_vgg16, "
                "or <detector>_timm_<encoder>)"
            )
        return name

    @field_validator("trainable_backbone_layers")
    @classmethod
    def _pretrained_torchvision(cls, layers: int | None, info: ValidationInfo) -> int | None:
        if layers is None or "name" not in info.data:
            return layers
        if detector_source(info.data["name"]) == "timm":
            raise ValueError("torchvision detectors only (use finetune.*)")
        if info.data.get("weights") == "none" and info.data.get("backbone_weights") == "none":
            raise ValueError("needs model.weights or model.backbone_weights hub")
        return layers


class DetectionAugment(AugmentConfig):
    zoom_out: float = Field(1.0, ge=1.0, description="max canvas scale of RandomZoomOut (1 = off)")
    iou_crop: bool = Field(False, description="SSD-style RandomIoUCrop")


class DetectionData(DataConfig):
    train: str = Field(
        description="COCO instances JSON (or a folder with annotations.json) or YOLO folder "
        "(images/ + labels/)"
    )
    format: Literal["auto", "coco", "yolo"] = "auto"
    img_size: int | None = Field(None, ge=8, description="the longer side the detector resizes to")
    augment: DetectionAugment = DetectionAugment()


class DetectionLoss(LossConfig):
    weights: dict[str, float] = Field({}, description="weight per loss term (`vft ls losses`)")

    @field_validator("name")
    @classmethod
    def _own_losses(cls, value: str) -> str:
        if value != "auto":
            raise ValueError("detectors use their own losses (leave 'auto'; weight terms with loss.weights)")
        return value


class DetectionConfig(VftConfig):
    task: Literal["detection"] = "detection"
    model: DetectionModel = DetectionModel()
    data: DetectionData
    loss: DetectionLoss = DetectionLoss()

    def metric_names(self) -> list[str]:
        return detection_metric_names()

    def default_monitor(self) -> str:
        return "val/map"

    @model_validator(mode="after")
    def _consistent(self) -> DetectionConfig:
        m = self.model
        family = detector_family(m.name, m.source)
        unknown = sorted(set(self.loss.weights) - set(LOSS_TERMS[family]))
        if unknown:
            raise ValueError(f"loss.weights: {unknown} not among {family}'s terms {list(LOSS_TERMS[family])}")
        size = fixed_size(m.name)
        if size and self.data.img_size not in (None, size):
            raise ValueError(f"data.img_size: {m.name} resizes to {size}x{size}; leave it unset or {size}")
        return self
