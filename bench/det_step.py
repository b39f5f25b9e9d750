"""Detection and instance segmentation training-step throughput: vft's step (its detector or
Mask R-CNN factory, parameter groups with no-decay, timm optimizer, LR schedule, TrainStep with
the weighted loss, autocast and GradScaler bookkeeping) against the plain loop of torchvision's
detection references (`references/detection/engine.py`: SGD over trainable parameters,
autocast, sum of the loss dict, backward, step) on the same model, images, boxes (and masks),
in one process. Rounds alternate.

    python bench/det_step.py                  # CPU: fcos_ and maskrcnn_timm_resnet10t, 128 px, batch 8
    python bench/det_step.py --models fasterrcnn_mobilenet_v3_large_320_fpn   # slow on CPU
    python bench/det_step.py --device cuda    # GPU: fasterrcnn_resnet50_fpn_v2, retinanet_resnet50_fpn_v2,
                                              # maskrcnn_resnet50_fpn_v2

The last line is one JSON object; ratio = project img/s / plain img/s (higher is better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_step import time_steps  # noqa: E402

from trainer.components.finetune import param_groups, param_layout  # noqa: E402
from trainer.components.optim import create_optimizer  # noqa: E402
from trainer.components.precision import autocast  # noqa: E402
from trainer.components.schedules import ScheduleSpec, create_schedule  # noqa: E402
from trainer.engine.step import TrainStep  # noqa: E402
from trainer.tasks.detection.model import create_detector  # noqa: E402
from trainer.tasks.detection.task import DetectionLoss  # noqa: E402
from trainer.tasks.instance_segmentation.model import create_instance_model  # noqa: E402
from trainer.tasks.instance_segmentation.task import MaskRcnnLoss  # noqa: E402

LR, WD, NUM_CLASSES = 0.01, 1e-4, 6


def with_masks(name: str) -> bool:
    return name.startswith("maskrcnn")


def fresh_detector(name: str, size: int, device):
    torch.manual_seed(0)
    create = create_instance_model if with_masks(name) else create_detector
    built = create(name, NUM_CLASSES, img_size=size)
    built.module.to(device).train()
    return built


def plain_step(name, size, device, precision):
    """torchvision's references/detection loop body."""
    model = fresh_detector(name, size, device).module
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=WD)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(images, targets):
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with autocast(precision, device):
            loss_dict = model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
        optimizer.zero_grad()
        scaler.scale(losses).backward()
        scaler.step(optimizer)
        scaler.update()
        return losses.detach()

    return step


def project_step(name, size, device, precision, steps):
    built = fresh_detector(name, size, device)
    groups = param_groups(built.module, param_layout(built), "full", [], LR, WD, None, 1.0)
    optimizer = create_optimizer(groups, "sgd", LR, WD, momentum=0.9, fused=device.type == "cuda")
    schedule = create_schedule("cosine", optimizer, ScheduleSpec(total_steps=steps, steps_per_epoch=steps))
    loss = MaskRcnnLoss({}) if with_masks(name) else DetectionLoss({})
    return TrainStep(built.module, optimizer, loss, device, precision, schedule=schedule)


def synthetic_batches(batch: int, size: int, count: int, device, masks: bool = False):
    """Images of varying sizes (0.75-1x `size`) with 1-5 boxes each (and with `masks`, an
    ellipse inside each box), on `device`."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        images, targets = [], []
        for _ in range(batch):
            h, w = (int(size * (0.75 + 0.25 * float(torch.rand(1, generator=gen)))) for _ in range(2))
            images.append(torch.rand(3, h, w, generator=gen).to(device))
            n = int(torch.randint(1, 6, (1,), generator=gen))
            xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
            wh = (0.1 + 0.3 * torch.rand(n, 2, generator=gen)) * torch.tensor([w, h])
            boxes = torch.cat([xy, xy + wh], 1)
            labels = torch.randint(1, NUM_CLASSES, (n,), generator=gen)
            target = {"boxes": boxes, "labels": labels}
            if masks:
                ys, xs = torch.arange(h).view(1, h, 1) + 0.5, torch.arange(w).view(1, 1, w) + 0.5
                centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2
                dx = (xs - centre[:, 0].view(-1, 1, 1)) / half[:, 0].view(-1, 1, 1)
                dy = (ys - centre[:, 1].view(-1, 1, 1)) / half[:, 1].view(-1, 1, 1)
                target["masks"] = (dx**2 + dy**2 <= 1).to(torch.uint8)
            targets.append({k: v.to(device) for k, v in target.items()})
        batches.append((images, targets))
    return batches


def bench_model(name, args, device) -> dict:
    batches = synthetic_batches(args.batch, args.size, 4, device, with_masks(name)) * (args.steps // 4)
    total = (args.warmup + args.steps) * args.rounds
    plain = plain_step(name, args.size, device, args.precision)
    project = project_step(name, args.size, device, args.precision, total)
    for step in (plain, project):
        time_steps(step, batches[: args.warmup], device)
    plain_t, project_t = [], []
    for _ in range(args.rounds):
        plain_t.append(time_steps(plain, batches, device))
        project_t.append(time_steps(project, batches, device))
    plain_s, project_s = statistics.median(plain_t), statistics.median(project_t)
    result = {
        "model": name,
        "batch": args.batch,
        "size": args.size,
        "precision": args.precision,
        "plain_img_s": round(args.batch / plain_s, 1),
        "project_img_s": round(args.batch / project_s, 1),
        "ratio": round(plain_s / project_s, 3),
    }
    print(
        f"{name:>38}  plain {result['plain_img_s']:>8.1f} img/s  vft {result['project_img_s']:>8.1f} img/s  "
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
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    defaults = {
        "models": ["fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2"]
        if gpu
        else ["fcos_timm_resnet10t", "maskrcnn_timm_resnet10t"],
        "batch": 16 if gpu else 8,
        "size": 640 if gpu else 128,
        "precision": "bf16" if gpu else "fp32",
        "steps": 20 if gpu else 8,
        "warmup": 5 if gpu else 2,
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
    print(f"det_step on {label}: batch {args.batch}, {args.size} px, {args.precision}", flush=True)
    results = [bench_model(name, args, device) for name in args.models]
    print(json.dumps({"bench": "det_step", "device": label, "ratio": min(r["ratio"] for r in results),
                      "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
