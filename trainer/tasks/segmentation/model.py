"""Segmentation models by name: torchvision's DeepLabV3, FCN and LRASPP, `unet_<encoder>`, a
small U-Net decoder over any timm encoder (`features_only`), and `transformers` semantic
segmenters (SegFormer, ...) by Hub id or `save_pretrained` directory (source `hf`).

Models return per-pixel class logits (N, C, H, W) at the input size; torchvision's models
return their dict (`out`, and `aux` with `model.aux_loss`), read by `seg_logits`. Their state
dicts are torchvision's own, so a third party rebuilds them with torchvision alone.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

from trainer.components import hf_models
from trainer.components.models import (
    BuiltModel,
    _torchvision_default_weights,
    build_hf,
    load_file_weights,
    load_weights,
    size_kwargs,
)
from trainer.errors import WeightsError

TORCHVISION_SEGMENTERS = (
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
    "lraspp_mobilenet_v3_large",
)
UNET_PREFIX = "unet_"
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def list_segmenters() -> list[str]:
    return [*TORCHVISION_SEGMENTERS, f"{UNET_PREFIX}<timm model with features_only>"]


def segmenter_source(name: str, source: str = "auto") -> str | None:
    """'torchvision' or 'timm' (U-Net encoder) when `name` is a segmentation model, else None."""
    if name in TORCHVISION_SEGMENTERS and source in ("auto", "torchvision"):
        return "torchvision"
    encoder = name.removeprefix(UNET_PREFIX)
    if name.startswith(UNET_PREFIX) and source in ("auto", "timm") and timm.is_model(encoder):
        return "timm"
    if source in ("auto", "hf") and hf_models.looks_like_hf(name):
        return "hf"
    return None


def has_aux_head(name: str) -> bool:
    return name.startswith(("deeplabv3_", "fcn_"))


def seg_logits(outputs) -> torch.Tensor:
    return outputs["out"] if isinstance(outputs, dict) else outputs


def create_segmenter(
    name: str,
    num_classes: int,
    weights: str = "none",
    aux_loss: bool = False,
    source: str = "auto",
    img_size: int | None = None,
) -> BuiltModel:
    """`img_size` builds a U-Net encoder whose architecture depends on the input size (a ViT or
    Swin) for that size."""
    resolved = segmenter_source(name, source)
    if resolved is None:
        raise ValueError(f"unknown segmentation model '{name}'; allowed: {', '.join(list_segmenters())}")
    if resolved == "torchvision":
        built = _build_torchvision(name, num_classes, weights == "hub", aux_loss)
    elif resolved == "hf":
        built = build_hf(name, "segmentation", num_classes, weights == "hub")
    else:
        built = _build_unet(name, num_classes, weights == "hub", img_size)
    if weights not in ("none", "hub"):
        load_file_weights(built, weights)
    return built


# ----------------------------------------------------------------------------- torchvision


def _heads(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    """The classifier convs producing `num_classes` maps (LRASPP has two, aux heads one)."""
    return tuple(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and module.out_channels == num_classes
        and name.startswith(("classifier", "aux_classifier"))
    )


def _build_torchvision(name: str, num_classes: int, pretrained: bool, aux_loss: bool) -> BuiltModel:
    kwargs = {"aux_loss": aux_loss} if has_aux_head(name) else {}
    builder = tvm.get_model_builder(name)
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    head = _heads(model, num_classes)
    if pretrained:
        weights_enum = _torchvision_default_weights(name)
        if weights_enum is None:
            raise WeightsError(f"model.weights: torchvision model '{name}' has no pretrained weights")
        state = weights_enum.get_state_dict(progress=False, check_hash=True)
        if not aux_loss:
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
        load_weights(model, state, head)
    defaults = {"input_size": (3, 520, 520), "interpolation": "bilinear", "crop_pct": 1.0, **_IMAGENET}
    return BuiltModel(model, name, "torchvision", head, defaults)


# ----------------------------------------------------------------------------- U-Net


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder features (finest to coarsest) merged top-down: upsample, concatenate the skip,
    two 3x3 convs; a 1x1 classifier; logits upsampled to the input size."""

    def __init__(self, encoder: nn.Module, num_classes: int, width: int = 64):
        super().__init__()
        self.encoder = encoder
        channels = encoder.feature_info.channels()
        self.bottleneck = _conv_block(channels[-1], width)
        self.decoder = nn.ModuleList(_conv_block(width + c, width) for c in reversed(channels[:-1]))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = self.bottleneck(features[-1])
        for skip, block in zip(reversed(features[:-1]), self.decoder, strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], 1))
        return F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _build_unet(name: str, num_classes: int, pretrained: bool, img_size: int | None = None) -> BuiltModel:
    encoder_name = name.removeprefix(UNET_PREFIX)
    try:
        encoder = timm.create_model(
            encoder_name, pretrained=pretrained, features_only=True, **size_kwargs(encoder_name, img_size)
        )
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise ValueError(f"model.name: '{encoder_name}' cannot serve as a U-Net encoder ({exc})") from exc
        raise WeightsError(f"model.weights: cannot load hub weights for '{encoder_name}' ({exc})") from exc
    defaults = dict(timm.data.resolve_data_config({}, model=encoder))
    defaults["crop_pct"] = 1.0
    return BuiltModel(UNet(encoder, num_classes), name, "timm", ("classifier",), defaults)
