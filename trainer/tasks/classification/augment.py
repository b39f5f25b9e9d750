"""Classification-only augmentation: AutoAugment policies and RandomErasing around the shared
train transform, and MixUp/CutMix on whole batches (soft targets)."""

from __future__ import annotations

from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T


def policy_ops(aug) -> tuple:
    """RandAugment or TrivialAugmentWide (image only, before normalisation), or nothing."""
    if aug.auto_augment == "randaugment":
        return (
            T.RandAugment(
                num_ops=aug.randaugment_ops,
                magnitude=aug.randaugment_magnitude,
                interpolation=InterpolationMode.BILINEAR,
            ),
        )
    if aug.auto_augment == "trivialaugment":
        return (T.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR),)
    return ()


def erasing_ops(aug) -> tuple:
    return (T.RandomErasing(p=aug.random_erasing, value=0),) if aug.random_erasing else ()


def batch_mix(aug, num_classes: int):
    """MixUp and/or CutMix on a batch (one of them per batch), or None."""
    mixes = []
    if aug.mixup_alpha:
        mixes.append(T.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
    if aug.cutmix_alpha:
        mixes.append(T.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else T.RandomChoice(mixes)
