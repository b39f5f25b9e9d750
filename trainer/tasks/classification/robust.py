"""`val/robust_acc` (train.robust_val): top-1 over the validation set under a light corruption
set (noise, blur, contrast, JPEG at severity 3), counted across workers."""

from __future__ import annotations

from torch import nn

from trainer.components.precision import autocast
from trainer.components.robustness import ROBUST_VAL_SET, Normalizer, corrupt
from trainer.tasks.base import EvalContext


def robust_accuracy(model: nn.Module, loader, ctx: EvalContext) -> float:
    norm = Normalizer(ctx.prep.mean, ctx.prep.std, ctx.device)
    correct, seen = 0.0, 0.0
    for i, (images, targets, _) in enumerate(loader):
        if images is None:
            continue
        pixels = norm.to_pixels(images.to(ctx.device))
        targets = targets.to(ctx.device)
        for name, severity in ROBUST_VAL_SET:
            inputs = norm.to_inputs(corrupt(pixels, name, severity, seed=i))
            with autocast(ctx.precision, ctx.device):
                predicted = model(inputs.contiguous(memory_format=ctx.memory_format)).argmax(1)
            correct += float((predicted == targets).sum())
            seen += len(targets)
    correct, seen = ctx.all_sum([correct, seen])
    return correct / max(seen, 1.0)
