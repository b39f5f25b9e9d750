"""The segmentation config: the shared sections plus what semantic segmentation adds (mask
folders with an ignore index, an auxiliary head, per-pixel losses)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from trainer.components import hf_models
from trainer.config import (
    HfDataSection,
    ImageInputDataConfig,
    LossConfig,
    ModelConfig,
    VftConfig,
    check_name,
    local_paths,
)
from trainer.tasks.segmentation.metrics import segmentation_metric_names
from trainer.tasks.segmentation.model import has_aux_head, segmenter_source

LOSSES = ("cross_entropy", "dice", "ce_dice", "bce_dice")


class SegmentationModel(ModelConfig):
    name: str = "unet_resnet18"
    aux_loss: bool = Field(False, description="DeepLabV3/FCN auxiliary head and loss")

    @field_validator("name")
    @classmethod
    def _known_segmenter(cls, name: str, info: ValidationInfo) -> str:
        source = info.data.get("source", "auto")
        if source == "hf" or segmenter_source(name, source) == "hf":
            # the driver reads its config (a Hub download, or the folder); workers trust it
            return hf_models.checked_name(name, "segmentation") if local_paths(info) else name
        if segmenter_source(name, source) is None:
            raise ValueError(
                f"'{name}' is not a segmentation model (torchvision deeplabv3_*, fcn_*, "
                "lraspp_mobilenet_v3_large, unet_<timm encoder>, or a transformers segmenter "
                "with model.source hf)"
            )
        return name

    @field_validator("aux_loss")
    @classmethod
    def _has_aux_head(cls, aux_loss: bool, info: ValidationInfo) -> bool:
        name = info.data.get("name")
        if aux_loss and name and not has_aux_head(name):
            raise ValueError(f"'{name}' has no auxiliary head")
        return aux_loss


class SegmentationData(ImageInputDataConfig):
    train: str = Field(
        description="mask folder: images/ + masks/ (class indices), optional classes.txt; a COCO "
        "instances file (polygons or RLE; or a folder holding annotations.json); a YOLO "
        "segmentation folder (images/ + labels/ of normalised polygons); or a Hugging "
        "Face dataset with an image and a mask column (hf:<hub id>, save_to_disk, Parquet)"
    )
    format: Literal["auto", "maskfolder", "coco", "yolo", "hf"] = "auto"
    hf: HfDataSection = HfDataSection()
    ignore_index: int = Field(255, ge=0, le=255, description="mask value left out")


class SegmentationLoss(LossConfig):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_name("losses", value, ["auto", *LOSSES])


class SegmentationConfig(VftConfig):
    task: Literal["segmentation"] = "segmentation"
    model: SegmentationModel = SegmentationModel()
    data: SegmentationData
    loss: SegmentationLoss = SegmentationLoss()

    def metric_names(self) -> list[str]:
        return segmentation_metric_names()

    def default_monitor(self) -> str:
        return "val/miou"
