"""The plots of a finished run (`RUN_DIR/plots/`), drawn by the process that ran `vft train`
or `vft tune`: learning curves, the confusion matrix, the best checkpoint's predictions.

Kept out of `trainer.driver`, which every Tune trial's process imports: matplotlib and the
model zoo are only needed here, once, after the run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from trainer.components import checkpoint as ckpt
from trainer.components import plots
from trainer.components.remote_data import localize
from trainer.config import VftConfig
from trainer.console import err
from trainer.driver import TrainSummary
from trainer.tasks.base import get_task, model_from_checkpoint


def write_plots(summary: TrainSummary, cfg: VftConfig) -> dict[str, bytes]:
    """Draws RUN_DIR/plots/*.png; returns them (file name -> PNG) for the tracker."""
    if not summary.history:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        plots.learning_curves(summary.history, cfg.train.monitor, Path(tmp, "learning_curves.png"))
        best_dir = ckpt.join(summary.run_dir, "best")
        if not ckpt.is_remote(best_dir) and Path(best_dir, ckpt.META_FILE).is_file():
            meta = ckpt.read_meta(best_dir)
            if "confusion" in meta["metrics"]:
                plots.confusion_matrix(
                    meta["metrics"]["confusion"],
                    meta["classes"],
                    Path(tmp, "confusion_matrix.png"),
                    f"validation, epoch {meta['epoch']}",
                )
            prediction_plot(cfg, best_dir, Path(tmp, "predictions.png"))
        plots_dir = ckpt.join(summary.run_dir, "plots")
        if ckpt.is_remote(plots_dir):
            import pyarrow.fs as pafs

            pafs.copy_files(tmp, plots_dir)
        else:
            Path(plots_dir).mkdir(parents=True, exist_ok=True)
            for png in Path(tmp).glob("*.png"):
                Path(plots_dir, png.name).write_bytes(png.read_bytes())
        return {png.name: png.read_bytes() for png in sorted(Path(tmp).glob("*.png"))}


def prediction_plot(cfg: VftConfig, best_dir: str, path: Path) -> None:
    """The best checkpoint's predictions on the first validation images (detection boxes,
    segmentation overlays), rebuilt from its meta.json like a third party would."""
    task = get_task(cfg.task)
    if not task.draws_predictions:
        return
    try:
        model, meta = model_from_checkpoint(best_dir)
        local = cfg.with_data_paths(localize)
        val = task.build_datasets(local, task.read_data(local), task.preprocessing_from_meta(meta))[1]
        task.plot_predictions(model, meta, val, path)
    except Exception as exc:  # noqa: BLE001 - a plot never fails a finished run
        err.print(f"[yellow]plots/predictions.png not drawn: {exc}")
