"""Learning-rate schedules by name, with linear warmup in epochs or steps.

All are stepped once per optimizer step (`step_update`); `plateau` also reads the monitored
metric at the end of each epoch (`step_epoch`).
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CyclicLR, LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from trainer.registry import SCHEDULERS


@dataclass
class ScheduleSpec:
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    warmup_start_factor: float = 0.01
    min_lr: float = 0.0
    step_epochs: int = 30
    milestones: tuple[int, ...] = (30, 60)
    gamma: float = 0.1
    plateau_patience: int = 2
    pct_start: float = 0.3
    cycle_epochs: float = 2.0
    cyclic_base_factor: float = 0.1
    mode: str = "max"


class LrSchedule:
    """One object the loop steps: a per-step scheduler, plus ReduceLROnPlateau when asked."""

    def __init__(
        self, per_step: LRScheduler, plateau: ReduceLROnPlateau | None = None, warmup_steps: int = 0
    ):
        self.per_step, self.plateau, self.warmup_steps = per_step, plateau, warmup_steps
        self.steps = 0

    def step_update(self) -> None:
        """One optimizer update. An fp16 run's GradScaler skips `optimizer.step()` on steps whose
        gradients overflowed (its first steps, typically); the schedule counts those updates
        too, as timm does, so torch's warning about a scheduler stepping before any optimizer
        step does not apply."""
        self.steps += 1
        if self.plateau is None or self.steps <= self.warmup_steps:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
                self.per_step.step()

    def step_epoch(self, metric: float | None) -> None:
        if self.plateau is not None and metric is not None and self.steps > self.warmup_steps:
            self.plateau.step(metric)

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "per_step": self.per_step.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


def _with_warmup(optimizer: Optimizer, spec: ScheduleSpec, shape: Callable[[int], float]) -> LambdaLR:
    """LambdaLR: linear warmup from `warmup_start_factor`, then `shape(step)`."""

    def factor(step: int) -> float:
        if step < spec.warmup_steps:
            start = spec.warmup_start_factor
            return start + (1.0 - start) * step / spec.warmup_steps
        return shape(step)

    return LambdaLR(optimizer, factor)


def _epoch(spec: ScheduleSpec, step: int) -> int:
    return step // max(1, spec.steps_per_epoch)


@SCHEDULERS.register("cosine")
def cosine(optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    base = max(g["lr"] for g in optimizer.param_groups)
    floor = min(1.0, spec.min_lr / base) if base else 0.0
    span = max(1, spec.total_steps - spec.warmup_steps)

    def shape(step: int) -> float:
        t = min(1.0, (step - spec.warmup_steps) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return LrSchedule(_with_warmup(optimizer, spec, shape))


@SCHEDULERS.register("step")
def step(optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    return LrSchedule(
        _with_warmup(optimizer, spec, lambda s: spec.gamma ** (_epoch(spec, s) // spec.step_epochs))
    )


@SCHEDULERS.register("multistep")
def multistep(optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    milestones = sorted(spec.milestones)
    return LrSchedule(
        _with_warmup(
            optimizer, spec, lambda s: spec.gamma ** bisect.bisect_right(milestones, _epoch(spec, s))
        )
    )


@SCHEDULERS.register("constant")
def constant(optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    return LrSchedule(_with_warmup(optimizer, spec, lambda s: 1.0))


@SCHEDULERS.register("plateau")
def plateau(optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    warmup = _with_warmup(optimizer, spec, lambda s: 1.0)
    reduce = ReduceLROnPlateau(optimizer, mode=spec.mode, factor=spec.gamma, patience=spec.plateau_patience)
    return LrSchedule(warmup, reduce, spec.warmup_steps)


@SCHEDULERS.register("onecycle")
def onecycle(optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    max_lrs = [g["lr"] for g in optimizer.param_groups]
    return LrSchedule(
        OneCycleLR(
            optimizer,
            max_lr=max_lrs,
            total_steps=spec.total_steps + 1,
            pct_start=spec.pct_start,
            cycle_momentum=False,
        )
    )


@SCHEDULERS.register("cyclic")
def cyclic(optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    max_lrs = [g["lr"] for g in optimizer.param_groups]
    half = max(1, round(spec.cycle_epochs * spec.steps_per_epoch / 2))
    return LrSchedule(
        CyclicLR(
            optimizer,
            base_lr=[lr * spec.cyclic_base_factor for lr in max_lrs],
            max_lr=max_lrs,
            step_size_up=half,
            cycle_momentum=False,
        )
    )


def create_schedule(name: str, optimizer: Optimizer, spec: ScheduleSpec) -> LrSchedule:
    return SCHEDULERS.get(name)(optimizer, spec)
