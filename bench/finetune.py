"""Fine-tuning strategies, measured in one process on one model: training throughput, trainable
parameters and (on a GPU) peak memory of full fine-tuning, LoRA and the linear probe, each
against full fine-tuning (the baseline); and the cached-feature probe's time for N epochs
against the uncached probe's (the backbone once, then the head alone).

    python bench/finetune.py                                   # CPU: vit_tiny at 64 px, batch 32, fp32
    python bench/finetune.py --device cuda                     # GPU: ViT-B/16 and ViT-L/14 at 224, bf16
    python bench/finetune.py --device cuda --models vit_large_patch14_dinov2 --batch 64

The last line is one JSON object: `speed` = strategy img/s / full img/s, `memory` = strategy
peak / full peak (GPU), `probe_epochs_ratio` = uncached probe time / cached probe time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.components.feature_cache import extract_features  # noqa: E402
from trainer.components.finetune import apply_trainable, param_groups, param_layout, trainable_names  # noqa: E402
from trainer.components.lora import LoraSettings, apply_lora  # noqa: E402
from trainer.components.models import create_model  # noqa: E402
from trainer.components.optim import create_optimizer  # noqa: E402
from trainer.engine.step import TrainStep  # noqa: E402

LR, WD, CLASSES = 1e-3, 0.05, 100


class Loader(list):
    """Collated (images, targets, skipped) batches, as the engine's loaders yield them."""

    drop_last = True

    def __init__(self, batches, batch_size: int):
        super().__init__(batches)
        self.batch_size = batch_size

    def first(self, n: int) -> Loader:
        return Loader(self[:n], self.batch_size)


def build(name: str, size: int, strategy: str, device, precision: str) -> tuple[TrainStep, nn.Module]:
    """The engine's step for `strategy`, and the model's head."""
    torch.manual_seed(0)
    built = create_model(name, CLASSES, img_size=size)
    if strategy == "lora":
        built = apply_lora(built, LoraSettings(rank=8, alpha=16.0))
    built.module.to(device).train()
    layout = param_layout(built)
    apply_trainable(built.module, trainable_names(layout, strategy, [], 0))
    groups = param_groups(built.module, layout, strategy, [], LR, WD, None, 1.0)
    optimizer = create_optimizer(groups, "adamw", LR, WD, fused=device.type == "cuda")
    step = TrainStep(built.module, optimizer, nn.CrossEntropyLoss(), device, precision)
    return step, built.module.get_submodule(built.head[0])


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(step: TrainStep, loader, device) -> float:
    sync(device)
    start = time.perf_counter()
    for images, targets, _ in loader:
        loss = step(images, targets)
    float(loss)
    sync(device)
    return time.perf_counter() - start


def strategies(name: str, loader: Loader, args, device) -> list[dict]:
    out = []
    for strategy in ("full", "lora", "linear_probe"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step, _ = build(name, args.size, strategy, device, args.precision)
        epoch_seconds(step, loader.first(2), device)  # warm-up
        seconds = min(epoch_seconds(step, loader, device) for _ in range(args.rounds))
        trainable = sum(p.numel() for p in step.model.parameters() if p.requires_grad)
        row = {
            "model": name,
            "strategy": strategy,
            "img_s": round(len(loader) * loader.batch_size / seconds, 1),
            "trainable_params": trainable,
            "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if device.type == "cuda"
            else None,
        }
        out.append(row)
        del step
    full = out[0]
    for row in out:
        row["speed"] = round(row["img_s"] / full["img_s"], 3)
        row["memory"] = round(row["peak_gib"] / full["peak_gib"], 3) if full["peak_gib"] else None
        print(
            f"{name:>28} {row['strategy']:>13}  {row['img_s']:>8.1f} img/s  x{row['speed']:.2f}  "
            f"trainable {row['trainable_params']:>11,}  peak {row['peak_gib']} GiB",
            flush=True,
        )
    return out


def cached_probe(name: str, loader: Loader, args, device) -> dict:
    """N probe epochs: through the frozen backbone every epoch, or its features once."""
    uncached, _ = build(name, args.size, "linear_probe", device, args.precision)
    epoch_seconds(uncached, loader.first(1), device)
    plain_s = sum(epoch_seconds(uncached, loader, device) for _ in range(args.epochs))
    cached, head = build(name, args.size, "linear_probe", device, args.precision)
    extract_features(
        cached.model, head, loader.first(1), device, args.precision, torch.contiguous_format, 0
    )  # warm-up
    sync(device)
    start = time.perf_counter()
    features = extract_features(
        cached.model, head, loader, device, args.precision, torch.contiguous_format, 0
    )
    cached.forward_model = head
    for epoch in range(args.epochs):
        features.set_epoch(epoch)
        epoch_seconds(cached, features, device)
    sync(device)
    cached_s = time.perf_counter() - start
    ratio = round(plain_s / cached_s, 2)
    print(
        f"{name:>28} probe x{args.epochs} epochs: uncached {plain_s:.2f} s  cached {cached_s:.2f} s  x{ratio}"
    )
    return {
        "model": name,
        "epochs": args.epochs,
        "uncached_s": round(plain_s, 3),
        "cached_s": round(cached_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=5, help="probe epochs")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    defaults = {
        "models": ["vit_base_patch16_224", "vit_large_patch14_dinov2"] if gpu else ["vit_tiny_patch16_224"],
        "batch": 128 if gpu else 32,
        "size": 224 if gpu else 64,
        "precision": "bf16" if gpu else "fp32",
        "steps": 12 if gpu else 6,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = torch.device(args.device)
    label = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"finetune on {label}: batch {args.batch}, {args.size} px, {args.precision}", flush=True)
    gen = torch.Generator().manual_seed(1)
    rows, probes = [], []
    for name in args.models:
        batches = [
            (
                torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device),
                torch.randint(0, CLASSES, (args.batch,), generator=gen).to(device),
                0,
            )
            for _ in range(args.steps)
        ]
        loader = Loader(batches, args.batch)
        rows += strategies(name, loader, args, device)
        probes.append(cached_probe(name, loader, args, device))
    probe_ratio = min(p["uncached_s"] / p["cached_s"] for p in probes)
    lora_speed = min(r["speed"] for r in rows if r["strategy"] == "lora")
    print(
        json.dumps(
            {
                "bench": "finetune",
                "device": label,
                "lora_speed": lora_speed,
                "probe_epochs_ratio": round(probe_ratio, 2),
                "results": rows,
                "probes": probes,
            }
        )
    )


if __name__ == "__main__":
    main()
