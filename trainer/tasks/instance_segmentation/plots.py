"""The instance segmentation prediction plot: validation images with their truth and predicted
objects, one colour per object."""

from __future__ import annotations

from pathlib import Path

from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from trainer.components.plots import grid, plt, to_uint8, upscale


def instance_predictions(
    images: list,
    preds: list[dict],
    targets: list[dict],
    classes: list[str],
    path: str | Path,
    min_score: float = 0.5,
) -> None:
    """Per image: the truth objects, then the predictions at score >= `min_score` (masks and
    boxes, `class score`). Labels are class indices (0-based); masks (k, H, W) bool."""
    colours = plt.get_cmap("tab10")
    panels = []
    for image, pred, target in zip(images, preds, targets, strict=True):
        keep = pred["scores"] >= min_score
        picture = to_uint8(image)
        for caption, masks, boxes, labels in (
            (f"{len(target['masks'])} true", target["masks"], target["boxes"], None),
            (f"{int(keep.sum())} found", pred["masks"][keep], pred["boxes"][keep], pred["labels"][keep]),
        ):
            big, big_boxes, big_masks = upscale(picture, boxes, masks.bool())
            rgb = [tuple(int(255 * c) for c in colours(k % 10)[:3]) for k in range(len(big_masks))]
            if len(big_masks):  # torchvision warns on an empty mask or box list
                big = draw_segmentation_masks(big, big_masks, alpha=0.5, colors=rgb)
                names = None
                if labels is not None:
                    names = [
                        f"{classes[int(k)]} {float(s):.2f}"
                        for k, s in zip(labels, pred["scores"][keep], strict=True)
                    ]
                big = draw_bounding_boxes(big, big_boxes, names, colors=rgb, width=1)
            panels.append((caption, big))
    grid(panels, 4, path, f"objects: truth, then predictions (score >= {min_score})")
