"""The training loop: `train_worker` is the Ray Train worker function that TorchTrainer runs on
each of N workers (DDP; gloo on CPU, NCCL on GPU). Build once, then per epoch: set the
fine-tuning stage, train, evaluate, checkpoint, report."""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.components import checkpoint as ckpt
from trainer.components.finetune import (
    ParamLayout,
    Stage,
    apply_trainable,
    freeze_frozen_batchnorm,
    param_groups,
    param_layout,
    trainable_names,
)
from trainer.components.loader import make_loader
from trainer.components.models import BuiltModel
from trainer.components.optim import create_optimizer
from trainer.components.preprocess import Preprocessing
from trainer.components.runlog import write_metrics_csv
from trainer.components.schedules import ScheduleSpec, create_schedule
from trainer.config import VftConfig, build_config
from trainer.engine.progress import WorkerProgress
from trainer.engine.step import NonFiniteLossError, TrainStep, autocast, resolve_precision, to_device
from trainer.errors import DataError
from trainer.tasks.base import DataSplit, Metrics, Task, get_task

# ----------------------------------------------------------------------------- the job


@dataclass
class Job:
    task: Task
    cfg: VftConfig
    rank: int
    world: int
    device: torch.device
    precision: str
    classes: list[str]
    prep: Preprocessing
    built: BuiltModel
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    step: TrainStep
    metrics: Metrics
    stages: list[Stage]
    layout: ParamLayout
    trainable: set[str] = field(default_factory=set)
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    bad_epochs: int = 0
    start_epoch: int = 0

    @property
    def model(self) -> nn.Module:
        return self.built.module


def build_model(cfg: VftConfig, num_classes: int) -> BuiltModel:
    return get_task(cfg.task).build_model(cfg, num_classes)


def build_preprocessing(cfg: VftConfig, built: BuiltModel) -> Preprocessing:
    return get_task(cfg.task).build_preprocessing(cfg, built)


def build_loaders(cfg: VftConfig, task: Task, split: DataSplit, prep: Preprocessing, rank, world, device):
    d = cfg.data
    train_ds, val_ds = task.build_datasets(cfg, split, prep)
    pin = device.type == "cuda"
    n = len(split.classes)
    train_loader = make_loader(
        train_ds,
        d.batch_size,
        d.num_workers,
        rank,
        world,
        train=True,
        seed=cfg.train.seed,
        balanced=d.balanced_sampling,
        pin_memory=pin,
        collate_fn=task.collate(cfg, n, train=True),
    )
    val_loader = make_loader(
        val_ds,
        d.batch_size,
        d.num_workers,
        rank,
        world,
        train=False,
        pin_memory=pin,
        collate_fn=task.collate(cfg, n, train=False),
    )
    return train_loader, val_loader


def build_job(cfg: VftConfig, rank: int, world: int, device: torch.device) -> Job:
    t = cfg.train
    task = get_task(cfg.task)
    split = task.read_data(cfg)
    classes = split.classes
    built = task.build_model(cfg, len(classes))
    prep = task.build_preprocessing(cfg, built)
    precision = resolve_precision(t.precision, device)
    model = built.module
    if t.sync_bn and world > 1:
        model = built.module = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    train_loader, val_loader = build_loaders(cfg, task, split, prep, rank, world, device)

    f, o = cfg.finetune, cfg.optim
    stages = [Stage(s.epoch, s.blocks, s.lr_mult) for s in f.unfreeze]
    layout = param_layout(built)
    groups = param_groups(
        model, layout, f.strategy, stages, o.lr, o.weight_decay, f.layer_decay, f.head_lr_mult
    )
    optimizer = create_optimizer(
        groups,
        o.name,
        o.lr,
        o.weight_decay,
        o.momentum,
        o.nesterov,
        o.betas,
        o.eps,
        fused=device.type == "cuda",
    )
    steps_per_epoch = math.ceil(len(train_loader) / t.accum_steps)
    s = cfg.schedule
    warmup = s.warmup_steps or round(s.warmup_epochs * steps_per_epoch)
    spec = ScheduleSpec(
        total_steps=steps_per_epoch * t.epochs,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup,
        warmup_start_factor=s.warmup_start_factor,
        min_lr=s.min_lr,
        step_epochs=s.step_epochs,
        milestones=tuple(s.milestones),
        gamma=s.gamma,
        plateau_patience=s.plateau_patience,
        pct_start=s.pct_start,
        cycle_epochs=s.cycle_epochs,
        cyclic_base_factor=s.cyclic_base_factor,
        mode=t.mode or "max",
    )
    schedule = create_schedule(s.name, optimizer, spec)
    ema = None
    if t.ema.enabled:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t.ema.decay, device=device)
    step = TrainStep(
        model,
        optimizer,
        task.build_loss(cfg),
        device,
        precision,
        t.channels_last,
        t.accum_steps,
        t.grad_clip,
        schedule,
        ema,
    )
    metrics = task.build_metrics(cfg, len(classes), device)
    return Job(
        task,
        cfg,
        rank,
        world,
        device,
        precision,
        classes,
        prep,
        built,
        train_loader,
        val_loader,
        step,
        metrics,
        stages,
        layout,
    )


def set_stage(job: Job, epoch: int) -> None:
    """Freeze/unfreeze for this epoch; re-wrap DDP (and compile) when the trainable set changes,
    since DDP registers gradient hooks only for parameters that train when it is built."""
    f = job.cfg.finetune
    names = trainable_names(job.layout, f.strategy, job.stages, epoch)
    if names == job.trainable:
        return
    job.trainable = names
    apply_trainable(job.model, names)
    wrapped: nn.Module = job.model
    if job.world > 1:
        ids = [job.device.index] if job.device.type == "cuda" else None
        wrapped = DistributedDataParallel(job.model, device_ids=ids)
    if job.cfg.train.compile:
        wrapped = torch.compile(wrapped)
    job.step.forward_model = wrapped


# ----------------------------------------------------------------------------- epochs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_one_epoch(job: Job, epoch: int, progress: WorkerProgress) -> dict:
    job.model.train()
    freeze_frozen_batchnorm(job.model)
    sampler = job.train_loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    accum, steps = job.cfg.train.accum_steps, len(job.train_loader)
    loss_sum = torch.zeros((), device=job.device)
    seen, skipped, start = 0, 0, time.perf_counter()
    for i, (images, targets, n_skipped) in enumerate(job.train_loader):
        skipped += n_skipped
        if images is None:
            if job.world > 1:  # the other ranks would wait forever for this rank's gradients
                raise DataError(
                    f"every image of a training batch was unreadable (epoch {epoch + 1}, "
                    f"step {i + 1}); with several workers it cannot be skipped"
                )
            continue
        loss = job.step(images, targets, update=(i + 1) % accum == 0 or i + 1 == steps)
        loss_sum += loss * len(images)
        seen += len(images)
        if progress.due():
            value = float(loss)
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss is {value} at epoch {epoch + 1}, step {i + 1}")
            elapsed = time.perf_counter() - start
            progress.step(
                epoch=epoch + 1,
                epochs=job.cfg.train.epochs,
                step=i + 1,
                steps=steps,
                loss=value,
                img_s=seen * job.world / max(elapsed, 1e-9),
            )
    elapsed = time.perf_counter() - start
    totals = torch.tensor([float(loss_sum), seen, skipped], dtype=torch.float64, device=job.device)
    if job.world > 1:
        dist.all_reduce(totals)
    loss_total, seen_total, skipped_total = totals.tolist()
    if not math.isfinite(loss_total):
        raise NonFiniteLossError(f"loss is not finite in epoch {epoch + 1}")
    return {
        "train/loss": loss_total / max(seen_total, 1),
        "train/img_s": seen_total / max(elapsed, 1e-9),
        "data/skipped_images": int(skipped_total),
    }


@torch.inference_mode()
def evaluate(job: Job) -> tuple[dict, dict]:
    model = job.step.ema.module if job.step.ema is not None else job.model
    model.eval()
    job.metrics.reset()
    fmt = job.step.memory_format
    for images, targets, _ in job.val_loader:
        if images is None:
            continue
        images, targets = to_device(images, job.device, fmt), to_device(targets, job.device)
        with autocast(job.precision, job.device):
            outputs = job.task.eval_outputs(model, images)
        job.metrics.update(outputs, targets, job.step.loss.on_outputs(_as_float(outputs), targets))
    scalars, tables = job.metrics.compute("val/")
    if job.cfg.train.robust_val:
        scalars["val/robust_acc"] = robust_accuracy(job, model)
    return scalars, tables


def _as_float(outputs):
    return outputs.float() if isinstance(outputs, torch.Tensor) else outputs


def robust_accuracy(job: Job, model: nn.Module) -> float:
    """Top-1 over the validation set under a light corruption set (noise, blur, contrast, JPEG
    at severity 3), counted across workers."""
    from trainer.components.robustness import ROBUST_VAL_SET, Normalizer, corrupt

    norm = Normalizer(job.prep.mean, job.prep.std, job.device)
    counts = torch.zeros(2, dtype=torch.float64, device=job.device)
    for i, (images, targets, _) in enumerate(job.val_loader):
        if images is None:
            continue
        pixels = norm.to_pixels(images.to(job.device))
        targets = targets.to(job.device)
        for name, severity in ROBUST_VAL_SET:
            inputs = norm.to_inputs(corrupt(pixels, name, severity, seed=i)).contiguous(
                memory_format=job.step.memory_format
            )
            with autocast(job.precision, job.device):
                predicted = model(inputs).argmax(1)
            counts += torch.stack(
                [
                    (predicted == targets).sum().double(),
                    torch.tensor(len(targets), device=job.device, dtype=torch.float64),
                ]
            )
    if job.world > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1].clamp(min=1))


def improved(job: Job, value: float, min_delta: float = 0.0) -> bool:
    if not job.best:
        return True
    best = job.best["value"]
    return value > best + min_delta if job.cfg.train.mode == "max" else value < best - min_delta


# ----------------------------------------------------------------------------- checkpoints


def model_meta(job: Job, metrics: dict, epoch: int) -> dict:
    c = job.cfg
    meta = ckpt.build_meta(
        task=c.task,
        classes=job.classes,
        multilabel=c.data.multilabel,
        model={
            "name": job.built.name,
            "source": job.built.source,
            "head": list(job.built.head),
            "drop_rate": c.model.drop_rate,
            "drop_path_rate": c.model.drop_path_rate,
            "weights": c.model.weights,
            "ema": c.train.ema.enabled,
        },
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
    return {**meta, **job.task.meta_fields(c)}


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
    from safetensors.torch import load_file

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


# ----------------------------------------------------------------------------- worker entry


def train_worker(loop_config: dict) -> None:
    """Ray Train worker function (TorchTrainer's train_loop_per_worker)."""
    cfg = build_config(loop_config["config"])
    run_dir = loop_config["run_dir"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(cfg.train.seed + rank)
    job = build_job(cfg, rank, world, device)
    with latest_checkpoint(ray.train.get_checkpoint(), ckpt.join(run_dir, "last")) as directory:
        if directory is not None:
            restore(job, directory)
    progress = WorkerProgress(loop_config.get("board") if rank == 0 else None)
    t = cfg.train
    for epoch in range(job.start_epoch, t.epochs):
        seed_everything(t.seed + 1000 * epoch + rank)
        set_stage(job, epoch)
        start = time.perf_counter()
        record = {"epoch": epoch + 1, **train_one_epoch(job, epoch, progress)}
        scalars, tables = evaluate(job)
        record.update(scalars)
        record["lr"] = max(g["lr"] for g in job.step.optimizer.param_groups)
        record["time"] = time.perf_counter() - start
        value = record[t.monitor]
        job.step.schedule.step_epoch(value)
        is_best = improved(job, value)
        if improved(job, value, t.early_stopping.min_delta):
            job.bad_epochs = 0
        else:
            job.bad_epochs += 1
        if is_best:
            job.best = {"value": value, "epoch": epoch + 1}
        job.history.append(record)
        stop = t.early_stopping.enabled and job.bad_epochs >= t.early_stopping.patience
        report = {**record, "best/value": job.best["value"], "best/epoch": job.best["epoch"], "stopped": stop}
        checkpoint = None
        if rank == 0:
            local = save_epoch(job, epoch + 1, record, tables, is_best, run_dir)
            checkpoint = ray.train.Checkpoint.from_directory(local)
            progress.epoch({**report, "tables": tables})
        ray.train.report(
            report,
            checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:04d}",
            delete_local_checkpoint_after_upload=True,
        )
        if stop:
            break
