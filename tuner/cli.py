"""`vft tune`: the console-script subcommand (registered through the `vft.commands` entry point)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler

from trainer.components.remote_data import localize
from trainer.config import load_config
from trainer.console import err, fail, out
from trainer.driver import run_tracker
from trainer.engine.assemble import check_qat
from trainer.engine.data_identity import datasets
from trainer.errors import VftError
from trainer.tasks.base import get_task
from tuner.report import collect, summary_table, write_outputs
from tuner.space import load_space
from tuner.sweep import SweepFailed, run_sweep, tune_dir_of
from tuner.tracking import finish_sweep


def tune(
    config: Path,
    space: Annotated[Path, typer.Option(help="the search space file (YAML)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local cluster)")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: the config file's name)")] = None,
    quiet: Annotated[bool, typer.Option(help="no per-trial progress lines")] = False,
) -> None:
    """Sweep hyperparameters with Ray Tune; each trial is a distributed training run. Running it
    again with the same name resumes the sweep."""
    try:
        cfg = load_config(config, overrides or [], name=name)
        sweep_space = load_space(space, cfg)
        # fail fast, before any cluster starts, on an unusable dataset (object storage: copied here)
        split = get_task(cfg.task).check_data(cfg.with_data_paths(localize))
        check_qat(cfg)
        tracked = run_tracker(cfg).enabled  # ConfigError: tracking that cannot work with run.storage
        identity = datasets(cfg, split) if tracked else []
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    show_progress(quiet)
    err.print(f"sweep dir: {tune_dir_of(cfg)}")
    try:
        run = run_sweep(cfg, sweep_space, address=address, datasets=identity)
    except SweepFailed as exc:
        fail(f"the sweep failed: {exc}", 1)
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    summary = collect(cfg, sweep_space, run)
    outputs = write_outputs(summary, cfg, sweep_space)
    finish_sweep(run.parent, summary, outputs)
    out.print(summary_table(summary, sweep_space, outputs))
    if not summary.succeeded:
        fail(f"no trial finished ({len(summary.trials)} trials; see {outputs['results']})", 1)


def show_progress(quiet: bool) -> None:
    logger = logging.getLogger("vft.tune")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    handler = RichHandler(console=err, show_path=False, show_level=False, markup=False)
    logger.addHandler(handler)
