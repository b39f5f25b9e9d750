"""Hugging Face `transformers` vision models (`model.source: hf`).

`model.name` is a Hub id (downloaded once into the Hugging Face cache; `HF_HUB_OFFLINE=1` reads
the cache only) or a directory written by `save_pretrained`. Classifiers come from
`AutoModelForImageClassification`, segmenters from `AutoModelForSemanticSegmentation`, with the
head replaced for the user's classes. The model's image processor (`AutoImageProcessor`: size,
crop, mean/std, resample) becomes its preprocessing defaults, so evaluation, export parity and
serving use it like any other model. The resolved `transformers` config goes into meta.json, so
a checkpoint is rebuilt without the Hub.

`transformers` is imported only when a model of this source is asked for: it takes seconds.
"""

from __future__ import annotations

import inspect
import re
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import WeightsError

KINDS = ("classification", "segmentation")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_INTERPOLATION = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample codes


def looks_like_hf(name: str) -> bool:
    """A Hub id (`org/name`) or a directory holding a `transformers` config.json."""
    path = Path(name).expanduser()
    return (path / "config.json").is_file() if path.is_dir() else bool(_HUB_ID.fullmatch(name))


def _auto_class(kind: str):
    import transformers

    return {
        "classification": transformers.AutoModelForImageClassification,
        "segmentation": transformers.AutoModelForSemanticSegmentation,
    }[kind]


def _supported_types(kind: str) -> frozenset[str]:
    from transformers.models.auto import modeling_auto

    names = {
        "classification": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        "segmentation": modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    }[kind]
    return frozenset(names)


def supported_types(kind: str) -> list[str]:
    """The `transformers` model types (config.model_type) a task takes, for `vft ls models`."""
    return sorted(_supported_types(kind))


def _pretrained_config(name: str) -> dict:
    """The model's `transformers` config as a dict (read once per Hub id, or per version of a
    directory's config.json)."""
    path = Path(name).expanduser()
    config_file = path / "config.json"
    return _read_config(str(path) if path.is_dir() else name, _stamp(config_file))


def _stamp(file: Path) -> int | None:
    return file.stat().st_mtime_ns if file.is_file() else None


@cache
def _read_config(name: str, stamp: int | None) -> dict:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name).to_dict()
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot read the Hugging Face config of '{name}' ({first})") from None


def support_error(name: str, kind: str) -> str | None:
    """Why `name` is not a `transformers` model the task `kind` takes (None when it is)."""
    if not looks_like_hf(name):
        return "neither a Hub id (org/name) nor a directory with a config.json"
    try:
        model_type = _pretrained_config(name)["model_type"]
    except WeightsError as exc:
        return str(exc)
    if model_type not in _supported_types(kind):
        return f"its type '{model_type}' has no {kind} model in transformers"
    return None


def checked_name(name: str, kind: str) -> str:
    """`name` as a config names it for the task `kind` (a directory made absolute: workers run
    elsewhere), or a ValueError saying why it is not a model that task takes."""
    error = support_error(name, kind)
    if error:
        raise ValueError(f"Hugging Face {kind} model '{name}': {error}; see `vft ls models --source hf`")
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _config(config_dict: dict, num_classes: int, classes: list[str] | None):
    from transformers import AutoConfig

    values = dict(config_dict)
    model_type = values.pop("model_type")
    labels = classes or [str(i) for i in range(num_classes)]
    values.update(
        num_labels=num_classes,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return AutoConfig.for_model(model_type, **values)


def _set_dropout(config, drop_rate: float, drop_path_rate: float) -> None:
    """model.drop_rate -> the classifier's (else the hidden layers') dropout; drop_path_rate ->
    stochastic depth, where the architecture has it; a ValueError naming the field otherwise."""
    options = (
        (
            "model.drop_rate",
            drop_rate,
            ("classifier_dropout_prob", "classifier_dropout", "hidden_dropout_prob"),
        ),
        ("model.drop_path_rate", drop_path_rate, ("drop_path_rate",)),
    )
    for field, value, attributes in options:
        if not value:
            continue
        attribute = next((a for a in attributes if hasattr(config, a)), None)
        if attribute is None:
            raise ValueError(f"{field}: {config.model_type} models have no such option")
        setattr(config, attribute, value)


class HfClassifier(nn.Module):
    """A `transformers` classifier as a module taking pixels and returning logits (N, classes).
    At another input size than the config's, ViT-style models interpolate their position
    embeddings (`interpolate_pos_encoding`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        size = getattr(model.config, "image_size", None)
        self._trained_size = size if isinstance(size, int) else None
        self._interpolates = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def _kwargs(self, x: torch.Tensor) -> dict:
        other = self._trained_size is not None and tuple(x.shape[-2:]) != (self._trained_size,) * 2
        return {"interpolate_pos_encoding": True} if other and self._interpolates else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x, **self._kwargs(x)).logits


class HfSegmenter(HfClassifier):
    """A `transformers` semantic segmenter returning logits (N, classes, H, W) at the input size
    (SegFormer predicts at 1/4 of it: upsampled bilinearly, as its image processor does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=x, **self._kwargs(x)).logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


_WRAPPERS = {"classification": HfClassifier, "segmentation": HfSegmenter}


def build_hf(
    name: str,
    kind: str,
    num_classes: int,
    pretrained: bool,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> tuple[nn.Module, dict, dict]:
    """`name` for `num_classes` classes, pretrained (from the Hub or the directory; the head's
    mismatched tensors re-initialised) or random. Returns the module, its preprocessing
    defaults and the fields meta.json's model section keeps (the resolved config)."""
    config = _config(_pretrained_config(name), num_classes, None)
    _set_dropout(config, drop_rate, drop_path_rate)
    auto = _auto_class(kind)
    if pretrained:
        try:
            model = auto.from_pretrained(
                name, config=config, ignore_mismatched_sizes=True, dtype=torch.float32
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(
                f"model.weights: cannot load Hugging Face weights of '{name}' ({exc})"
            ) from exc
    else:
        model = auto.from_config(config)
    saved = {**config.to_dict(), "id2label": {}, "label2id": {}}
    return _WRAPPERS[kind](model.float()), data_defaults(name, config), {"hf_config": saved}


def rebuild_hf(meta_model: dict, kind: str, classes: list[str]) -> nn.Module:
    """The architecture of an `hf` checkpoint from its meta.json (`hf_config`), no Hub."""
    config = _config(meta_model["hf_config"], len(classes), classes)
    return _WRAPPERS[kind](_auto_class(kind).from_config(config).float())


def data_defaults(name: str, config) -> dict:
    """The image processor's preprocessing in vft's terms: the crop size (or the resize size
    when it does not crop), mean/std, interpolation and crop_pct (resize / crop). A model
    without a processor config gets ImageNet's statistics at its config's image size."""
    from transformers import AutoImageProcessor

    size = getattr(config, "image_size", 224)
    defaults = {
        "input_size": (3, size, size) if isinstance(size, int) else (3, 224, 224),
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 1.0,
    }
    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError):
        return defaults
    resize = _side(getattr(processor, "size", None))
    crop = (
        _side(getattr(processor, "crop_size", None)) if getattr(processor, "do_center_crop", False) else None
    )
    if crop or resize:
        defaults["input_size"] = (3, crop or resize, crop or resize)
        defaults["crop_pct"] = (crop / resize) if crop and resize else 1.0
    if not crop and getattr(processor, "crop_pct", None) and (resize or 0) < 384:
        defaults["crop_pct"] = float(processor.crop_pct)  # ConvNeXt's rule: crop below 384 px
    for key, attribute in (("mean", "image_mean"), ("std", "image_std")):
        value = getattr(processor, attribute, None)
        if value is not None:
            defaults[key] = tuple(float(v) for v in value)
    defaults["interpolation"] = _interpolation(getattr(processor, "resample", None))
    return defaults


def _side(size) -> int | None:
    """The side a processor's `size` or `crop_size` (a dict or SizeDict) gives a square input."""
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    return get("shortest_edge") or get("height") or None


def _interpolation(resample) -> str:
    if resample is None:
        return "bilinear"
    code = getattr(resample, "value", resample)
    if isinstance(code, int):
        return _INTERPOLATION.get(code, "bilinear")
    text = str(resample).lower()
    return next((v for v in ("bicubic", "nearest", "bilinear") if v in text), "bilinear")
