"""The segmentation prediction plot: validation images with truth and predicted masks."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import draw_segmentation_masks

from trainer.components.plots import grid, plt, to_uint8, upscale


def segmentation_overlays(
    images: list, preds: list, targets: list, classes: list[str], path: str | Path
) -> None:
    """Per validation image: the image, the truth overlay and the prediction overlay (one
    colour per class; background class 0 and ignored pixels left clear)."""
    colours = [tuple(int(255 * c) for c in plt.get_cmap("tab10")(k % 10)[:3]) for k in range(len(classes))]
    panels = []
    for image, pred, target in zip(images, preds, targets, strict=True):
        picture = to_uint8(image)
        panels.append(("image", upscale(picture)[0]))
        for caption, mask in (("truth", target), ("prediction", pred)):
            masks = torch.stack([mask == k for k in range(1, len(classes))])
            big, _, big_masks = upscale(picture, masks=masks)
            panels.append((caption, draw_segmentation_masks(big, big_masks, alpha=0.5, colors=colours[1:])))
    grid(panels, 3, path, "segmentation: truth and prediction, " + ", ".join(classes[1:8]))
