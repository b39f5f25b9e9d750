"""The detection prediction plot: validation images with truth and predicted boxes."""

from __future__ import annotations

from pathlib import Path

from torchvision.utils import draw_bounding_boxes

from trainer.components.plots import grid, plt, to_uint8, upscale


def detection_predictions(
    images: list,
    preds: list[dict],
    targets: list[dict],
    classes: list[str],
    path: str | Path,
    min_score: float = 0.5,
) -> None:
    """Validation images with truth boxes (white) and predictions at score >= `min_score`
    (coloured, `class score`). Labels are class indices (0-based)."""
    colours = plt.get_cmap("tab10")
    panels = []
    for image, pred, target in zip(images, preds, targets, strict=True):
        keep = pred["scores"] >= min_score
        picture, truth, _ = upscale(to_uint8(image), target["boxes"])
        _, boxes, _ = upscale(image, pred["boxes"][keep])
        if len(truth):  # torchvision warns on an empty box list
            picture = draw_bounding_boxes(picture, truth, colors="white", width=1)
        labels = [
            f"{classes[int(k)]} {float(s):.2f}"
            for k, s in zip(pred["labels"][keep], pred["scores"][keep], strict=True)
        ]
        rgb = [tuple(int(255 * c) for c in colours(int(k) % 10)[:3]) for k in pred["labels"][keep]]
        if len(boxes):
            picture = draw_bounding_boxes(picture, boxes, labels, colors=rgb, width=2)
        panels.append((f"{int(keep.sum())} found, {len(target['boxes'])} true", picture))
    grid(panels, 4, path, f"predicted boxes (score >= {min_score}), truth in white")
