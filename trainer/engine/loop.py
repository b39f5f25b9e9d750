"""The training loop: `train_worker` is the Ray Train worker function that TorchTrainer runs on
each of N workers (DDP; gloo on CPU, NCCL on GPU). Assemble once, restore, then per epoch: set
the fine-tuning stage, train, evaluate, checkpoint, report. Knows only the task protocol."""

from __future__ import annotations

import math
import random
import time

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.components import checkpoint as ckpt
from trainer.components.feature_cache import extract_features
from trainer.components.finetune import apply_trainable, freeze_frozen_batchnorm, trainable_names
from trainer.components.precision import autocast, to_device
from trainer.components.qat import freeze_bn, freeze_observers, set_mode
from trainer.config import build_config
from trainer.engine.assemble import Job, enter_qat, qat_start_epoch, setup
from trainer.engine.metrics import TrainMetrics
from trainer.engine.progress import WorkerProgress
from trainer.engine.state import latest_checkpoint, restore, save_epoch
from trainer.engine.step import NonFiniteLossError
from trainer.errors import DataError
from trainer.tasks.base import EvalContext


def train_worker(loop_config: dict) -> None:
    """Ray Train worker function (TorchTrainer's train_loop_per_worker)."""
    cfg = build_config(loop_config["config"])
    run_dir, t = loop_config["run_dir"], cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(t.seed)  # every rank builds the same model (a LoRA resume rebuilds its base)
    job = setup(cfg, rank, world, ray.train.torch.get_device(), loop_config.get("data_listings"))
    with latest_checkpoint(ray.train.get_checkpoint(), ckpt.join(run_dir, "last")) as directory:
        if directory is not None:
            restore(job, directory)
    progress = WorkerProgress(loop_config.get("board") if rank == 0 else None)
    metrics = TrainMetrics(run_dir.rstrip("/").rsplit("/", 1)[-1], t.monitor) if rank == 0 else None
    if job.feature_head is not None and job.start_epoch < t.epochs:
        cache_features(job)
    for epoch in range(job.start_epoch, t.epochs):
        seed_everything(t.seed + 1000 * epoch + rank)
        set_quantization(job, epoch)
        set_stage(job, epoch)
        start = time.perf_counter()
        record = {"epoch": epoch + 1, **train_one_epoch(job, epoch, progress)}
        scalars, tables = evaluate(job)
        record |= scalars | {"lr": max(g["lr"] for g in job.step.optimizer.param_groups)}
        record["time"] = time.perf_counter() - start
        is_best, stop = track_best(job, record)
        report = {**record, "best/value": job.best["value"], "best/epoch": job.best["epoch"], "stopped": stop}
        checkpoint = None
        if rank == 0:
            metrics.record(record)
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cache_features(job: Job) -> None:
    """Cached linear probe: the backbone runs once over this worker's shard; from here on the
    training batches are its features and the forward pass is the head's."""
    head = job.model.get_submodule(job.feature_head)
    job.train_loader = extract_features(
        job.model,
        head,
        job.train_loader,
        job.device,
        job.precision,
        job.step.memory_format,
        job.cfg.train.seed + job.rank,
    )


def set_quantization(job: Job, epoch: int) -> None:
    """Quantization-aware training from its first epoch on (qat.epochs before the end); the
    BatchNorm statistics and the observed ranges freeze after their configured QAT epochs."""
    start, q = qat_start_epoch(job.cfg), job.cfg.qat
    if start is None or epoch < start:
        return
    enter_qat(job)
    trained = epoch - start  # QAT epochs already behind
    if q.freeze_bn_after and trained >= q.freeze_bn_after:
        freeze_bn(job.model)
    if q.freeze_observers_after and trained >= q.freeze_observers_after:
        freeze_observers(job.model)


def set_stage(job: Job, epoch: int) -> None:
    """Freeze/unfreeze for this epoch; re-wrap DDP (and compile) when the trainable set changes,
    since DDP registers gradient hooks only for parameters that train when it is built."""
    names = trainable_names(job.layout, job.cfg.finetune.strategy, job.stages, epoch)
    if names == job.trainable:
        return
    job.trainable = names
    apply_trainable(job.model, names)
    wrapped: nn.Module
    wrapped = trained = job.model if job.feature_head is None else job.model.get_submodule(job.feature_head)
    if job.world > 1:
        ids = [job.device.index] if job.device.type == "cuda" else None
        wrapped = DistributedDataParallel(trained, device_ids=ids)
    if job.cfg.train.compile:
        wrapped = torch.compile(wrapped)
    job.step.forward_model = wrapped


def train_one_epoch(job: Job, epoch: int, progress: WorkerProgress) -> dict:
    set_mode(job.model, train=True)
    freeze_frozen_batchnorm(job.model)
    loader = job.train_loader
    set_epoch = getattr(loader, "set_epoch", None) or getattr(
        getattr(loader, "sampler", None), "set_epoch", None
    )
    if set_epoch is not None:
        set_epoch(epoch)
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
            img_s = seen * job.world / max(time.perf_counter() - start, 1e-9)
            progress.step(
                epoch=epoch + 1, epochs=job.cfg.train.epochs, step=i + 1, steps=steps, loss=value, img_s=img_s
            )
    elapsed = time.perf_counter() - start
    loss_total, seen_total, skipped_total = all_sum(job, [float(loss_sum), seen, skipped])
    if not math.isfinite(loss_total):
        raise NonFiniteLossError(f"loss is not finite in epoch {epoch + 1}")
    return {
        "train/loss": loss_total / max(seen_total, 1),
        "train/img_s": seen_total / max(elapsed, 1e-9),
        "data/skipped_images": int(skipped_total),
    }


@torch.inference_mode()
def evaluate(job: Job) -> tuple[dict, dict]:
    """The task's metrics on the validation set (with the EMA weights when EMA is on), plus any
    extra metrics the task measures itself."""
    model = job.step.ema.module if job.step.ema is not None else job.model
    set_mode(model, train=False)
    job.metrics.reset()
    fmt = job.step.memory_format
    for images, targets, _ in job.val_loader:
        if images is None:
            continue
        images, targets = to_device(images, job.device, fmt), to_device(targets, job.device)
        with autocast(job.precision, job.device):
            outputs = job.task.eval_outputs(model, images)
        floats = outputs.float() if isinstance(outputs, torch.Tensor) else outputs
        job.metrics.update(outputs, targets, job.step.loss.on_outputs(floats, targets))
    scalars, tables = job.metrics.compute("val/")
    ctx = EvalContext(job.device, job.precision, fmt, job.prep, lambda values: all_sum(job, values))
    scalars.update(job.task.extra_val_metrics(job.cfg, model, job.val_loader, ctx))
    return scalars, tables


def all_sum(job: Job, values: list[float]) -> list[float]:
    """Sums over all workers (as float64)."""
    totals = torch.tensor(values, dtype=torch.float64, device=job.device)
    if job.world > 1:
        dist.all_reduce(totals)
    return totals.tolist()


def track_best(job: Job, record: dict) -> tuple[bool, bool]:
    """Update best/bad-epoch counters and history with this epoch; (is_best, stop early)."""
    t = job.cfg.train
    value = record[t.monitor]
    job.step.schedule.step_epoch(value)
    is_best = improved(job, value)
    job.bad_epochs = 0 if improved(job, value, t.early_stopping.min_delta) else job.bad_epochs + 1
    if is_best:
        job.best = {"value": value, "epoch": record["epoch"]}
    job.history.append(record)
    return is_best, t.early_stopping.enabled and job.bad_epochs >= t.early_stopping.patience


def improved(job: Job, value: float, min_delta: float = 0.0) -> bool:
    if not job.best:
        return True
    best = job.best["value"]
    return value > best + min_delta if job.cfg.train.mode == "max" else value < best - min_delta
