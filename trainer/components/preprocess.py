"""One preprocessing definition per model, written into meta.json and used by training-time
evaluation, export checks and serving alike.

Eval: resize the shorter side to floor(size / crop_pct), center-crop `size`, scale to [0, 1],
normalize by mean/std, RGB, NCHW float32. Train: the same normalisation after torchvision
transforms.v2 augmentation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    @property
    def resize_size(self) -> int:
        return math.floor(self.input_size / self.crop_pct)

    def to_meta(self) -> dict:
        meta = asdict(self)
        meta.update(
            resize_size=self.resize_size,
            channel_order="RGB",
            layout="NCHW",
            steps=[
                f"resize shorter side to {self.resize_size} ({self.interpolation}, antialias)",
                f"center crop {self.input_size}x{self.input_size}",
                "scale to [0, 1]",
                "normalize (x - mean) / std",
            ],
        )
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocessing:
        return cls(
            input_size=int(meta["input_size"]),
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            interpolation=meta["interpolation"],
            crop_pct=float(meta["crop_pct"]),
        )


def resolve_preprocessing(
    model_defaults: dict,
    img_size: int | None = None,
    mean=None,
    std=None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> Preprocessing:
    """The model's pretrained config, with any explicit override winning."""
    interp = interpolation or model_defaults.get("interpolation", "bilinear")
    return Preprocessing(
        input_size=int(img_size or model_defaults["input_size"][-1]),
        mean=tuple(float(v) for v in (mean or model_defaults["mean"])),
        std=tuple(float(v) for v in (std or model_defaults["std"])),
        interpolation=interp if interp in _INTERP else "bilinear",
        crop_pct=float(crop_pct or model_defaults.get("crop_pct") or 0.875),
    )


def normalize_ops(p: Preprocessing) -> list:
    """uint8 [0, 255] to float [0, 1], then (x - mean) / std: per image, or on a whole batch."""
    return [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=list(p.mean), std=list(p.std))]


def eval_decode_side(p: Preprocessing) -> int:
    """The shorter side an image needs for `eval_transform` without upsampling."""
    return p.resize_size


def train_decode_side(p: Preprocessing, aug) -> int:
    """The shorter side an image needs so the smallest crop RandomResizedCrop can take (area
    `scale[0]`, the most extreme aspect in `ratio`) still covers `input_size` pixels."""
    narrowest = aug.scale[0] * min(aug.ratio[0], 1 / aug.ratio[1], 1.0)
    return math.ceil(p.input_size / math.sqrt(narrowest))


def eval_ops(p: Preprocessing) -> list:
    """Resize the shorter side and centre-crop (an image tensor or PIL image in, `input_size`
    square out, dtype kept)."""
    interp = _INTERP[p.interpolation]
    return [T.Resize(p.resize_size, interpolation=interp, antialias=True), T.CenterCrop(p.input_size)]


def eval_transform(p: Preprocessing) -> T.Compose:
    return T.Compose([T.ToImage(), *eval_ops(p), *normalize_ops(p)])


def train_ops(p: Preprocessing, aug, mask_fill: int | None = None) -> list:
    """The random geometry and colour of `aug` (the config's crop augmentation section, read
    here, by the builder, only): RandomResizedCrop, flips, rotation, colour jitter. Rotations
    interpolate bilinearly: tensors support no bicubic grid sampling."""
    interp = _INTERP[p.interpolation]
    steps: list = [
        T.RandomResizedCrop(
            p.input_size, scale=aug.scale, ratio=aug.ratio, interpolation=interp, antialias=True
        ),
    ]
    if aug.hflip:
        steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        steps.append(T.RandomVerticalFlip(aug.vflip))
    if aug.rotation:
        fill = 0 if mask_fill is None else {tv_tensors.Mask: mask_fill, "others": 0}
        steps.append(T.RandomRotation(aug.rotation, interpolation=InterpolationMode.BILINEAR, fill=fill))
    if aug.color_jitter:
        cj = aug.color_jitter
        steps.append(T.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    return steps


def train_transform(
    p: Preprocessing, aug, mask_fill: int | None = None, policy: tuple = (), after_normalize: tuple = ()
) -> T.Compose:
    """`train_ops`, then a task's image-only `policy` ops (e.g. RandAugment) before normalisation
    and `after_normalize` ops (e.g. RandomErasing).

    Joint: called with (image, tv_tensors.Mask) it crops, scales, flips and rotates both (masks
    by nearest neighbour; rotated-in mask pixels get `mask_fill`); colour changes and
    normalisation touch the image only."""
    steps = train_ops(p, aug, mask_fill)
    return T.Compose([T.ToImage(), *steps, *policy, *normalize_ops(p), *after_normalize])
