"""Losses by name. Cross-entropy takes class indices or soft targets (MixUp/CutMix), or per-pixel
class indices (segmentation, `ignore_index` pixels left out); Dice, CE+Dice and BCE+Dice are
the segmentation losses. `OutputLoss` adapts a criterion to the task interface's
`loss(model, images, targets)`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.registry import LOSSES

SEGMENTATION_ONLY = ("dice", "ce_dice", "bce_dice")
CLASSIFICATION_ONLY = ("bce", "focal")


class OutputLoss:
    """`loss(model, images, targets)` for models whose outputs the criterion scores directly."""

    def __init__(self, criterion: nn.Module):
        self.criterion = criterion

    def __call__(self, model: nn.Module, images, targets) -> torch.Tensor:
        return self.criterion(model(images), targets)

    def on_outputs(self, outputs, targets) -> torch.Tensor:
        return self.criterion(outputs, targets)


@LOSSES.register("cross_entropy")
def cross_entropy(label_smoothing: float = 0.0, ignore_index: int = -100, **_) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing, ignore_index=ignore_index)


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


# ----------------------------------------------------------------------------- segmentation


def _valid_one_hot(target: torch.Tensor, num_classes: int, ignore_index: int):
    """One-hot (B, C, H, W) of per-pixel class indices, and the (B, 1, H, W) mask of counted pixels."""
    valid = target != ignore_index
    hot = F.one_hot(torch.where(valid, target, 0), num_classes).permute(0, 3, 1, 2).float()
    return hot, valid.unsqueeze(1).float()


def soft_dice(probs: torch.Tensor, hot: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of 2|P∩T| / (|P| + |T|), over the valid pixels of the batch."""
    dims = (0, 2, 3)
    inter = (probs * hot * valid).sum(dims)
    total = (probs * valid).sum(dims) + (hot * valid).sum(dims)
    return 1 - ((2 * inter + eps) / (total + eps)).mean()


class DiceLoss(nn.Module):
    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hot, valid = _valid_one_hot(target, logits.shape[1], self.ignore_index)
        return soft_dice(logits.float().softmax(1), hot, valid)


class CeDiceLoss(nn.Module):
    def __init__(self, ignore_index: int = 255, label_smoothing: float = 0.0):
        super().__init__()
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=label_smoothing)
        self.dice = DiceLoss(ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice(logits, target)


class BceDiceLoss(nn.Module):
    """Binary segmentation (background 0, foreground 1): BCE plus Dice on the foreground. Takes
    one logit channel, or two (foreground logit = their difference, as softmax would give)."""

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        fg = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits[:, 0]
        valid = (target != self.ignore_index).float()
        truth = (target == 1).float()
        bce = F.binary_cross_entropy_with_logits(fg, truth, weight=valid, reduction="sum")
        bce = bce / valid.sum().clamp(min=1)
        probs = torch.sigmoid(fg)
        inter, total = (probs * truth * valid).sum(), ((probs + truth) * valid).sum()
        return bce + 1 - (2 * inter + 1) / (total + 1)


@LOSSES.register("dice")
def dice(ignore_index: int = 255, **_) -> nn.Module:
    return DiceLoss(ignore_index)


@LOSSES.register("ce_dice")
def ce_dice(ignore_index: int = 255, label_smoothing: float = 0.0, **_) -> nn.Module:
    return CeDiceLoss(ignore_index, label_smoothing)


@LOSSES.register("bce_dice")
def bce_dice(ignore_index: int = 255, **_) -> nn.Module:
    return BceDiceLoss(ignore_index)


def create_loss(
    name: str,
    multilabel: bool,
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    ignore_index: int = -100,
) -> nn.Module:
    if name == "auto":
        name = "bce" if multilabel else "cross_entropy"
    return LOSSES.get(name)(
        label_smoothing=label_smoothing, focal_gamma=focal_gamma, ignore_index=ignore_index
    )
