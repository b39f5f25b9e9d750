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
