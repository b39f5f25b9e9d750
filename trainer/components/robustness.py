"""Robustness building blocks: image corruptions in the style of ImageNet-C (Hendrycks &
Dietterich, 2019) by registered name, L-inf adversarial attacks (FGSM, PGD) and calibration
(ECE, reliability bins).

Corruptions act on float images in [0, 1] (N x 3 x H x W) at severities 1..5 and use
torchvision's and kornia's operations. The severities follow ImageNet-C's parameters at
224 px; spatial ones (blur, motion) scale with sqrt(side / 224) so that small images are not
erased at severity 1. Attacks perturb the same [0, 1] pixels, through the model's own
normalisation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from trainer.registry import Registry

CORRUPTIONS = Registry("corruption", __name__)
SEVERITIES = (1, 2, 3, 4, 5)
# a light set for `train.robust_val`: one of each family, middle severity
ROBUST_VAL_SET = (("gaussian_noise", 3), ("gaussian_blur", 3), ("contrast", 3), ("jpeg_compression", 3))


def _spatial(images: torch.Tensor) -> float:
    return math.sqrt(min(images.shape[-2:]) / 224)


def _clamp(images: torch.Tensor) -> torch.Tensor:
    return images.clamp_(0.0, 1.0)


@CORRUPTIONS.register("gaussian_noise")
def gaussian_noise(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    noise = torch.randn(images.shape, generator=gen, device=images.device)
    return _clamp(images + sigma * noise)


@CORRUPTIONS.register("shot_noise")
def shot_noise(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    photons = (60.0, 25.0, 12.0, 5.0, 3.0)[severity - 1]
    return _clamp(torch.poisson(images * photons, generator=gen) / photons)


@CORRUPTIONS.register("gaussian_blur")
def gaussian_blur(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    sigma = (1.0, 2.0, 3.0, 4.0, 6.0)[severity - 1] * _spatial(images)
    kernel = 2 * math.ceil(3 * sigma) + 1
    return _clamp(TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma]))


@CORRUPTIONS.register("motion_blur")
def motion_blur(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    from kornia.filters import motion_blur as kornia_motion_blur

    length = (7, 11, 15, 21, 27)[severity - 1] * _spatial(images)
    kernel = max(3, 2 * round(length / 2) + 1)
    angle = torch.rand(images.shape[0], generator=gen, device=images.device) * 90 - 45
    direction = torch.zeros(images.shape[0], device=images.device)
    return _clamp(kornia_motion_blur(images, kernel, angle, direction, border_type="replicate"))


@CORRUPTIONS.register("brightness")
def brightness(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    from kornia.color import hsv_to_rgb, rgb_to_hsv

    shift = (0.1, 0.2, 0.3, 0.4, 0.5)[severity - 1]
    hsv = rgb_to_hsv(images)
    hsv[:, 2] = (hsv[:, 2] + shift).clamp(0, 1)
    return _clamp(hsv_to_rgb(hsv))


@CORRUPTIONS.register("contrast")
def contrast(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    factor = (0.4, 0.3, 0.2, 0.1, 0.05)[severity - 1]
    return _clamp(TF.adjust_contrast(images, factor))


@CORRUPTIONS.register("jpeg_compression")
def jpeg_compression(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Re-encoded by Pillow at ImageNet-C's qualities, as ImageNet-C itself does."""
    quality = (25, 18, 15, 10, 7)[severity - 1]
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(images.device, torch.float32) / 255


@CORRUPTIONS.register("pixelate")
def pixelate(images: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    factor = (0.6, 0.5, 0.4, 0.3, 0.25)[severity - 1]
    h, w = images.shape[-2:]
    small = TF.resize(images, [max(1, int(h * factor)), max(1, int(w * factor))], antialias=True)
    return _clamp(TF.resize(small, [h, w], interpolation=TF.InterpolationMode.NEAREST))


def list_corruptions(pattern: str | None = None) -> list[str]:
    return CORRUPTIONS.names(pattern)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """`images` in [0, 1] corrupted by `name` at `severity` (1..5), reproducibly for `seed`."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity: {severity} is not one of {SEVERITIES}")
    gen = torch.Generator(device=images.device).manual_seed(seed)
    return CORRUPTIONS.get(name)(images.clone(), severity, gen)


# ----------------------------------------------------------------------------- pixels <-> model input


class Normalizer:
    """Between [0, 1] pixels and the model's normalised input (meta.json's mean and std)."""

    def __init__(self, mean, std, device: torch.device | str = "cpu"):
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def to_pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs * self.std + self.mean).clamp(0.0, 1.0)

    def to_inputs(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def corrupt(self, inputs: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
        """Normalised inputs corrupted in [0, 1] pixel space (see `corrupt`), normalised again."""
        return self.to_inputs(corrupt(self.to_pixels(inputs), name, severity, seed))


# ----------------------------------------------------------------------------- adversarial


def fgsm(
    model: nn.Module, norm: Normalizer, pixels: torch.Tensor, labels: torch.Tensor, eps: float
) -> torch.Tensor:
    """One signed-gradient step of size eps on the cross-entropy loss (Goodfellow et al.)."""
    return pgd(model, norm, pixels, labels, eps, steps=1, step_size=eps, random_start=False)


def pgd(
    model: nn.Module,
    norm: Normalizer,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent in the L-inf ball of radius eps around `pixels` (Madry et
    al.), staying in [0, 1]. Returns the adversarial pixels."""
    if eps <= 0:
        return pixels.clone()
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    adv = pixels.clone()
    if random_start:
        noise = torch.rand(pixels.shape, generator=gen, device=pixels.device)
        adv = (adv + (noise * 2 - 1) * eps).clamp(0.0, 1.0)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(norm.to_inputs(adv)), labels)
            (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step_size * grad.sign()
        adv = torch.min(torch.max(adv, pixels - eps), pixels + eps).clamp(0.0, 1.0)
    return adv.detach()


ATTACKS: dict[str, Callable[..., torch.Tensor]] = {"fgsm": fgsm, "pgd": pgd}


# ----------------------------------------------------------------------------- calibration


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (L1) over equal-width confidence bins, by torchmetrics."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(probs, labels, probs.shape[1], n_bins=n_bins, norm="l1"))


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[dict]:
    """Per confidence bin: range, count, mean confidence and accuracy (for the diagram)."""
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    bins = []
    for i in range(n_bins):
        lo, hi = float(edges[i]), float(edges[i + 1])
        inside = (confidence > lo) & (confidence <= hi) if i else (confidence >= lo) & (confidence <= hi)
        count = int(inside.sum())
        bins.append({
            "lo": lo, "hi": hi, "count": count,
            "confidence": float(confidence[inside].mean()) if count else None,
            "accuracy": float(correct[inside].mean()) if count else None,
        })  # fmt: skip
    return bins
