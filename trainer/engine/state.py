"""What a training job saves and resumes from: meta.json fields, the training state (optimizer,
schedule, scaler, EMA, RNG, history), RUN_DIR/last and RUN_DIR/best, and restoring all of it."""

from __future__ import annotations

import contextlib
import tempfile

from safetensors.torch import load_file

from trainer.components import checkpoint as ckpt
from trainer.components.runlog import write_metrics_csv
from trainer.engine.assemble import Job


def model_meta(job: Job, metrics: dict, epoch: int) -> dict:
    c = job.cfg
    fields = job.task.training_meta(c, job.classes)
    model = {
        "name": job.built.name,
        "source": job.built.source,
        "head": list(job.built.head),
        **fields.pop("model", {}),
        "weights": c.model.weights,
        "ema": c.train.ema.enabled,
    }
    meta = ckpt.build_meta(
        task=c.task,
        classes=job.classes,
        multilabel=fields.pop("multilabel"),
        model=model,
        preprocessing=job.prep.to_meta(),
        metrics=metrics,
        epoch=epoch,
        monitor={"metric": c.train.monitor, "mode": c.train.mode, "value": metrics.get(c.train.monitor)},
        training={
            "precision": job.precision,
            "device": job.device.type,
            "world_size": job.world,
            "strategy": c.finetune.strategy,
        },
    )
    return {**meta, **{k: v for k, v in fields.items() if k not in meta}}


def training_state(job: Job, epoch: int) -> dict:
    step = job.step
    state = {
        "epoch": epoch,
        "optimizer": step.optimizer.state_dict(),
        "schedule": step.schedule.state_dict(),
        "scaler": step.scaler.state_dict(),
        "updates": step.updates,
        "rng": ckpt.rng_state(),
        "history": job.history,
        "best": job.best,
        "bad_epochs": job.bad_epochs,
    }
    if step.ema is not None:
        state["model"] = job.model.state_dict()  # model.safetensors holds the EMA weights
        state["ema"] = step.ema.state_dict()
    return state


def restore(job: Job, directory: str) -> None:
    configured = [dict(group) for group in job.step.optimizer.param_groups]
    state = ckpt.read_state(directory)
    weights = load_file(f"{directory}/{ckpt.MODEL_FILE}")
    job.model.load_state_dict(state.get("model", weights))
    if job.step.ema is not None:
        job.step.ema.load_state_dict(state["ema"])
    # the optimizer's param groups only exist for parameters that will ever train
    job.step.optimizer.load_state_dict(state["optimizer"])
    job.step.schedule.load_state_dict(state["schedule"])
    job.step.scaler.load_state_dict(state["scaler"])
    job.step.updates = state["updates"]
    job.history, job.best, job.bad_epochs = state["history"], state["best"], state["bad_epochs"]
    job.start_epoch = state["epoch"]
    ckpt.set_rng_state(state["rng"])
    keep_configured_hparams(job, configured)


def keep_configured_hparams(job: Job, configured: list[dict]) -> None:
    """Resuming under changed hyperparameters (PBT's explore step in `vft tune`, or an edited
    config): the config's learning rates and weight decay win over the checkpoint's, rescaling
    the schedule so its progress is kept. A no-op when they are unchanged."""
    schedule = job.step.schedule.per_step
    for i, (group, want) in enumerate(zip(job.step.optimizer.param_groups, configured, strict=False)):
        group["weight_decay"] = want["weight_decay"]
        ratio = want["initial_lr"] / group["initial_lr"]
        if ratio == 1.0:
            continue
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= ratio
        for name in ("base_lrs", "max_lrs", "_last_lr"):
            values = getattr(schedule, name, None)
            if values:
                values[i] *= ratio


@contextlib.contextmanager
def latest_checkpoint(reported, last_uri: str):
    """The newer of Ray Train's latest reported checkpoint and RUN_DIR/last, as a local folder
    (or None). RUN_DIR/last is written just before each report, so it is ahead when the driver
    was stopped between the two."""
    with contextlib.ExitStack() as stack:
        candidates = []
        if reported is not None:
            candidates.append(stack.enter_context(reported.as_directory()))
        last = stack.enter_context(ckpt.local_copy(last_uri))
        if last is not None:
            candidates.append(last)
        yield max(candidates, key=lambda d: ckpt.read_meta(d)["epoch"], default=None)


def save_epoch(job: Job, epoch: int, record: dict, tables: dict, is_best: bool, run_dir: str) -> str:
    """Rank 0: write the checkpoint to a local folder, publish it as RUN_DIR/last (and
    RUN_DIR/best), rewrite metrics.csv. Returns the local folder for ray.train.report."""
    local = tempfile.mkdtemp(prefix="vft-ckpt-")
    weights = (job.step.ema.module if job.step.ema is not None else job.model).state_dict()
    metrics = {k: v for k, v in record.items() if k not in ("epoch", "time")}
    meta = model_meta(job, {**metrics, **tables}, epoch)
    ckpt.write_checkpoint(local, weights, meta, training_state(job, epoch))
    ckpt.publish(local, ckpt.join(run_dir, "last"))
    if is_best:
        ckpt.publish(local, ckpt.join(run_dir, "best"))
    write_metrics_csv(ckpt.join(run_dir, "metrics.csv"), job.history)
    return local
