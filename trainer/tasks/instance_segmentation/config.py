"""The instance segmentation config: the shared sections plus what Mask R-CNN adds (COCO/YOLO
segmentation data, mask-safe augmentation, pretrained backbones and their trainable stages,
loss-term weights). The model resizes and normalises inside, so there are no mean/std fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from trainer.config import AugmentConfig, DataConfig, LossConfig, ModelConfig, VftConfig
from trainer.tasks.instance_segmentation.metrics import instance_metric_names
from trainer.tasks.instance_segmentation.model import LOSS_TERMS, model_source


class InstanceModel(ModelConfig):
    name: str = "maskrcnn_resnet50_fpn_v2"
    backbone_weights: Literal["none", "hub"] = Field("none", description="an ImageNet backbone")
    trainable_backbone_layers: int | None = Field(
        None, ge=0, le=5, description="backbone stages (from the top) that train with pretrained weights"
    )
    proposals: int = Field(2000, ge=1, description="region proposals per image in training (after NMS)")
    rois_per_image: int = Field(
        512, ge=1, description="proposals per image sampled for the box and mask heads' losses"
    )
    detections_per_image: int = Field(
        100, ge=1, description="most objects returned per image (each one runs the mask head)"
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str, info: ValidationInfo) -> str:
        if model_source(name, info.data.get("source", "auto")) is None:
            raise ValueError(
                f"'{name}' is not an instance segmentation model (maskrcnn_resnet50_fpn, "
                "maskrcnn_resnet50_fpn_v2, or maskrcnn_timm_<timm encoder>)"
            )
        return name

    @field_validator("trainable_backbone_layers")
    @classmethod
    def _pretrained_torchvision(cls, layers: int | None, info: ValidationInfo) -> int | None:
        if layers is None or "name" not in info.data:
            return layers
        if model_source(info.data["name"]) == "timm":
            raise ValueError("torchvision models only (use finetune.*)")
        if info.data.get("weights") == "none" and info.data.get("backbone_weights") == "none":
            raise ValueError("needs model.weights or model.backbone_weights hub")
        return layers


class InstanceAugment(AugmentConfig):
    zoom_out: float = Field(1.0, ge=1.0, description="max canvas scale of RandomZoomOut (1 = off)")


class InstanceData(DataConfig):
    train: str = Field(
        description="COCO instances JSON with polygons or RLE (or a folder with annotations.json) "
        "or YOLO segmentation folder (images/ + labels/)"
    )
    format: Literal["auto", "coco", "yolo"] = "auto"
    img_size: int | None = Field(None, ge=8, description="the longer side the model resizes to")
    augment: InstanceAugment = InstanceAugment()


class InstanceLoss(LossConfig):
    weights: dict[str, float] = Field({}, description=f"weight per loss term: {', '.join(LOSS_TERMS)}")

    @field_validator("name")
    @classmethod
    def _own_losses(cls, value: str) -> str:
        if value != "auto":
            raise ValueError("Mask R-CNN uses its own losses (leave 'auto'; weight terms with loss.weights)")
        return value

    @field_validator("weights")
    @classmethod
    def _known_terms(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"{unknown} not among Mask R-CNN's terms {list(LOSS_TERMS)}")
        return weights


class InstanceSegmentationConfig(VftConfig):
    task: Literal["instance_segmentation"] = "instance_segmentation"
    model: InstanceModel = InstanceModel()
    data: InstanceData
    loss: InstanceLoss = InstanceLoss()

    def metric_names(self) -> list[str]:
        return instance_metric_names()

    def default_monitor(self) -> str:
        return "val/mask_map"
