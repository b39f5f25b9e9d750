"""Training-step throughput: vft's step (its model factory, parameter groups with no-decay
and layer decay, timm optimizer, LR schedule, TrainStep with autocast/GradScaler/accumulation
bookkeeping) against a plain PyTorch loop on the same model, batch and precision, in one
process. Rounds alternate between the two so drift hits both alike.

    python bench/train_step.py                       # CPU: resnet18, 64 px, batch 32, fp32
    python bench/train_step.py --device cuda         # GPU: resnet50 + vit_base_patch16_224, batch 256, bf16
    python bench/train_step.py --device cuda --compile

The last line is one JSON object; ratio = project img/s / plain img/s (higher is better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.components.finetune import param_groups, param_layout  # noqa: E402
from trainer.components.models import create_model  # noqa: E402
from trainer.components.optim import create_optimizer  # noqa: E402
from trainer.components.precision import autocast  # noqa: E402
from trainer.components.schedules import ScheduleSpec, create_schedule  # noqa: E402
from trainer.engine.step import TrainStep  # noqa: E402

LR, WD = 1e-3, 0.05


def fresh_model(name: str, num_classes: int, device, channels_last: bool):
    torch.manual_seed(0)
    built = create_model(name, num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    built.module.to(device, memory_format=fmt).train()
    return built


def plain_step(name, num_classes, device, precision, channels_last, compile_model):
    """What a user writes by hand: AdamW over all parameters, autocast, backward, step."""
    model = fresh_model(name, num_classes, device, channels_last).module
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def step(images, targets):
        images = images.to(device, non_blocking=True, memory_format=fmt)
        targets = targets.to(device, non_blocking=True)
        with autocast(precision, device):
            loss = criterion(forward(images), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def project_step(name, num_classes, device, precision, channels_last, compile_model, steps):
    built = fresh_model(name, num_classes, device, channels_last)
    layout = param_layout(built)
    groups = param_groups(built.module, layout, "full", [], LR, WD, layer_decay=0.75, head_lr_mult=1.0)
    optimizer = create_optimizer(groups, "adamw", LR, WD, fused=device.type == "cuda")
    schedule = create_schedule("cosine", optimizer, ScheduleSpec(total_steps=steps, steps_per_epoch=steps))
    forward = torch.compile(built.module) if compile_model else built.module
    return TrainStep(
        forward, optimizer, nn.CrossEntropyLoss(), device, precision, channels_last, schedule=schedule
    )


def time_steps(step, batches, device) -> float:
    """Seconds per step over `batches`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for images, targets in batches:
        loss = step(images, targets)
    float(loss)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / len(batches)


def bench_model(name, args, device) -> dict:
    batch, size, classes = args.batch, args.size, 1000
    gen = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(batch, 3, size, size, generator=gen).to(device),
            torch.randint(0, classes, (batch,), generator=gen).to(device),
        )
        for _ in range(4)
    ] * (args.steps // 4)
    total = (args.warmup + args.steps) * args.rounds
    plain = plain_step(name, classes, device, args.precision, args.channels_last, args.compile)
    project = project_step(name, classes, device, args.precision, args.channels_last, args.compile, total)
    for step in (plain, project):
        time_steps(step, batches[: args.warmup], device)
    plain_t, project_t = [], []
    for _ in range(args.rounds):
        plain_t.append(time_steps(plain, batches, device))
        project_t.append(time_steps(project, batches, device))
    plain_s, project_s = statistics.median(plain_t), statistics.median(project_t)
    result = {
        "model": name,
        "batch": batch,
        "size": size,
        "precision": args.precision,
        "compile": args.compile,
        "plain_img_s": round(batch / plain_s, 1),
        "project_img_s": round(batch / project_s, 1),
        "ratio": round(plain_s / project_s, 3),
    }
    print(
        f"{name:>24}  plain {result['plain_img_s']:>9.1f} img/s  vft {result['project_img_s']:>9.1f} img/s  "
        f"ratio {result['ratio']:.3f}",
        flush=True,
    )
    del plain, project
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    defaults = {
        "models": ["resnet50", "vit_base_patch16_224"] if gpu else ["resnet18"],
        "batch": 256 if gpu else 32,
        "size": 224 if gpu else 64,
        "precision": "bf16" if gpu else "fp32",
        "channels_last": gpu,
        "steps": 20 if gpu else 8,
        "warmup": 10 if gpu else 3,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        label = torch.cuda.get_device_name(device)
    else:
        label = f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"train_step on {label}: batch {args.batch}, {args.size} px, {args.precision}, "
        f"channels_last={args.channels_last}, compile={args.compile}",
        flush=True,
    )
    results = [bench_model(name, args, device) for name in args.models]
    print(
        json.dumps(
            {
                "bench": "train_step",
                "device": label,
                "ratio": min(r["ratio"] for r in results),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
