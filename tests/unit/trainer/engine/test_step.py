"""TrainStep: accumulation, clipping, precision, schedule and EMA bookkeeping on a tiny model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.components.precision import resolve_precision
from trainer.components.schedules import ScheduleSpec, create_schedule
from trainer.engine.step import TrainStep


def tiny_step(**kwargs) -> TrainStep:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainStep(model, optimizer, nn.CrossEntropyLoss(), torch.device("cpu"), **kwargs)


def batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 2, 2, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def test_accumulation_updates_only_on_the_last_micro_batch():
    step = tiny_step(accum_steps=2)
    before = [p.clone() for p in step.forward_model.parameters()]
    step(*batch(0), update=False)
    assert all(torch.equal(a, b) for a, b in zip(before, step.forward_model.parameters(), strict=True))
    assert step.forward_model[1].weight.grad is not None
    step(*batch(1), update=True)
    assert step.updates == 1
    assert not torch.equal(before[0], step.forward_model[1].weight)
    assert step.forward_model[1].weight.grad is None  # zeroed (set to None) after the update


def test_accumulated_gradient_equals_the_mean_over_micro_batches():
    accumulated = tiny_step(accum_steps=2)
    accumulated.optimizer.zero_grad()
    accumulated(*batch(0), update=False)
    accumulated(*batch(1), update=False)
    reference = tiny_step()
    x = torch.cat([batch(0)[0], batch(1)[0]])
    y = torch.cat([batch(0)[1], batch(1)[1]])
    nn.CrossEntropyLoss()(reference.forward_model(x), y).backward()
    torch.testing.assert_close(
        accumulated.forward_model[1].weight.grad, reference.forward_model[1].weight.grad
    )


def test_gradient_clipping_bounds_the_update():
    free, clipped = tiny_step(), tiny_step(grad_clip=1e-3)
    start = [p.clone() for p in free.forward_model.parameters()]
    free(*batch())
    clipped(*batch())
    moved_free = sum((p - s).norm() ** 2 for p, s in zip(free.forward_model.parameters(), start, strict=True))
    moved_clip = sum(
        (p - s).norm() ** 2 for p, s in zip(clipped.forward_model.parameters(), start, strict=True)
    )
    assert moved_clip.sqrt() <= 0.1 * 1e-3 * 1.001  # lr x max norm
    assert moved_free.sqrt() > moved_clip.sqrt()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_steps_on_cpu(precision):
    step = tiny_step(precision=precision)
    assert step.scaler.is_enabled() == (precision == "fp16")
    losses = [float(step(*batch())) for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_schedule_and_ema_advance_once_per_update():
    from timm.utils import ModelEmaV3

    step = tiny_step(accum_steps=2)
    step.schedule = create_schedule("cosine", step.optimizer, ScheduleSpec(total_steps=4, steps_per_epoch=4))
    step.ema = ModelEmaV3(step.forward_model, decay=0.5)
    for i in range(4):
        step(*batch(i), update=i % 2 == 1)
    assert step.schedule.steps == 2 and step.updates == 2
    ema_weight = step.ema.module[1].weight
    assert not torch.equal(ema_weight, step.forward_model[1].weight)


def test_auto_precision_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_fp16_skips_a_step_whose_gradients_overflow_and_lowers_the_scale():
    """GradScaler: an inf gradient leaves the weights as they were and halves the scale; the
    next finite step updates them. With clipping, the gradients are unscaled first."""
    step = tiny_step(precision="fp16", grad_clip=1.0)
    scale = step.scaler.get_scale()
    before = [p.detach().clone() for p in step.forward_model.parameters()]
    x, y = batch()
    step(x * float("inf"), y)
    assert all(torch.equal(a, b) for a, b in zip(before, step.forward_model.parameters(), strict=True))
    assert step.scaler.get_scale() == scale / 2
    step(x, y)
    moved = sum(
        (p - b).norm() ** 2 for p, b in zip(step.forward_model.parameters(), before, strict=True)
    ).sqrt()
    assert 0 < moved <= 0.1 * 1.0 * 1.001  # clipped to norm 1 after unscaling, lr 0.1
