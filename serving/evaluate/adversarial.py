"""FGSM and PGD (L-inf, on [0, 1] pixels) for tasks whose model is a classifier: crafted with
the PyTorch checkpoint's gradients, scored on the chosen backend (a transfer attack for an
export): top-1 per attack and eps."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from serving.evaluate.base import EvalOptions
from trainer.components import robustness as R
from trainer.components.deploy import Batches


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits.argmax(1) == targets).float().mean())


def adversarial_suite(
    model: nn.Module, backend: Callable, batches: Batches, norm: R.Normalizer, opts: EvalOptions
) -> dict:
    gen = torch.Generator().manual_seed(opts.seed)
    results: dict[str, dict[str, float]] = {attack: {} for attack in opts.attacks}
    targets = torch.cat([labels for _, labels in batches])
    for attack in opts.attacks:
        for eps in opts.eps:
            logits = []
            for inputs, labels in batches:
                pixels = norm.to_pixels(torch.from_numpy(inputs))
                if attack == "fgsm":
                    adv = R.fgsm(model, norm, pixels, labels, eps)
                else:
                    adv = R.pgd(model, norm, pixels, labels, eps, steps=opts.pgd_steps, gen=gen)
                logits.append(torch.from_numpy(backend(norm.to_inputs(adv).numpy())))
            results[attack][f"{eps:.6g}"] = accuracy(torch.cat(logits), targets)
    return {"norm": "linf", "pixel_range": [0, 1], "pgd_steps": opts.pgd_steps, "crafted_on": "torch",
            "top1": results}  # fmt: skip
