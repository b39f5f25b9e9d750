"""Losses by name. Cross-entropy takes class indices or soft targets (MixUp/CutMix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.registry import LOSSES


@LOSSES.register("cross_entropy")
def cross_entropy(label_smoothing: float = 0.0, **_) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


class SmoothedBCE(nn.Module):
    """Multilabel BCE-with-logits; label smoothing pulls targets towards 0.5."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float() * (1 - self.smoothing) + 0.5 * self.smoothing
        return F.binary_cross_entropy_with_logits(logits, target)


@LOSSES.register("bce")
def bce(label_smoothing: float = 0.0, **_) -> nn.Module:
    return SmoothedBCE(label_smoothing)


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017) on softmax probabilities."""

    def __init__(self, gamma: float = 2.0, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.smoothing = gamma, label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.smoothing)
        pt = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        return ((1 - pt) ** self.gamma * ce).mean()


@LOSSES.register("focal")
def focal(label_smoothing: float = 0.0, focal_gamma: float = 2.0, **_) -> nn.Module:
    return FocalLoss(focal_gamma, label_smoothing)


def create_loss(
    name: str, multilabel: bool, label_smoothing: float = 0.0, focal_gamma: float = 2.0
) -> nn.Module:
    if name == "auto":
        name = "bce" if multilabel else "cross_entropy"
    return LOSSES.get(name)(label_smoothing=label_smoothing, focal_gamma=focal_gamma)
