"""`vft tune`: a Ray Tune sweep whose trials are distributed Ray Train runs.

Each trial is a small driver function (`run_trial`, 1 CPU, no GPU) that validates its sampled
point against the config schema and fits a `TorchTrainer` over the usual training loop; the
Train workers request their own CPUs and GPUs (`scaling.*`), so pending trials show up as
pending worker placement groups, which an autoscaler answers with nodes.

Ray Train reports reach Tune through `ForwardReports` (tuner/mailbox.py: one small async actor
per trial carries reports one way and acknowledgements the other), a Train callback in the spirit of
`ray.tune.integration.ray_train.TuneReportCallback`: that callback forwards metrics only, so
Tune would never hold a checkpoint, and PBT's exploit step needs one. `ForwardReports` hands
each report (metrics and the Train checkpoint) to the driver, which passes it to `tune.report`
(with the checkpoint only under PBT) and only then lets Train go on, so the checkpoint cannot
be rotated away while Tune copies it. When a scheduler stops a trial, `StopTrainRun` aborts its
Train run before the trial's process exits, which frees the workers' placement group at once.

Layout of `RUN_DIR/tune/` (RUN_DIR = <run.storage>/<run.name>):

    space.yaml          the resolved space the sweep started with (a resume must match it)
    results.csv         one row per trial: id, status, epochs, best metric, parameters, error
    best_config.yaml    the best trial's complete train config (run.name <name>-best)
    best/               the best trial's run directory: best/, last/, config.yaml, metrics.csv,
                        plots/ (`vft export RUN_DIR/tune/best` works on it)
    plots/              metric_vs_epoch.png, and param_<key>.png per parameter
    trials/<trial_id>/  each trial's run directory (the `vft train` layout, plus Ray Train's
                        checkpoint_epoch_* folders)
    experiment/         Ray Tune's own state (tuner.pkl, experiment_state-*.json, one folder
                        per trial with params.json, result.json, error.txt, PBT checkpoints)

Running `vft tune` again with the same run name restores `experiment/`: finished trials keep
their results, errored and unfinished ones run again, and their training resumes from
`trials/<trial_id>/last`. The search, scheduler and concurrency come back with it, so the
space must be the one the sweep started with (checked against space.yaml; max_concurrent_trials
and time_budget_s may be written differently but keep their original values).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass

import ray
import yaml

from trainer import errors
from trainer.components import checkpoint as ckpt
from trainer.components import remote_data
from trainer.components.runlog import read_metrics_csv, read_text, write_metrics_csv, write_text
from trainer.components.tracking import Tracker
from trainer.config import VftConfig, build_config, merge, to_yaml
from trainer.driver import RunFailed, init_ray, make_trainer, run_dir_of, run_tracker, tracked_files, use_gpu
from trainer.engine.lineage import run_info
from trainer.errors import ConfigError
from tuner.components import create_scheduler, create_search, param_space, uses_checkpoints
from tuner.mailbox import ForwardReports, Mailbox
from tuner.progress import TrialLog, drop_trial_tracebacks
from tuner.space import Space, set_dotted
from tuner.space import to_yaml as space_yaml
from tuner.tracking import start_sweep

log = logging.getLogger("vft.tune")

DRIVER_CPUS = 1.0
EXPERIMENT = "experiment"
STOP_TIMEOUT_S = 30.0


class SweepFailed(errors.RunFailed):
    """Ray Tune itself failed (not a trial: those are recorded and the sweep goes on)."""


class TrialFailed(RuntimeError):
    """A trial's training run failed; the message names the first worker's error."""


def tune_dir_of(cfg: VftConfig) -> str:
    return ckpt.join(run_dir_of(cfg), "tune")


# ----------------------------------------------------------------------------- the trial


@dataclass(frozen=True)
class TrialPlan:
    """What every trial shares: the resolved base config and where trial runs go."""

    base: dict
    trials_dir: str
    metric: str
    mode: str
    checkpoints_to_tune: bool
    parent: dict | None = None  # the sweep's MLflow run (tuner/tracking.py): trials are its children
    data_listings: dict | None = None  # the object-store listings the sweep's data check saw


def trial_config(plan: TrialPlan, params: dict, trial_id: str) -> VftConfig:
    """The base config with the sampled point applied, validated; its run directory is
    `trials/<trial_id>` and it monitors the sweep's metric."""
    raw = plan.base
    for key, value in params.items():
        raw = set_dotted(raw, key, value)
    raw = merge(
        raw,
        {
            "train": {"monitor": plan.metric, "mode": plan.mode},
            "run": {"storage": plan.trials_dir, "name": trial_id},
        },
    )
    try:
        return build_config(raw)
    except ConfigError as exc:
        point = ", ".join(f"{k}={v!r}" for k, v in params.items())
        errors = "; ".join(str(exc).splitlines())
        raise ConfigError(f"sampled point {point} is not a valid config: {errors}") from None


def run_trial(params: dict, plan: TrialPlan) -> None:
    """The Tune trainable: one trial = one TorchTrainer run."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(plan, params, trial_id)
    run_dir = run_dir_of(cfg)
    adopt_checkpoint(tune.get_checkpoint(), run_dir)
    write_text(ckpt.join(run_dir, "config.yaml"), to_yaml(cfg))
    fit_and_forward(cfg, run_dir, plan.checkpoints_to_tune, plan.parent, plan.data_listings)


def adopt_checkpoint(checkpoint, run_dir: str) -> None:
    """Tune hands a trial a checkpoint when PBT makes it exploit another trial (or a PBT trial is
    restored): the run directory starts over from it, as both last/ and best/, so the training
    loop resumes there instead of from the trial's own, newer state."""
    if checkpoint is None:
        return
    with checkpoint.as_directory() as local:
        remove_tree(run_dir)
        ckpt.publish(local, ckpt.join(run_dir, "last"))
        ckpt.publish(local, ckpt.join(run_dir, "best"))
        write_metrics_csv(ckpt.join(run_dir, "metrics.csv"), ckpt.read_state(local)["history"])


def remove_tree(uri: str) -> None:
    if ckpt.is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        return
    import shutil

    shutil.rmtree(uri, ignore_errors=True)


# The trial process's Train run in flight, for StopTrainRun (one trial per process: Tune does
# not reuse actors here).
_RUN: dict = {}
_STOPPING = threading.Event()


class StopTrainRun:
    """Tune trainable mixin. When Tune stops a trial before its run ends (ASHA, median
    stopping, a PBT pause, the time budget), abort the Train run while the trial's process is
    still alive, so its workers and their placement group go at once instead of waiting for Ray
    Train's detached cleaner to notice the dead controller."""

    def cleanup(self):
        _STOPPING.set()
        controller, mailbox = _RUN.pop("controller", None), _RUN.get("mailbox")
        if controller is not None:
            with contextlib.suppress(Exception):
                mailbox.ack.remote()  # unblock ForwardReports, so the controller can take the abort
            with contextlib.suppress(Exception):  # the controller exits as it aborts
                ray.get(controller.abort.remote(), timeout=STOP_TIMEOUT_S)
        super().cleanup()


run_trial.__mixins__ = (StopTrainRun,)  # Tune's extension point for function trainables


def fit_and_forward(
    cfg: VftConfig,
    run_dir: str,
    checkpoints_to_tune: bool,
    parent: dict | None = None,
    data_listings: dict | None = None,
) -> None:
    """Fit in a thread; pass each epoch's report to Tune (and the trial's tracker, a child of
    the sweep's run) from this (the trial's) thread. The last epoch (or early stopping) ends the
    trial: the run finishes first, then its report goes to Tune marked done, so no scheduler
    acts on a finished trial (PBT would pause it)."""
    tracker = run_tracker(cfg)
    if tracker.enabled:
        tracker.begin(run_info(cfg, run_dir, ray.cluster_resources(), [], parent))
        tracker.sync(read_metrics_csv(ckpt.join(run_dir, "metrics.csv")))  # a restored trial
    try:
        _fit_and_forward(cfg, run_dir, checkpoints_to_tune, tracker, data_listings)
    except BaseException:
        # Tune stopping the trial (a scheduler, or the end of a finished one) is no failure;
        # tuner/tracking.py's finish_sweep sets the final state from Tune's verdict either way
        tracker.finish("KILLED" if _STOPPING.is_set() else "FAILED", tracked_files(run_dir, {}))
        raise
    tracker.finish("FINISHED", tracked_files(run_dir, {}))


def _fit_and_forward(
    cfg: VftConfig, run_dir: str, checkpoints_to_tune: bool, tracker: Tracker, data_listings: dict | None
) -> None:
    mailbox = Mailbox.remote()
    trainer = make_trainer(cfg, run_dir, callbacks=[ForwardReports(mailbox)], data_listings=data_listings)
    outcome: dict = {}

    def fit() -> None:
        try:
            trainer.fit()
        except Exception as exc:  # noqa: BLE001 - raised below in the trial's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="vft-trial-fit", daemon=True)
    _RUN["mailbox"] = mailbox
    thread.start()
    while thread.is_alive() or ray.get(mailbox.pending.remote()):
        report = ray.get(mailbox.take.remote(0.5))
        if report is None:
            continue
        metrics, checkpoint, _RUN["controller"] = report
        tracker.epoch(metrics)
        metrics["done"] = bool(metrics.get("stopped")) or metrics["epoch"] >= cfg.train.epochs
        if metrics["done"]:
            mailbox.ack.remote()
            thread.join()
            _RUN.clear()
            report_to_tune(metrics, checkpoint if checkpoints_to_tune else None)
            break
        try:
            report_to_tune(metrics, checkpoint if checkpoints_to_tune else None)
        finally:
            with contextlib.suppress(Exception):  # a stopped trial's controller may be gone
                ray.get(mailbox.ack.remote(), timeout=STOP_TIMEOUT_S)
    thread.join()
    _RUN.clear()
    if "error" in outcome and not _STOPPING.is_set():  # an aborted run is no failure
        raise TrialFailed(str(RunFailed(outcome["error"]))) from None


def report_to_tune(metrics: dict, checkpoint) -> None:
    from ray import tune

    if checkpoint is not None:
        checkpoint = tune.Checkpoint(checkpoint.path, checkpoint.filesystem)
    tune.report(metrics, checkpoint=checkpoint)


# ----------------------------------------------------------------------------- resources


def trial_resources(cfg: VftConfig) -> dict[str, float]:
    """What one trial holds: its driver's CPU plus its Train workers' CPUs and GPUs."""
    s = cfg.scaling
    need = {"CPU": DRIVER_CPUS + s.num_workers * s.cpus_per_worker}
    if use_gpu(cfg):
        need["GPU"] = s.num_workers * s.gpus_per_worker
    return need


def max_concurrent_trials(need: dict[str, float], available: dict[str, float]) -> int:
    """Trials that fit the cluster at once (at least 1: an autoscaler may add the rest)."""
    fits = [math.floor(available.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0]
    return max(1, min(fits, default=1))


# ----------------------------------------------------------------------------- the sweep


def check_same_space(tune_dir: str, space: Space) -> None:
    """A resumed sweep keeps the space it started with (Tune restores its search state)."""
    saved = read_text(ckpt.join(tune_dir, "space.yaml"))
    if saved is None:
        return

    def fixed(data: dict) -> dict:  # all but what may change between runs
        return {k: v for k, v in data.items() if k not in ("max_concurrent_trials", "time_budget_s")}

    if fixed(yaml.safe_load(saved) or {}) != fixed(yaml.safe_load(space_yaml(space))):
        raise ConfigError(
            f"space: differs from the one this sweep started with ({ckpt.join(tune_dir, 'space.yaml')}); "
            "use another --name for a new sweep"
        )


def max_epochs(cfg: VftConfig, space: Space) -> int:
    dist = space.params.get("train.epochs")
    if dist is None:
        return cfg.train.epochs
    return int(max(dist.probes()))


def trial_dirname(trial) -> str:
    return trial.trial_id


def make_tuner(cfg: VftConfig, space: Space, tune_dir: str, concurrent: int, parent: dict | None = None):
    from ray import tune

    plan = TrialPlan(
        base=cfg.model_dump(mode="json"),
        trials_dir=ckpt.join(tune_dir, "trials"),
        metric=space.metric,
        mode=space.mode,
        checkpoints_to_tune=uses_checkpoints(space),
        parent=parent,
        data_listings=remote_data.listed(),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), {"cpu": DRIVER_CPUS})
    experiment = ckpt.join(tune_dir, EXPERIMENT)
    if tune.Tuner.can_restore(experiment):
        log.info("resuming the sweep in %s", tune_dir)
        return tune.Tuner.restore(experiment, trainable, resume_errored=True)
    pbt = uses_checkpoints(space)
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            search_alg=create_search(space, concurrent),
            scheduler=create_scheduler(space, max_epochs(cfg, space)),
            num_samples=space.samples,
            time_budget_s=space.time_budget_s,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=tune_dir,
            failure_config=tune.FailureConfig(max_failures=0),  # errored trials retry on resume
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt else 1),
            verbose=0,
            callbacks=[TrialLog(space.metric)],
        ),
    )


@dataclass
class SweepRun:
    tune_dir: str
    experiment: str
    wall_s: float
    concurrent: int
    parent: dict | None = None  # the sweep's MLflow run


def run_sweep(
    cfg: VftConfig, space: Space, address: str | None = None, datasets: list[dict] = ()
) -> SweepRun:
    """Run (or resume) the sweep; trial failures are recorded, not raised. With MLflow tracking
    the sweep is a parent run (tuner/tracking.py, logging `datasets`' identity) whose children
    are the trials' runs."""
    import ray

    tune_dir = tune_dir_of(cfg)
    check_same_space(tune_dir, space)
    init_ray(address)
    parent = start_sweep(cfg, tune_dir, space, ray.cluster_resources(), list(datasets))
    fits = max_concurrent_trials(trial_resources(cfg), ray.cluster_resources())
    concurrent = space.max_concurrent_trials or fits
    if concurrent > fits and address is None:
        # a local cluster has no autoscaler: trial drivers beyond what fits would hold the CPUs
        # their own Train workers wait for, and the sweep would never progress
        log.warning(
            "max_concurrent_trials %d: this local cluster holds %d trial(s); running %d",
            concurrent,
            fits,
            fits,
        )
        concurrent = fits
    elif concurrent > fits:
        log.warning(
            "max_concurrent_trials %d: the cluster holds %d trial(s) now; the others wait for an "
            "autoscaler to add nodes",
            concurrent,
            fits,
        )
    log.info("up to %d trial(s) at once, each %s", concurrent, trial_resources(cfg))
    write_text(ckpt.join(tune_dir, "space.yaml"), space_yaml(space))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # vft logs trials itself (verbose=0)
    drop_trial_tracebacks()
    tuner = make_tuner(cfg, space, tune_dir, concurrent, parent)
    start = time.perf_counter()
    try:
        tuner.fit()
    except Exception as exc:  # noqa: BLE001 - Tune's own failure (trial errors are in the results)
        raise SweepFailed(f"{type(exc).__name__}: {exc}") from exc
    return SweepRun(
        tune_dir, ckpt.join(tune_dir, EXPERIMENT), time.perf_counter() - start, concurrent, parent
    )
