"""A timm encoder (`features_only`) under torchvision's FeaturePyramidNetwork: the backbone that
torchvision's detectors (Faster R-CNN, Mask R-CNN, RetinaNet, FCOS) take in place of their
ResNet + FPN, for the tasks that build `<detector>_timm_<encoder>` models."""

from __future__ import annotations

from collections import OrderedDict

import timm
import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from trainer.components.models import dynamic_size_kwargs
from trainer.errors import WeightsError


class TimmFpn(nn.Module):
    """A timm encoder's feature maps through torchvision's FeaturePyramidNetwork."""

    def __init__(self, encoder: nn.Module, out_channels: int, extra: nn.Module):
        super().__init__()
        self.body = encoder
        self.fpn = FeaturePyramidNetwork(encoder.feature_info.channels(), out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        features = self.body(x)
        if str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC"):  # Swin's feature maps
            features = [f.permute(0, 3, 1, 2) for f in features]
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def timm_fpn(encoder_name: str, pretrained: bool, levels: int, channels: int, p6p7: bool) -> TimmFpn:
    """The top `levels` feature maps of `encoder_name` under an FPN of `channels`, with a max-pool
    level (Faster/Mask R-CNN) or P6/P7 (`p6p7`: RetinaNet, FCOS) on top. A ValueError for an
    encoder without feature maps, a WeightsError when its hub weights cannot be loaded."""
    try:
        # images of any size reach the encoder (resized by aspect, padded to 32): size-dependent
        # encoders (ViT, Swin) resample their position embeddings or pad their windows per input
        dynamic = dynamic_size_kwargs(encoder_name)
        with torch.device("meta"):
            count = len(timm.create_model(encoder_name, features_only=True, **dynamic).feature_info)
        indices = tuple(range(max(count - levels, 0), count))
        encoder = timm.create_model(
            encoder_name, pretrained=pretrained, features_only=True, out_indices=indices, **dynamic
        )
    except (OSError, RuntimeError, ValueError, IndexError) as exc:
        if not pretrained:
            raise ValueError(
                f"model.name: '{encoder_name}' cannot serve as a detection backbone ({exc})"
            ) from exc
        raise WeightsError(f"model.weights: cannot load hub weights for '{encoder_name}' ({exc})") from exc
    extra = LastLevelP6P7(channels, channels) if p6p7 else LastLevelMaxPool()
    return TimmFpn(encoder, channels, extra)


def timm_normalization(backbone: TimmFpn) -> dict:
    """The encoder's mean/std as torchvision detectors' `image_mean`/`image_std` arguments."""
    data = timm.data.resolve_data_config({}, model=backbone.body)
    return {"image_mean": list(data["mean"]), "image_std": list(data["std"])}
