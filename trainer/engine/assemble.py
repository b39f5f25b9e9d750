"""Assemble a training job on one worker: one builder per component, each taking typed keyword
arguments (torchtune's `_setup_model` / `_setup_optimizer` / `_setup_data` shape). `setup` is
the only function here that reads the config tree."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from trainer.components.checkpoint import is_remote
from trainer.components.device_decode import DeviceDecodeLoader, EncodedCollate
from trainer.components.finetune import ParamLayout, Stage, param_groups, param_layout
from trainer.components.loader import make_loader
from trainer.components.lora import LoraSettings, apply_lora
from trainer.components.models import BuiltModel
from trainer.components.optim import create_optimizer
from trainer.components.precision import resolve_precision
from trainer.components.preprocess import Preprocessing
from trainer.components.qat import QatEma, QatPrepareError, QatSettings, capture, is_qat, prepare
from trainer.components.remote_data import localize
from trainer.components.schedules import LrSchedule, ScheduleSpec, create_schedule
from trainer.config import VftConfig
from trainer.engine.step import TrainStep
from trainer.errors import ConfigError
from trainer.tasks.base import DataSplit, Metrics, Task, get_task


@dataclass
class Job:
    """Everything one worker trains with, plus the loop's running state (saved on resume)."""

    task: Task
    cfg: VftConfig
    rank: int
    world: int
    device: torch.device
    precision: str
    classes: list[str]
    prep: Preprocessing
    built: BuiltModel
    train_loader: DataLoader
    val_loader: DataLoader
    step: TrainStep
    metrics: Metrics
    stages: list[Stage]
    layout: ParamLayout
    feature_head: str | None = None  # cached linear probe: the module trained on cached features
    trainable: set[str] = field(default_factory=set)
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    bad_epochs: int = 0
    start_epoch: int = 0

    @property
    def model(self) -> nn.Module:
        return self.built.module


def setup(
    cfg: VftConfig, rank: int, world: int, device: torch.device, data_listings: dict | None = None
) -> Job:
    """The worker's job. `data_listings`: the object-store listings the run's driver saw
    (`remote_data.listed()`), so this machine's mirror is not listed again."""
    # object-store datasets: one mirror per machine, each worker fetching only its shard's images
    remote = is_remote(cfg.data.train)
    cfg = cfg.with_data_paths(functools.partial(localize, listed=data_listings))
    task = get_task(cfg.task)
    t, f, o, s = cfg.train, cfg.finetune, cfg.optim, cfg.schedule
    split = task.read_data(cfg)
    built = task.build_model(cfg, len(split.classes))
    prep = task.build_preprocessing(cfg, built)
    if f.strategy == "lora":
        lora = f.lora
        targets = tuple(lora.targets) if lora.targets is not None else None
        built = _setup_lora(built, LoraSettings(lora.rank, lora.alpha, lora.dropout, targets))
    _setup_model(built, device=device, sync_bn=t.sync_bn and world > 1, channels_last=t.channels_last)
    train_loader, val_loader = _setup_data(
        task,
        cfg,
        split,
        prep,
        rank=rank,
        world=world,
        device=device,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        seed=t.seed,
        decode=resolve_decode(cfg.data.decode, device),
        cache=cfg.data.cache == "ram",
        fixed_shard=cfg.data.cache == "ram" or remote,
    )
    stages = [Stage(st.epoch, st.blocks, st.lr_mult) for st in f.unfreeze]
    layout = param_layout(built)
    optimizer = _setup_optimizer(
        built.module,
        layout,
        stages,
        strategy=f.strategy,
        layer_decay=f.layer_decay,
        head_lr_mult=f.head_lr_mult,
        name=o.name,
        lr=o.lr,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        nesterov=o.nesterov,
        betas=o.betas,
        eps=o.eps,
        fused=device.type == "cuda",
    )
    steps_per_epoch = math.ceil(len(train_loader) / t.accum_steps)
    schedule = _setup_schedule(
        optimizer,
        s.name,
        ScheduleSpec(
            total_steps=steps_per_epoch * t.epochs,
            steps_per_epoch=steps_per_epoch,
            warmup_steps=s.warmup_steps or round(s.warmup_epochs * steps_per_epoch),
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
        ),
    )
    precision = resolve_precision(t.precision, device)
    step = TrainStep(
        built.module,
        optimizer,
        task.build_loss(cfg),
        device,
        precision=precision,
        channels_last=t.channels_last,
        accum_steps=t.accum_steps,
        grad_clip=t.grad_clip,
        schedule=schedule,
        ema=_setup_ema(built.module, enabled=t.ema.enabled, decay=t.ema.decay, device=device),
    )
    metrics = task.create_metrics(task.training_meta(cfg, split.classes), device)
    return Job(
        task=task,
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        precision=precision,
        classes=split.classes,
        prep=prep,
        built=built,
        train_loader=train_loader,
        val_loader=val_loader,
        step=step,
        metrics=metrics,
        stages=stages,
        layout=layout,
        feature_head=task.feature_head(cfg, built),
    )


def _setup_lora(built: BuiltModel, settings: LoraSettings) -> BuiltModel:
    try:
        return apply_lora(built, settings)
    except ValueError as exc:  # a configured target that matches nothing
        raise ConfigError(str(exc)) from exc


def _setup_model(built: BuiltModel, *, device: torch.device, sync_bn: bool, channels_last: bool) -> None:
    if sync_bn:
        built.module = nn.SyncBatchNorm.convert_sync_batchnorm(built.module)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    built.module.to(device, memory_format=memory_format)


def qat_start_epoch(cfg: VftConfig) -> int | None:
    """The first epoch (0-based) that trains quantization-aware, or None without QAT."""
    q = cfg.qat
    return cfg.train.epochs - (q.epochs or cfg.train.epochs) if q.enabled else None


def check_qat(cfg: VftConfig) -> None:
    """Before any cluster starts: a QAT run's model can be captured (ConfigError naming the
    layer otherwise). Built on the meta device: no weights, no memory, under a second."""
    if not cfg.qat.enabled:
        return
    task = get_task(cfg.task)
    bare = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": "none"})})
    with torch.device("meta"):
        built = task.build_model(bare, 2)
        size = task.build_preprocessing(bare, built).input_size
        try:
            capture(built.module, torch.empty(2, 3, size, size))
        except QatPrepareError as exc:
            raise ConfigError(str(exc)) from exc


def enter_qat(job: Job) -> None:
    """From here on the model trains quantization-aware: it becomes its QAT graph, which shares
    its parameters (the optimizer and schedule go on as they are); the EMA follows it from its
    current average; the next `set_stage` wraps the graph in DDP."""
    if is_qat(job.model):
        return
    size = job.prep.input_size
    example = torch.randn(2, 3, size, size, device=job.device).contiguous(
        memory_format=job.step.memory_format
    )
    try:
        prepared = prepare(job.model, example, QatSettings(per_channel=job.cfg.qat.per_channel))
    except QatPrepareError as exc:
        raise ConfigError(str(exc)) from exc
    job.built.module = job.step.model = job.step.forward_model = prepared
    if job.step.ema is not None:
        job.step.ema = QatEma(prepared, job.cfg.train.ema.decay, device=job.device, start=job.step.ema.module)
    job.trainable = set()  # set_stage wraps the new graph (DDP) on its next call


def resolve_decode(decode: str, device: torch.device) -> str:
    """Where this worker decodes images: 'cpu' (loader processes) or 'device' (batches on its
    GPU, for tasks with `device_decoding`)."""
    if device.type == "cuda":
        return "cpu" if decode == "cpu" else "device"
    if decode == "gpu":
        raise ConfigError("data.decode: 'gpu', but this worker has no GPU (see scaling.use_gpu)")
    return "cpu"


def _setup_data(
    task: Task,
    cfg: VftConfig,
    split: DataSplit,
    prep: Preprocessing,
    *,
    rank: int,
    world: int,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    seed: int,
    decode: str = "cpu",
    cache: bool = False,
    fixed_shard: bool = False,
) -> tuple[DataLoader | DeviceDecodeLoader, DataLoader | DeviceDecodeLoader]:
    """The task's datasets and collate functions in sharded (or class-balanced) loaders; with
    `decode='device'` (and a task with `device_decoding`), loaders of undecoded images that
    decode and transform on `device`; with `fixed_shard` (and no class balancing) each rank
    trains on the same images every epoch; with `cache`, each keeps its shard's images decoded
    in memory (filled here, before the loader processes start)."""
    n, encoded = len(split.classes), decode == "device" and task.device_decoding
    train_ds, val_ds = task.build_datasets(cfg, split, prep, encoded=encoded)
    pin = device.type == "cuda"
    common = {"batch_size": batch_size, "num_workers": num_workers, "rank": rank, "world": world}
    train = make_loader(
        train_ds,
        train=True,
        seed=seed,
        balance_labels=task.balance_labels(cfg, train_ds),
        pin_memory=pin,
        collate_fn=EncodedCollate() if encoded else task.collate(cfg, n, train=True),
        fixed_shard=fixed_shard,
        **common,
    )
    val_collate = EncodedCollate() if encoded else task.collate(cfg, n, train=False)
    val = make_loader(val_ds, train=False, pin_memory=pin, collate_fn=val_collate, **common)
    if cache:
        for loader in (train, val):
            loader.dataset.cache_images(sorted(set(loader.sampler.indices)), threads=max(1, num_workers))
    if not encoded:
        return train, val
    skip_bad = cfg.data.skip_bad_images
    return (
        DeviceDecodeLoader(train, device, train_ds.batch_transform, skip_bad),
        DeviceDecodeLoader(val, device, val_ds.batch_transform, skip_bad),
    )


def _setup_optimizer(
    model: nn.Module,
    layout: ParamLayout,
    stages: list[Stage],
    *,
    strategy: str,
    layer_decay: float | None,
    head_lr_mult: float,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    betas: tuple[float, float] | None,
    eps: float | None,
    fused: bool,
) -> torch.optim.Optimizer:
    groups = param_groups(model, layout, strategy, stages, lr, weight_decay, layer_decay, head_lr_mult)
    return create_optimizer(groups, name, lr, weight_decay, momentum, nesterov, betas, eps, fused=fused)


def _setup_schedule(optimizer: torch.optim.Optimizer, name: str, spec: ScheduleSpec) -> LrSchedule:
    return create_schedule(name, optimizer, spec)


def _setup_ema(model: nn.Module, *, enabled: bool, decay: float, device: torch.device) -> ModelEmaV3 | None:
    return ModelEmaV3(model, decay=decay, device=device) if enabled else None
