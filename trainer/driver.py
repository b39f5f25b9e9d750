"""The driver of `vft train`: start (or join) a Ray cluster, run TorchTrainer over the worker
entry point, show live progress, and return the run's summary (the command then writes its plots
and prints it). Each `vft tune` trial's process imports this module too, so it stays free of
matplotlib and the model zoo."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from trainer import errors
from trainer.components import checkpoint as ckpt
from trainer.components import remote_data
from trainer.components.runlog import read_bytes, read_metrics_csv, write_text
from trainer.components.tracking import Tracker, open_tracker
from trainer.config import VftConfig, to_yaml
from trainer.engine.entry import train_worker
from trainer.engine.lineage import run_info, track_options
from trainer.engine.progress import ProgressBoard

console = Console(stderr=True)
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


class RunFailed(errors.RunFailed):
    """Training failed on the cluster (exit code 1); `worker_error` is the first worker's own
    exception."""

    def __init__(self, error: BaseException):
        failures = getattr(error, "worker_failures", None) or {}
        self.worker_error = next(iter(failures.values()), error)
        text = str(self.worker_error).strip() or type(self.worker_error).__name__
        super().__init__(f"{type(self.worker_error).__name__}: {text}")


@dataclass
class TrainSummary:
    run_dir: str
    history: list[dict]
    best: dict
    wall_s: float
    stopped_early: bool


def run_dir_of(cfg: VftConfig) -> str:
    storage = cfg.run.storage if ckpt.is_remote(cfg.run.storage) else str(Path(cfg.run.storage).resolve())
    return ckpt.join(storage, cfg.run.name)


def init_ray(address: str | None = None, **local_options) -> None:
    """Join `address` (or RAY_ADDRESS, as set inside a RayJob); otherwise start a private local
    cluster (the embedded default), never silently attaching to another one. Locally, worker
    logs stay in Ray's session folder: vft prints progress, epochs and worker errors itself."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # nothing preempts this machine's own cluster: no PreemptionWatcher actor per Train run
        # (the processes the cluster starts inherit this; Ray Train passes it on to its workers)
        os.environ.setdefault(PREEMPTION_WATCHER, "0")
        ray.init(address="local", log_to_driver=False, configure_logging=False, **local_options)


def use_gpu(cfg: VftConfig) -> bool:
    if cfg.scaling.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(cfg.scaling.use_gpu)


def make_trainer(
    cfg: VftConfig, run_dir: str, board=None, callbacks: list | None = None, data_listings: dict | None = None
):
    """The run's TorchTrainer. Its workers get `data_listings` (default: what this process's
    `localize` saw, e.g. `vft train`'s data check) to reuse their machine's dataset mirror."""
    gpu = use_gpu(cfg)
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if gpu else {})}
    storage = run_dir.rsplit("/", 1)[0] if ckpt.is_remote(run_dir) else str(Path(run_dir).parent)
    return TorchTrainer(
        train_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "run_dir": run_dir,
            "board": board,
            "data_listings": remote_data.listed() if data_listings is None else data_listings,
        },
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # vft prints its own progress
            callbacks=callbacks,  # e.g. `vft tune` forwarding reports to Ray Tune
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints,
                checkpoint_score_attribute=cfg.train.monitor,
                checkpoint_score_order=cfg.train.mode,
            ),
        ),
    )


def run_tracker(cfg: VftConfig) -> Tracker:
    """The run's tracker (`track.*`); ConfigError when it cannot work with this config."""
    return open_tracker(track_options(cfg, run_dir_of(cfg)))


def tracked_files(run_dir: str, plots: dict[str, bytes]) -> dict[str, bytes]:
    """What a finished run attaches to its tracked run: the plots, meta.json of best/,
    metrics.csv and config.yaml."""
    files = {f"plots/{name}": content for name, content in plots.items()}
    for name, path in (("meta.json", "best/meta.json"), ("metrics.csv",) * 2, ("config.yaml",) * 2):
        content = read_bytes(ckpt.join(run_dir, path))
        if content is not None:
            files[name] = content
    return files


def train(
    cfg: VftConfig,
    address: str | None = None,
    quiet: bool = False,
    tracker: Tracker | None = None,
    datasets: list[dict] = (),
) -> TrainSummary:
    """Train (or resume) the run; each finished epoch goes to `tracker` (begun here with the
    run's lineage and `datasets`' identity, finished by the caller once the plots are drawn)."""
    run_dir = run_dir_of(cfg)
    earlier = read_metrics_csv(ckpt.join(run_dir, "metrics.csv"))
    if earlier:
        console.print(f"resuming {run_dir} after epoch {len(earlier)}")
    write_text(ckpt.join(run_dir, "config.yaml"), to_yaml(cfg))
    init_ray(address)
    tracker = tracker or Tracker([])
    if tracker.enabled:
        tracker.begin(run_info(cfg, run_dir, ray.cluster_resources(), list(datasets)))
        tracker.sync(earlier)
    board = ProgressBoard.remote()
    trainer = make_trainer(cfg, run_dir, board)
    start = time.perf_counter()
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - re-raised below in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="vft-fit", daemon=True)
    with _ctrl_c() as interrupted:
        thread.start()
        records = _watch(thread, board, cfg, quiet, interrupted, tracker)
    wall = time.perf_counter() - start
    ray.kill(board)
    if "error" in outcome:
        raise RunFailed(outcome["error"]) from outcome["error"]
    history = read_metrics_csv(ckpt.join(run_dir, "metrics.csv")) or records
    tracker.sync(history)
    best = best_row(history, cfg.train.monitor, cfg.train.mode)
    summary = TrainSummary(run_dir, history, best, wall, bool(records and records[-1].get("stopped")))
    return summary


def best_row(history: list[dict], monitor: str, mode: str) -> dict:
    """The first epoch with the best monitored value (the loop saves best/ on strict improvement)."""
    if not history:
        return {}
    pick = max if mode == "max" else min
    return pick(history, key=lambda row: row[monitor])


@contextlib.contextmanager
def _ctrl_c():
    """An Event set by Ctrl-C (SIGINT) while training runs in another thread. A KeyboardInterrupt
    raised inside a Ray call of the main thread can come out as a Ray error (the terminal's SIGINT
    reaches the local cluster's processes too), so the watch loop checks the Event instead and
    raises KeyboardInterrupt itself. Only the main thread can take the signal; elsewhere (a
    Tune trial) the Event stays clear."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _watch(
    thread: threading.Thread,
    board,
    cfg: VftConfig,
    quiet: bool,
    interrupted: threading.Event,
    tracker: Tracker,
) -> list[dict]:
    """Poll the progress board while fit() runs; print one line per finished epoch. Ctrl-C
    (`interrupted`) ends it with KeyboardInterrupt: the process exits and its local cluster, the
    Train workers with it, stops before another epoch."""
    records: list[dict] = []
    columns = [
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            "step {task.completed:.0f}/{task.total:.0f}  loss {task.fields[loss]:.4f}  "
            "{task.fields[img_s]:.0f} img/s"
        ),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=True, disable=quiet) as bar:
        task = bar.add_task("train", total=1, epoch="-", loss=0.0, img_s=0.0)
        while thread.is_alive():
            thread.join(timeout=0.5)
            try:
                latest, new = ray.get(board.read.remote(len(records)), timeout=2)
            except (ray.exceptions.RayError, TimeoutError):
                latest, new = None, []
            if interrupted.is_set():
                raise KeyboardInterrupt
            if latest:
                bar.update(
                    task,
                    total=latest["steps"],
                    completed=latest["step"],
                    epoch=f"{latest['epoch']}/{latest['epochs']}",
                    loss=latest["loss"],
                    img_s=latest["img_s"],
                )
            for record in new:
                records.append(record)
                tracker.epoch(record)
                if not quiet:
                    console.print(_epoch_line(record, cfg))
    if interrupted.is_set():  # the same SIGINT may have ended the workers, and so fit(), first
        raise KeyboardInterrupt
    return records


def _epoch_line(record: dict, cfg: VftConfig) -> str:
    monitor = cfg.train.monitor
    star = " *" if record["best/epoch"] == record["epoch"] else ""
    val_loss = f"val/loss {record['val/loss']:.4f}  " if "val/loss" in record else ""
    return (
        f"epoch {record['epoch']:>3}/{cfg.train.epochs}  train/loss {record['train/loss']:.4f}  "
        f"{val_loss}{monitor} {record[monitor]:.4f}{star}  "
        f"lr {record['lr']:.2e}  {record['train/img_s']:.0f} img/s  {record['time']:.1f}s"
    )


def summary_table(summary: TrainSummary, cfg: VftConfig) -> Table:
    table = Table(title=f"vft train: {cfg.run.name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    best = summary.best
    m = cfg.model
    table.add_row("model", f"{m.name} (weights: {m.weights}, strategy: {cfg.finetune.strategy})")
    table.add_row(
        "epochs run",
        f"{len(summary.history)} of {cfg.train.epochs}"
        + (" (early stopped)" if summary.stopped_early else ""),
    )
    if best:
        table.add_row("best epoch", str(best["epoch"]))
        for key in sorted(k for k in best if k.startswith("val/")):
            table.add_row(key, f"{best[key]:.4f}")
    if summary.history:
        rates = [row["train/img_s"] for row in summary.history]
        table.add_row("throughput", f"{sum(rates) / len(rates):.0f} img/s (train, all workers)")
        skipped = sum(int(row.get("data/skipped_images", 0)) for row in summary.history)
        if skipped:
            table.add_row("skipped images", str(skipped))
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    table.add_row("run dir", summary.run_dir)
    return table
