"""Optimizers by name through timm's factory (sgd, momentum, adam, adamw, lamb, lion, ...)."""

from __future__ import annotations

import inspect

import torch
from timm.optim import create_optimizer_v2, get_optimizer_info


def create_optimizer(
    param_groups: list[dict],
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas=None,
    eps: float | None = None,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """`param_groups` carry their own lr and weight_decay (see finetune.param_groups). `fused`
    (for parameters on a GPU) picks torch's fused kernels where the optimizer has them: one
    launch per step instead of one per parameter group and tensor list."""
    info = get_optimizer_info(name)
    kwargs = {}
    if fused and "fused" in inspect.signature(info.opt_class).parameters:
        kwargs["fused"] = True
    if "nesterov" in (info.defaults or {}):
        kwargs["nesterov"] = nesterov
    if betas is not None and info.has_betas:
        kwargs["betas"] = tuple(betas)
    if eps is not None and info.has_eps:
        kwargs["eps"] = eps
    return create_optimizer_v2(
        param_groups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs
    )
