"""Mixed precision and device placement helpers shared by training, evaluation and export."""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 on Ampere or newer GPUs, fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def autocast(precision: str, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(value, device: torch.device, memory_format=None):
    """Tensors, or lists/tuples/dicts of them (detection targets), onto `device`; images (4-d
    tensors) in `memory_format`."""
    if isinstance(value, torch.Tensor):
        if memory_format is not None and value.ndim == 4:
            return value.to(device, non_blocking=True, memory_format=memory_format)
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device, memory_format) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device, memory_format) for v in value)
    return value
