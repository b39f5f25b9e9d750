"""A sweep in MLflow: one parent run per sweep, each trial's run its child.

The parent is created before the trials start (RUN_DIR/tune/tracking.json keeps its id, so a
resumed sweep continues it) with the base config and the search space as params and the
datasets' identity; each trial's own tracker (trainer.driver, in the trial's process) logs the
trial's params and epochs under it. At the end every child gets its trial's final state (a trial
whose process died is marked FAILED with its error) and the epochs its process could not log
(from its metrics.csv), the best trial is tagged, and results.csv,
best_config.yaml and the sweep's plots are attached to the parent. Like every tracker, it never
fails the sweep: an error is one warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.components import checkpoint as ckpt
from trainer.components.runlog import read_bytes
from trainer.components.track_mlflow import (
    MlflowBackend,
    client,
    log_epoch,
    log_files,
    logged_epochs,
    read_state,
)
from trainer.components.tracking import TrackOptions, first_line, flatten
from trainer.config import VftConfig
from trainer.console import err
from trainer.engine.lineage import run_info
from tuner.space import Space

STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}  # Tune's trial states as MLflow's


def start_sweep(
    cfg: VftConfig, tune_dir: str, space: Space, resources: dict, datasets: list[dict]
) -> dict | None:
    """The sweep's parent run ({"uri", "run_id", ...}), or None without mlflow (or when the
    tracker fails: warned). ConfigError when the tracking URI cannot work with run.storage.
    `datasets`: trainer.engine.data_identity.datasets(cfg), computed by the command."""
    if "mlflow" not in cfg.track.backends():
        return None
    options = TrackOptions(["mlflow"], cfg.track.uri, cfg.track.experiment, cfg.run.storage, tune_dir)
    backend = MlflowBackend(options)
    try:
        info = run_info(cfg, tune_dir, resources, datasets)
        info.params |= flatten(space.model_dump(mode="json", exclude_none=True), "space.")
        info.tags |= {"vft.sweep": "true", "vft.search": space.search, "vft.scheduler": space.scheduler.name}
        backend.start(info)  # creates the run, or continues the one tracking.json names
        return read_state(tune_dir)
    except Exception as exc:  # noqa: BLE001 - a tracker never fails the sweep
        _warn(backend.where, exc)
        return None


def finish_sweep(parent: dict | None, summary: Any, outputs: dict[str, str]) -> None:
    """Each child run's final state and trial tags, the best trial tagged, the sweep's files
    attached to the parent, the parent ended. `summary`: tuner.report's SweepSummary (not
    imported: tuner.report draws plots, and tuner.sweep, which imports this module, must not
    load matplotlib)."""
    if parent is None:
        return
    try:
        mlflow = client(parent["uri"])
        for trial in summary.trials:
            state = read_state(trial.run_dir)
            if state is None:
                continue
            run_id, best = (
                state["run_id"],
                summary.best is not None and trial.trial_id == summary.best.trial_id,
            )
            tags = {
                "vft.trial_id": trial.trial_id,
                "vft.trial_status": trial.status,
                "vft.best": str(best).lower(),
            }
            tags |= {"vft.stopped_by": trial.stopped_by} if trial.stopped_by else {}
            tags |= {"vft.error": trial.error[:5000]} if trial.error else {}
            for key, value in tags.items():
                mlflow.set_tag(run_id, key, value)
            done = logged_epochs(mlflow, run_id)  # epochs a stopped trial's process had no time for
            for record in trial.history:
                if record["epoch"] > done:
                    log_epoch(mlflow, run_id, record)
            # Tune's verdict wins: a trial's own tracker cannot tell Tune stopping a finished (or
            # scheduler-stopped) trial from an interruption, and a killed process ends nothing
            final = STATUS.get(trial.status)
            if final and mlflow.get_run(run_id).info.status != final:
                mlflow.set_terminated(run_id, final)
        run_id = parent["run_id"]
        if summary.best is not None:
            mlflow.set_tag(run_id, "vft.best_trial", summary.best.trial_id)
            mlflow.log_metric(run_id, f"best/{summary.metric}", summary.best.checkpoint_value)
        mlflow.log_metric(run_id, "trials_succeeded", summary.succeeded)
        mlflow.log_metric(run_id, "trials", len(summary.trials))
        log_files(mlflow, run_id, sweep_files(outputs))
        mlflow.set_terminated(run_id, "FINISHED" if summary.succeeded else "FAILED")
    except Exception as exc:  # noqa: BLE001 - a tracker never fails the sweep
        _warn(parent["uri"], exc)


def sweep_files(outputs: dict[str, str]) -> dict[str, bytes]:
    files = {}
    for key in ("results", "best_config"):
        content = read_bytes(outputs[key]) if key in outputs else None
        if content is not None:
            files[Path(outputs[key]).name] = content
    plots = outputs.get("plots")
    if plots and not ckpt.is_remote(plots) and Path(plots).is_dir():
        files |= {f"plots/{png.name}": png.read_bytes() for png in sorted(Path(plots).glob("*.png"))}
    return files


def _warn(uri: str, exc: BaseException) -> None:
    why = f"{type(exc).__name__}: {first_line(exc)}"
    err.print(f"[yellow]tracking: mlflow at {uri} failed for the sweep run ({why})")
