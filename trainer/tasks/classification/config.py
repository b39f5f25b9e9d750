"""The classification config: the shared sections plus what single- and multi-label
classification adds (ImageFolder/CSV data, MixUp/CutMix and AutoAugment, classifier losses,
robust validation)."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trainer.components import hf_models
from trainer.components.lora import check_targets
from trainer.components.models import input_size_error, list_models, nearest_input_sizes, resolve_source
from trainer.config import (
    CropAugmentConfig,
    FinetuneConfig,
    HfDataSection,
    ImageInputDataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    VftConfig,
    check_name,
    local_paths,
)
from trainer.tasks.classification.metrics import ROBUST_METRIC, metric_names

LOSSES = ("cross_entropy", "bce", "focal")


class ClassificationModel(ModelConfig):
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str, info: ValidationInfo) -> str:
        source = info.data.get("source", "auto")
        if source == "hf" or resolve_source(name, source) == "hf":
            # the driver reads its config (a Hub download, or the folder); workers trust it
            return hf_models.checked_name(name, "classification") if local_paths(info) else name
        if resolve_source(name, source) is None:
            where = "timm or torchvision" if source == "auto" else source
            close = difflib.get_close_matches(name, list_models(source=source), n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see `vft ls models`"
            raise ValueError(f"unknown {where} classification model '{name}'{hint}")
        return name


class ClassificationAugment(CropAugmentConfig):
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "none"
    randaugment_ops: int = Field(2, ge=1)
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    random_erasing: float = Field(0.0, ge=0.0, le=1.0)
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)


class ClassificationData(ImageInputDataConfig):
    train: str = Field(
        description="ImageFolder directory, CSV manifest (path,label), or Hugging Face dataset "
        "(hf:<hub id>, a save_to_disk folder or a folder of Parquet/Arrow shards)"
    )
    format: Literal["auto", "imagefolder", "csv", "hf"] = "auto"
    hf: HfDataSection = HfDataSection()
    augment: ClassificationAugment = ClassificationAugment()
    balanced_sampling: bool = False
    multilabel: bool = False
    jpeg_draft: bool = Field(
        True,
        description="decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that keeps the "
        "resolution the crop needs: camera photos load several times faster",
    )


class ClassificationLoss(LossConfig):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_name("losses", value, ["auto", *LOSSES])


class ClassificationFinetune(FinetuneConfig):
    cache_features: bool = Field(
        False,
        description="linear_probe: run the frozen backbone once and train the head on its kept "
        "features (training images get the validation transform, no augmentation)",
    )

    @field_validator("cache_features")
    @classmethod
    def _probe_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("strategy") != "linear_probe":
            raise ValueError(f"needs strategy 'linear_probe', not '{info.data.get('strategy')}'")
        return value


class ClassificationTrain(TrainConfig):
    robust_val: bool = Field(False, description=f"also validate under light corruptions: {ROBUST_METRIC}")


class ClassificationConfig(VftConfig):
    task: Literal["classification"] = "classification"
    model: ClassificationModel = ClassificationModel()
    data: ClassificationData
    loss: ClassificationLoss = ClassificationLoss()
    finetune: ClassificationFinetune = ClassificationFinetune()
    train: ClassificationTrain = ClassificationTrain()
    supports_qat = True

    def metric_names(self) -> list[str]:
        # val/robust_acc: measured when train.robust_val is on (single-label only)
        return metric_names(self.data.multilabel) + ([] if self.data.multilabel else [ROBUST_METRIC])

    def default_monitor(self) -> str:
        return "val/map" if self.data.multilabel else "val/top1"

    @model_validator(mode="after")
    def _consistent(self) -> ClassificationConfig:
        if self.train.monitor == ROBUST_METRIC and not self.train.robust_val:
            raise ValueError(f"train.monitor: {ROBUST_METRIC} needs train.robust_val=true")
        if self.data.cache == "ram" and self.data.balanced_sampling:
            raise ValueError(
                "data.cache: 'ram' keeps each worker's own shard; balanced_sampling draws from every image"
            )
        if self.loss.name == "bce" and not self.data.multilabel:
            raise ValueError("loss.name: 'bce' needs data.multilabel=true (use cross_entropy otherwise)")
        if self.data.img_size is not None:
            check_input_size(self.model.name, self.model.source, self.data.img_size)
        lora = self.finetune.lora
        if self.finetune.strategy == "lora" and lora.targets is not None:
            check_targets(self.model.name, self.model.source, self.data.img_size, tuple(lora.targets))
        if self.qat.enabled and self.model.drop_path_rate:
            raise ValueError(
                "model.drop_path_rate: stochastic depth is fixed into the graph quantization-aware "
                "training captures; set 0 with qat.enabled"
            )
        if self.qat.enabled and self.finetune.cache_features:
            raise ValueError(
                "finetune.cache_features: a cached probe trains the head alone; not with qat.enabled"
            )
        aug = self.data.augment
        if self.finetune.cache_features:
            fixed_inputs(self)
        for field in ("mixup_alpha", "cutmix_alpha"):
            if getattr(aug, field) and (self.data.multilabel or self.loss.name == "focal"):
                why = "data.multilabel" if self.data.multilabel else "loss.name 'focal'"
                raise ValueError(f"data.augment.{field}: mixed (soft) targets do not work with {why}")
        return self


def fixed_inputs(cfg: ClassificationConfig) -> None:
    """A cached feature stands for its image in every epoch: nothing may change the inputs.
    Training images get the validation transform (resize and centre crop), so the random crop's
    `scale` and `ratio` do not apply; any other augmentation is an error."""
    aug = cfg.data.augment
    for field in (
        "hflip",
        "vflip",
        "rotation",
        "color_jitter",
        "random_erasing",
        "mixup_alpha",
        "cutmix_alpha",
    ):
        if getattr(aug, field):
            raise ValueError(
                f"data.augment.{field}: {getattr(aug, field)} changes the images every epoch; "
                "a cached probe (finetune.cache_features) needs 0"
            )
    if aug.auto_augment != "none":
        raise ValueError("data.augment.auto_augment: a cached probe (finetune.cache_features) needs 'none'")
    if cfg.data.balanced_sampling:
        raise ValueError("data.balanced_sampling: not with finetune.cache_features (images are cached once)")


def check_input_size(name: str, source: str, size: int) -> None:
    """ValueError naming data.img_size, what the model said and the nearest sizes it takes."""
    error = input_size_error(name, source, size)
    if error is None:
        return
    nearest = nearest_input_sizes(name, source, size)
    hint = f"nearest sizes it takes: {', '.join(map(str, nearest))}" if nearest else "try its default size"
    raise ValueError(f"data.img_size: {name} cannot take {size}x{size} inputs ({error}); {hint}")
