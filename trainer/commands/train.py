"""`vft train`: fine-tune on a Ray cluster (resuming RUN_DIR when it holds a checkpoint)."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Annotated

import typer

from trainer.commands.run_plots import write_plots
from trainer.components.remote_data import localize
from trainer.config import load_config
from trainer.console import err, fail, out
from trainer.driver import RunFailed, run_dir_of, run_tracker, summary_table, tracked_files
from trainer.driver import train as run_training
from trainer.engine.assemble import check_qat
from trainer.engine.data_identity import datasets
from trainer.errors import VftError
from trainer.tasks.base import get_task


def train(
    config: Path,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local cluster)")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: the config file's name)")] = None,
    quiet: Annotated[bool, typer.Option(help="no live progress")] = False,
) -> None:
    """Fine-tune on a Ray cluster; resumes RUN_DIR if it holds a checkpoint."""
    try:
        cfg = load_config(config, overrides or [], name=name)
        # fail fast, before any cluster starts, on an unusable dataset (object storage: copied here)
        split = get_task(cfg.task).check_data(cfg.with_data_paths(localize))
        check_qat(cfg)
        tracker = run_tracker(cfg)
        identity = datasets(cfg, split) if tracker.enabled else []
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    logging.basicConfig(level=logging.WARNING)
    err.print(f"run dir: {run_dir_of(cfg)}")
    try:
        summary = run_training(cfg, address=address, quiet=quiet, tracker=tracker, datasets=identity)
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        resume = f"interrupted: the same command resumes {run_dir_of(cfg)} from its last checkpoint"
        err.print(resume, soft_wrap=True, markup=False, highlight=False)
        raise typer.Exit(130) from None
    except RunFailed as exc:
        tracker.finish("FAILED")
        if isinstance(exc.worker_error, VftError):  # bad input found by a worker: its own exit code
            fail(str(exc.worker_error), exc.worker_error.exit_code)
        trace = "".join(traceback.format_exception(exc.worker_error)).rstrip()
        err.print(trace, highlight=False, markup=False)
        fail(f"training failed: {exc}", 1)
    plots = write_plots(summary, cfg)
    tracker.finish("FINISHED", tracked_files(summary.run_dir, plots))
    out.print(summary_table(summary, cfg))
