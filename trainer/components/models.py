"""Models by registered name: every timm model, every torchvision classification model, and
`transformers` image classifiers by Hub id or `save_pretrained` directory (source `hf`).

Weights come from `none`, `hub` (timm's pretrained tag through the Hugging Face hub, or the
torchvision weights enum through torch.hub's cache), a local .safetensors/.pth file, or a
previous RUN_DIR. Head weights whose shapes differ are dropped with a log line; any other
mismatch is an error.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import timm
import torch
import torchvision.models as tvm
from torch import nn

from trainer.components import hf_models
from trainer.errors import WeightsError
from trainer.registry import filter_names

log = logging.getLogger("vft.models")


@dataclass
class BuiltModel:
    module: nn.Module
    name: str
    source: str
    head: tuple[str, ...]
    data_defaults: dict = field(default_factory=dict)
    frozen: tuple[str, ...] = ()  # parameters the builder froze (detectors' trainable_backbone_layers)
    extra: dict = field(default_factory=dict)  # more fields for meta.json's model section


@cache
def _torchvision_names() -> tuple[str, ...]:
    return tuple(tvm.list_models(module=tvm))


def list_models(pattern: str | None = None, source: str = "auto") -> list[str]:
    names: set[str] = set()
    if source in ("auto", "timm"):
        names.update(timm.list_models())
    if source in ("auto", "torchvision"):
        names.update(_torchvision_names())
    return filter_names(sorted(names), pattern)


def model_sources(name: str) -> list[str]:
    return [s for s in ("timm", "torchvision") if resolve_source(name, s)]


def resolve_source(name: str, source: str = "auto") -> str | None:
    """Which library builds `name`: timm first when both do (`source` forces one); a Hub id or
    a `save_pretrained` directory is `hf` under `auto` too."""
    if source in ("auto", "timm") and timm.is_model(name):
        return "timm"
    if source in ("auto", "torchvision") and name in _torchvision_names():
        return "torchvision"
    if source in ("auto", "hf") and hf_models.looks_like_hf(name):
        return "hf"
    return None


def create_model(
    name: str,
    num_classes: int,
    source: str = "auto",
    weights: str = "none",
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    img_size: int | None = None,
) -> BuiltModel:
    """A classifier for `num_classes`; `img_size` builds models whose architecture depends on the
    input size (ViT, DINOv2, Swin, ...) for that size, pretrained position embeddings and
    relative-position tables resampled by timm on load."""
    resolved = resolve_source(name, source)
    if resolved is None:
        raise ValueError(f"unknown model '{name}' (source {source}); see `vft ls models`")
    if resolved == "timm":
        built = _build_timm(name, num_classes, weights == "hub", drop_rate, drop_path_rate, img_size)
    elif resolved == "hf":
        built = build_hf(name, "classification", num_classes, weights == "hub", drop_rate, drop_path_rate)
    else:
        built = _build_torchvision(name, num_classes, weights == "hub", drop_rate, drop_path_rate)
    if weights not in ("none", "hub"):
        load_file_weights(built, weights)
    return built


def build_hf(
    name: str,
    kind: str,
    num_classes: int,
    pretrained: bool,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> BuiltModel:
    """A `transformers` model for task `kind` (classification or segmentation); its head is
    the last layer giving `num_classes` outputs."""
    module, defaults, extra = hf_models.build_hf(
        name, kind, num_classes, pretrained, drop_rate, drop_path_rate
    )
    head = ("model." + _last_classifier(module.model, num_classes),)
    return BuiltModel(module, name, "hf", head, defaults, extra=extra)


def load_file_weights(built: BuiltModel, weights: str) -> None:
    """Weights from a file or RUN_DIR into a built model: resampled to a timm model's input
    size; a `transformers` checkpoint's own keys (no `model.` prefix) fit an `hf` model."""
    state = read_weights(weights, expect_model=built.name)
    if built.source == "timm":
        state = resample_to_model(built.module, state, built.head)
    if built.source == "hf" and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    load_weights(built.module, state, built.head)


def resample_to_model(model: nn.Module, state: dict[str, torch.Tensor], head: tuple[str, ...]) -> dict:
    """Weights from a file or RUN_DIR trained at another input size: the model family's own timm
    checkpoint filter resamples them (ViT/DINOv2/EVA position embeddings, Swin's relative-position
    tables), as timm does for hub weights. Applied only when a tensor outside the head differs in
    shape, so weights that fit load untouched."""
    own = model.state_dict()
    if all(k not in own or own[k].shape == v.shape or _in_head(k, head) for k, v in state.items()):
        return state
    module = sys.modules[type(model).__module__]
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn(state, model) if fn is not None else state


def _build_timm(
    name: str, num_classes: int, pretrained: bool, drop_rate: float, drop_path: float, img_size: int | None
):
    kwargs = {"drop_rate": drop_rate, **size_kwargs(name, img_size)}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # hub errors: offline, missing file, bad download
        if not pretrained:
            raise
        raise WeightsError(f"model.weights: cannot load hub weights for '{name}' ({exc})") from exc
    head = model.pretrained_cfg.get("classifier") or _last_classifier(model, num_classes)
    heads = (head,) if isinstance(head, str) else tuple(head)
    defaults = dict(timm.data.resolve_model_data_config(model))
    if "img_size" in kwargs:  # built for this size: its pretrained config still names the old one
        defaults["input_size"] = (3, img_size, img_size)
    return BuiltModel(model, name, "timm", heads, defaults)


def _build_torchvision(name: str, num_classes: int, pretrained: bool, drop_rate: float, drop_path: float):
    builder = tvm.get_model_builder(name)
    options = {
        "dropout": ("model.drop_rate", drop_rate),
        "stochastic_depth_prob": ("model.drop_path_rate", drop_path),
    }
    kwargs = {key: value for key, (_, value) in options.items() if value}
    try:
        model = builder(weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        field = next((f for key, (f, _) in options.items() if key in str(exc)), "model")
        raise ValueError(f"{field}: torchvision model '{name}' does not take this option ({exc})") from None
    head = (_last_classifier(model, num_classes),)
    weights_enum = _torchvision_default_weights(name)
    if pretrained:
        if weights_enum is None:
            raise WeightsError(f"model.weights: torchvision model '{name}' has no pretrained weights")
        load_weights(model, weights_enum.get_state_dict(progress=False, check_hash=True), head)
    return BuiltModel(model, name, "torchvision", head, _torchvision_data_defaults(weights_enum))


def _torchvision_default_weights(name: str):
    try:
        return tvm.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None


def _torchvision_data_defaults(weights_enum) -> dict:
    defaults = {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 224 / 256,
        "crop_mode": "center",
    }
    if weights_enum is not None:
        tf = weights_enum.transforms()
        crop, resize = tf.crop_size[0], tf.resize_size[0]
        defaults.update(
            input_size=(3, crop, crop),
            interpolation=tf.interpolation.value,
            mean=tuple(tf.mean),
            std=tuple(tf.std),
            crop_pct=crop / resize,
        )
    return defaults


def _last_classifier(model: nn.Module, num_classes: int) -> str:
    """Name of the last Linear/Conv2d producing `num_classes` outputs: the classifier head."""
    head = None
    for mod_name, module in model.named_modules():
        out = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
        if isinstance(module, nn.Linear | nn.Conv2d) and out == num_classes:
            head = mod_name
    if head is None:
        raise ValueError(f"cannot find the classifier head of {type(model).__name__}")
    return head


# ----------------------------------------------------------------------------- weights


def read_weights(source: str | Path, expect_model: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors/.pth file or a previous RUN_DIR (its best checkpoint)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = _run_dir_weights(path, expect_model)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the file's fault
        raise WeightsError(f"{path}: cannot read weights ({exc})") from exc
    return _unwrap_state(state, path)


def _run_dir_weights(path: Path, expect_model: str | None) -> Path:
    for ckpt in (path / "best", path / "last", path):
        if (ckpt / "model.safetensors").is_file():
            meta_file = ckpt / "meta.json"
            if expect_model and meta_file.is_file():
                trained = json.loads(meta_file.read_text()).get("model", {}).get("name")
                if trained and trained != expect_model:
                    raise WeightsError(f"{path}: holds a '{trained}' model, not '{expect_model}'")
            return ckpt / "model.safetensors"
    raise WeightsError(f"{path}: no model.safetensors in best/, last/ or the folder itself")


def _unwrap_state(state, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    prefixes = ("module.", "_orig_mod.")
    return {_strip(k, prefixes): v for k, v in state.items()}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _in_head(key: str, head: tuple[str, ...]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in head)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], head: tuple[str, ...]) -> list[str]:
    """Load `state` strictly, except head tensors whose shapes differ: those are dropped and
    logged (the head was replaced for the dataset's classes). Returns the dropped keys."""
    own = model.state_dict()
    dropped, problems = [], []
    for key, value in state.items():
        if key not in own:
            problems.append(f"unexpected tensor '{key}'")
        elif own[key].shape != value.shape:
            if _in_head(key, head):
                dropped.append(key)
            else:
                problems.append(f"'{key}' has shape {tuple(value.shape)}, model {tuple(own[key].shape)}")
    missing = [
        k for k in own if k not in state and not _in_head(k, head) and not k.endswith("num_batches_tracked")
    ]
    problems += [f"missing tensor '{k}'" for k in missing]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5 else "")
        raise WeightsError(f"weights do not fit {type(model).__name__}: {shown}")
    if dropped:
        log.warning("dropped head weights with other shapes (new head): %s", ", ".join(dropped))
    model.load_state_dict({k: v for k, v in state.items() if k not in dropped}, strict=False)
    return dropped


# ----------------------------------------------------------------------------- input size


@cache
def timm_init_params(name: str) -> frozenset[str]:
    """The keyword arguments the class of timm model `name` takes (built on the meta device)."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    return frozenset(inspect.signature(type(model).__init__).parameters)


def takes_img_size(name: str) -> bool:
    """Whether timm builds `name` for a given input size (its class takes `img_size`)."""
    return "img_size" in timm_init_params(name)


def dynamic_size_kwargs(name: str) -> dict:
    """timm's switches for inputs of any size (ViT, DeiT, DINOv2, EVA: position embeddings
    resampled per input, the image padded to the patch; Swin: windows padded), for encoders
    that see variable-size images (detection)."""
    params = timm_init_params(name)
    return {key: True for key in ("dynamic_img_size", "dynamic_img_pad") if key in params}


def size_kwargs(name: str, img_size: int | None) -> dict:
    """timm's `img_size` argument for models built for an input size, else nothing."""
    return {"img_size": img_size} if img_size and takes_img_size(name) else {}


def input_size_error(name: str, source: str, size: int) -> str | None:
    """Why the classifier `name` cannot take size x size inputs (None when it can): it is built
    for that size and run once on the meta device (shapes only, no memory, no compute)."""
    try:
        with torch.device("meta"):
            resolved = resolve_source(name, source)
            if resolved == "hf":
                model = build_hf(name, "classification", 2, pretrained=False).module
            elif resolved == "timm":
                model = timm.create_model(name, pretrained=False, num_classes=2, **size_kwargs(name, size))
            else:
                model = tvm.get_model(name, weights=None, num_classes=2)
            model.eval()(torch.empty(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001 - any failure means this size does not work
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


def nearest_input_sizes(name: str, source: str, size: int, span: int = 64, tries: int = 24) -> list[int]:
    """The closest sizes below and above `size` (within `span`) that the model takes, trying
    multiples of common patch sizes and strides first."""
    candidates = sorted(
        {k * m for k in (7, 8, 14, 16, 32) for m in range(1, (size + span) // k + 1)} - {size},
        key=lambda c: (abs(c - size), c),
    )
    found: dict[bool, int] = {}  # above size? -> the closest size that works on that side
    for candidate in [c for c in candidates if abs(c - size) <= span and c >= 8][:tries]:
        side = candidate > size
        if side not in found and input_size_error(name, source, candidate) is None:
            found[side] = candidate
            if len(found) == 2:
                break
    return sorted(found.values())
