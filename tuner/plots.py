"""PNG plots for RUN_DIR/tune/plots: the metric against epoch per trial, and against each
parameter."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_name(key: str) -> str:
    return "param_" + re.sub(r"[^A-Za-z0-9._-]", "_", key) + ".png"


def metric_vs_epoch(trials: list, metric: str, path: str | Path, best_id: str | None) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for trial in trials:
        if not trial.history:
            continue
        epochs = [row["epoch"] for row in trial.history]
        values = [row.get(metric) for row in trial.history]
        best, failed = trial.trial_id == best_id, trial.status == "ERROR"
        ax.plot(
            epochs,
            values,
            marker="o" if best else ".",
            linestyle="--" if failed else "-",
            linewidth=2.5 if best else 1,
            label=trial.trial_id + (" (best)" if best else "") + (" (error)" if failed else ""),
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    ax.grid(alpha=0.3)
    if 0 < len(ax.lines) <= 16:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metric_vs_param(trials: list, key: str, log_scale: bool, metric: str, path: str | Path) -> None:
    """Each trial's best value against its parameter value; errored trials as crosses at the
    bottom of the axis."""
    done = [t for t in trials if t.best is not None and key in t.params]
    failed = [t for t in trials if t.best is None and key in t.params]
    numeric = all(isinstance(t.params[key], int | float) for t in done + failed)
    labels = sorted({str(t.params[key]) for t in done + failed})

    def x(trial) -> float:
        return trial.params[key] if numeric else labels.index(str(trial.params[key]))

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([x(t) for t in done], [t.best for t in done], label="best per trial")
    if numeric and log_scale:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels, rotation=30)
    if failed and done:
        floor = min(t.best for t in done)
        ax.scatter([x(t) for t in failed], [floor] * len(failed), marker="x", color="red", label="failed")
        ax.legend(fontsize=7)
    ax.set_xlabel(key)
    ax.set_ylabel(f"best {metric}")
    ax.set_title(f"{metric} against {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
