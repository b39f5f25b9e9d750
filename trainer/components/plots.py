"""PNG plots for RUN_DIR/plots: learning curves and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def learning_curves(history: list[dict], monitor: str, path: str | Path) -> None:
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(epochs, [row["train/loss"] for row in history], "o-", label="train/loss")
    if "val/loss" in history[0]:  # detectors report no validation loss
        axes[0].plot(epochs, [row["val/loss"] for row in history], "o-", label="val/loss")
    axes[0].set_title("loss")
    scores = sorted(k for k in history[0] if k.startswith("val/") and k != "val/loss")
    for key in scores:
        axes[1].plot(
            epochs, [row[key] for row in history], "o-", label=key, linewidth=2.5 if key == monitor else 1
        )
    axes[1].set_title(f"validation (monitor: {monitor})")
    axes[2].plot(epochs, [row["lr"] for row in history], "o-")
    axes[2].set_title("learning rate (largest group)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> None:
    n = len(classes)
    size = min(max(4.0, 0.5 * n + 2), 20)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), classes, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    if n <= 20:
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    color="white" if value > peak / 2 else "black",
                    fontsize=8,
                )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_diagram(bins: list[dict], ece: float, path: str | Path) -> None:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    fig, ax = plt.subplots(figsize=(5, 5))
    used = [b for b in bins if b["count"]]
    centres = [(b["lo"] + b["hi"]) / 2 for b in used]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    ax.bar(centres, [b["accuracy"] for b in used], width=width * 0.95, edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot(centres, [b["confidence"] for b in used], "o", color="red", label="mean confidence")
    ax.set(
        xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"reliability (ECE {ece:.3f})"
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def corruption_heatmap(table: dict[str, dict[str, float]], path: str | Path, label: str = "top-1") -> None:
    """The metric (`label`, default top-1) per corruption (rows) and severity (columns)."""
    names = list(table)
    severities = list(next(iter(table.values())))
    values = [[table[n][s] for s in severities] for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(severities) + 3, 0.5 * len(names) + 1.5))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, label=label)
    ax.set_xticks(range(len(severities)), [f"severity {s}" for s in severities])
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(f"{label} under corruption")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def accuracy_vs_eps(table: dict[str, dict[str, float]], path: str | Path) -> None:
    """Top-1 against the L-inf budget, one line per attack."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for attack, row in table.items():
        eps = [float(e) * 255 for e in row]
        ax.plot(eps, list(row.values()), "o-", label=attack)
    ax.set(xlabel="eps (x 1/255)", ylabel="top-1", ylim=(0, 1.02), title="accuracy under attack (L-inf)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def grid(panels: list[tuple[str, object]], columns: int, path: str | Path, title: str) -> None:
    """Images (uint8 (3, H, W) tensors) with captions in a grid."""
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (caption, image) in zip(axes.flat, panels, strict=False):
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_uint8(image) -> object:
    import torch

    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def upscale(image, boxes=None, masks=None, target: int = 192):
    """Small images scaled up (nearest) so labels stay readable; boxes scaled with them."""
    import torch
    import torch.nn.functional as F

    factor = max(1, target // max(image.shape[-2:]))
    if factor == 1:
        return image, boxes, masks
    image = F.interpolate(image[None].float(), scale_factor=factor, mode="nearest")[0].to(image.dtype)
    if masks is not None and len(masks):
        masks = F.interpolate(masks[None].float(), scale_factor=factor, mode="nearest")[0].bool()
    elif masks is not None:  # no objects: an empty stack of the upscaled size
        masks = masks.new_zeros((0, *image.shape[-2:]), dtype=torch.bool)
    return image, None if boxes is None else boxes * factor, masks
