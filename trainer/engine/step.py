"""One training step (forward, backward, optimizer update) and the precision helpers: the hot
path, kept free of Ray so the benchmark can time it against a plain PyTorch loop."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from trainer.components.losses import OutputLoss
from trainer.components.precision import autocast, to_device
from trainer.components.schedules import LrSchedule


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run (or sweep trial) stops here."""


class TrainStep:
    """Forward, backward and (every `accum_steps` micro-batches) the optimizer step with
    gradient clipping, the GradScaler for fp16, the LR schedule and the EMA update.

    `loss` is the task's `loss(model, images, targets) -> scalar`; a plain criterion
    (`criterion(outputs, targets)`, e.g. nn.CrossEntropyLoss) is adapted with OutputLoss."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss,
        device,
        precision: str = "fp32",
        channels_last: bool = False,
        accum_steps: int = 1,
        grad_clip: float | None = None,
        schedule: LrSchedule | None = None,
        ema=None,
    ):
        # `forward_model` is what the loss calls: the model, its DDP/compiled wrapper, or the
        # head alone (cached linear probe); the EMA always averages the whole `model`
        self.model, self.forward_model, self.optimizer = model, model, optimizer
        self.loss = loss if hasattr(loss, "on_outputs") else OutputLoss(loss)
        self.device, self.precision, self.accum_steps = device, precision, accum_steps
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.grad_clip, self.schedule, self.ema = grad_clip, schedule, ema
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.updates = 0

    def __call__(self, images, targets, update: bool = True) -> torch.Tensor:
        images = to_device(images, self.device, self.memory_format)
        targets = to_device(targets, self.device)
        model = self.forward_model
        sync = contextlib.nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(self.precision, self.device):
                loss = self.loss(model, images, targets)
            self.scaler.scale(loss / self.accum_steps).backward()
        if update:
            self._optimizer_step()
        return loss.detach()

    def _optimizer_step(self) -> None:
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.schedule is not None:
            self.schedule.step_update()
        if self.ema is not None:
            self.ema.update(self.model, step=self.updates)
