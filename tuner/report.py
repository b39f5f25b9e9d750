"""After the sweep: one row per trial from Tune's state and each trial's metrics.csv, then the
outputs in RUN_DIR/tune (results.csv, best_config.yaml, best/, plots/) and the summary table."""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.table import Table

from trainer.commands.run_plots import write_plots
from trainer.components import checkpoint as ckpt
from trainer.components.runlog import read_metrics_csv, read_text, write_text
from trainer.config import VftConfig, build_config, merge, to_yaml
from trainer.driver import TrainSummary, best_row
from tuner import plots
from tuner.progress import error_line
from tuner.space import Space
from tuner.sweep import SweepRun

DONE = "TERMINATED"


@dataclass
class TrialRow:
    trial_id: str
    status: str
    params: dict
    run_dir: str
    history: list[dict] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    checkpoint_value: float | None = None
    stopped_by: str = ""
    error: str = ""

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def succeeded(self) -> bool:
        return self.status == DONE and bool(self.history)


@dataclass
class SweepSummary:
    name: str
    metric: str
    mode: str
    tune_dir: str
    trials: list[TrialRow]
    best: TrialRow | None
    wall_s: float
    concurrent: int

    @property
    def succeeded(self) -> int:
        return sum(t.succeeded for t in self.trials)


# ----------------------------------------------------------------------------- trial rows


def collect(cfg: VftConfig, space: Space, run: SweepRun) -> SweepSummary:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(run.experiment)
    rows = [trial_row(trial, run.tune_dir, space, cfg) for trial in analysis.trials]
    rows.sort(key=lambda row: rank_key(row, space.mode))
    pick = [row for row in rows if row.succeeded and row.checkpoint_value is not None]
    best = min(pick, key=lambda r: _signed(r.checkpoint_value, space.mode), default=None)
    return SweepSummary(
        cfg.run.name, space.metric, space.mode, run.tune_dir, rows, best, run.wall_s, run.concurrent
    )


def trial_row(trial, tune_dir: str, space: Space, cfg: VftConfig) -> TrialRow:
    run_dir = ckpt.join(tune_dir, "trials", trial.trial_id)
    params = {key: trial.config.get(key) for key in space.params}
    row = TrialRow(trial.trial_id, trial.status, params, run_dir)
    row.history = read_metrics_csv(ckpt.join(run_dir, "metrics.csv"))
    values = [(r[space.metric], r["epoch"]) for r in row.history if _finite(r.get(space.metric))]
    if values:
        row.best, row.best_epoch = min(values, key=lambda v: _signed(v[0], space.mode))
    meta = read_text(ckpt.join(run_dir, "best", ckpt.META_FILE))
    if meta:
        row.checkpoint_value = json.loads(meta)["monitor"]["value"]
    planned = int(params.get("train.epochs") or cfg.train.epochs)
    last = trial.last_result or {}
    if row.status == DONE and row.epochs < planned:
        row.stopped_by = "early stopping" if last.get("stopped") else space.scheduler.name
    if row.status == "ERROR":
        row.error = error_line(trial.get_error() or "")
    return row


def rank_key(row: TrialRow, mode: str) -> tuple:
    return (not row.succeeded, row.best is None, _signed(row.best, mode) if row.best is not None else 0.0)


def _signed(value: float, mode: str) -> float:
    return -value if mode == "max" else value


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# ----------------------------------------------------------------------------- outputs


def write_outputs(summary: SweepSummary, cfg: VftConfig, space: Space) -> dict[str, str]:
    """results.csv, best_config.yaml, best/ and plots/; returns what was written."""
    out = {"results": ckpt.join(summary.tune_dir, "results.csv")}
    write_text(out["results"], results_csv(summary, space))
    if summary.best is not None:
        out["best_config"] = ckpt.join(summary.tune_dir, "best_config.yaml")
        write_text(out["best_config"], best_config_text(summary.best, cfg))
        out["best"] = ckpt.join(summary.tune_dir, "best")
        copy_best_run(summary.best, out["best"], summary.metric)
    out["plots"] = ckpt.join(summary.tune_dir, "plots")
    write_sweep_plots(summary, space, out["plots"])
    return out


def results_csv(summary: SweepSummary, space: Space) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = ["trial_id", "status", "epochs", "best_epoch", summary.metric]
    writer.writerow([*columns, *space.params, "stopped_by", "error"])
    for t in summary.trials:
        best = "" if t.best is None else f"{t.best:.6g}"
        first = [t.trial_id, t.status, t.epochs, t.best_epoch or "", best]
        writer.writerow([*first, *t.params.values(), t.stopped_by, t.error])
    return buffer.getvalue()


def best_config_text(best: TrialRow, cfg: VftConfig) -> str:
    """The best trial's config as a train config of its own: same storage, run name <name>-best."""
    raw = yaml.safe_load(read_text(ckpt.join(best.run_dir, "config.yaml")))
    raw = merge(raw, {"run": {"name": f"{cfg.run.name}-best", "storage": cfg.run.storage}})
    return to_yaml(build_config(raw))


def copy_best_run(best: TrialRow, dest: str, metric: str) -> None:
    """The best trial's run directory without Ray's own checkpoint folders, plus its plots."""
    with tempfile.TemporaryDirectory(prefix="vft-best-") as tmp:
        for name in ("best", "last", "config.yaml", "metrics.csv"):
            _fetch(ckpt.join(best.run_dir, name), Path(tmp, name))
        ckpt.publish(tmp, dest)
    trial_cfg = build_config(yaml.safe_load(read_text(ckpt.join(dest, "config.yaml"))))
    mode = trial_cfg.train.mode
    summary = TrainSummary(dest, best.history, best_row(best.history, metric, mode), 0.0, False)
    write_plots(summary, trial_cfg)


def _fetch(uri: str, local: Path) -> None:
    if ckpt.is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            local.mkdir(parents=True)
            pafs.copy_files(uri, str(local))
        elif info.type == pafs.FileType.File:
            pafs.copy_files(uri, str(local))
        return
    import shutil

    source = Path(uri)
    if source.is_dir():
        shutil.copytree(source, local)
    elif source.is_file():
        shutil.copy2(source, local)


def write_sweep_plots(summary: SweepSummary, space: Space, dest: str) -> None:
    best_id = summary.best.trial_id if summary.best else None
    with tempfile.TemporaryDirectory(prefix="vft-plots-") as tmp:
        plots.metric_vs_epoch(summary.trials, summary.metric, Path(tmp, "metric_vs_epoch.png"), best_id)
        for key, dist in space.params.items():
            path = Path(tmp, plots.plot_name(key))
            plots.metric_vs_param(summary.trials, key, dist.kind == "loguniform", summary.metric, path)
        ckpt.publish(tmp, dest)


# ----------------------------------------------------------------------------- the table


def summary_table(summary: SweepSummary, space: Space, outputs: dict[str, str]) -> Table:
    errored = sum(t.status == "ERROR" for t in summary.trials)
    stopped = sum(bool(t.stopped_by) for t in summary.trials)
    title = (
        f"vft tune: {summary.name} — {len(summary.trials)} trials, {summary.succeeded} finished "
        f"({stopped} stopped early), {errored} failed, {summary.wall_s:.0f} s"
    )
    table = Table(title=title)
    for column in ("trial", "status", "epochs", summary.metric, *space.params, "note"):
        table.add_column(column, justify="right" if column in ("epochs", summary.metric) else "left")
    for t in summary.trials:
        star = "★ " if summary.best is t else ""
        note = t.error if t.status == "ERROR" else (f"stopped by {t.stopped_by}" if t.stopped_by else "")
        table.add_row(
            f"{star}{t.trial_id}",
            t.status.lower(),
            str(t.epochs),
            "-" if t.best is None else f"{t.best:.4f}",
            *(_cell(v) for v in t.params.values()),
            note[:80],
        )
    lines = [f"{label}: {path}" for label, path in outputs.items()]
    table.caption = "\n".join(lines)
    table.caption_justify = "left"
    return table


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
