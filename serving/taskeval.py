"""`vft eval` for detection and segmentation runs.

Per domain (a COCO/YOLO or mask-folder dataset): the task's metrics (mAP, mAP50, mAP75,
mAR@100, matched-box IoU and per-class AP; or mIoU, Dice, pixel accuracy and per-class IoU)
and the worst domain by the run's monitored metric. On the first domain, the corruption
suite: that metric per corruption and severity, the mean corruption error (1 - mean metric)
and the relative drop from clean. Adversarial attacks stay with classification (FGSM/PGD
ascend a classifier's loss). Written to RUN_DIR/eval/<name>/: report.json, report.md,
corruptions.png.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from serving import backends as B
from trainer.components import plots
from trainer.components import robustness as R


def read_domain(task, cfg, meta: dict, name: str, path: Path, opts):
    """The domain's samples through the run's eval transform, in batches of (images, targets)."""
    from serving.evaluate import EvalError
    from trainer.components.loader import make_loader
    from trainer.errors import DataError
    from trainer.tasks.base import DataSplit
    from trainer.tasks.detection.data import read_detection
    from trainer.tasks.segmentation.data import check_class_indices, read_maskfolder

    if not path.exists():
        raise EvalError(f"--data {name}: {path} does not exist")
    try:
        if meta["task"] == "detection":
            samples = read_detection(path)
            if samples.classes != meta["classes"]:
                raise DataError(f"{path}: classes {samples.classes} differ from the run's {meta['classes']}")
        else:
            samples = read_maskfolder(path, meta["segmentation"]["ignore_index"])
            check_class_indices(samples, meta["classes"])
    except DataError as exc:
        raise EvalError(f"--data {name}: {exc}") from exc
    order = np.random.default_rng(opts.seed).permutation(len(samples))[: opts.max_images]
    samples = samples.subset(sorted(order))
    dataset = task.build_datasets(
        cfg, DataSplit(samples, samples, meta["classes"]), task.preprocessing_from_meta(meta)
    )
    collate = task.collate(cfg, meta["num_classes"], train=False)
    loader = make_loader(dataset[1], opts.batch_size, 0, 0, 1, train=False, collate_fn=collate)
    return [(images, targets) for images, targets, _ in loader if images is not None]


def make_predict(meta: dict, backend: str, run_dir: Path) -> tuple[Callable, str]:
    """Images (a normalised batch, or a list of [0, 1] images for detectors) to the outputs
    the task's metrics take."""
    runner = B.create_backend(backend, run_dir, task=meta["task"])
    if meta["task"] == "detection":

        def predict(images: list[torch.Tensor]) -> list[dict]:
            outputs = runner([x.numpy() for x in images])
            keys = ("boxes", "labels", "scores")
            return [{k: torch.from_numpy(v) for k, v in zip(keys, out, strict=True)} for out in outputs]

        return predict, runner.name
    return (lambda images: torch.from_numpy(runner(images.numpy()))), runner.name


def corrupter(meta: dict, name: str, severity: int, seed: int) -> Callable:
    """A function (images, batch index) -> the images corrupted in [0, 1] pixel space."""
    if meta["task"] == "detection":
        return lambda images, i: [
            R.corrupt(x[None], name, severity, seed + 1000 * i + j)[0] for j, x in enumerate(images)
        ]
    p = meta["preprocessing"]
    norm = R.Normalizer(p["mean"], p["std"])
    return lambda images, i: norm.to_inputs(R.corrupt(norm.to_pixels(images), name, severity, seed + i))


def score(task, meta: dict, predict, batches, alter=None) -> tuple[dict, dict]:
    metrics = task.create_metrics(meta["num_classes"])
    with torch.inference_mode():
        for i, (images, targets) in enumerate(batches):
            metrics.update(predict(alter(images, i) if alter else images), targets)
    return metrics.compute("")


def corruption_suite(task, meta, predict, batches, opts, metric: str, clean: float) -> dict:
    table = {
        name: {
            str(s): score(task, meta, predict, batches, corrupter(meta, name, s, opts.seed))[0][metric]
            for s in opts.severities
        }
        for name in opts.corruptions
    }
    per_corruption = {name: float(np.mean(list(row.values()))) for name, row in table.items()}
    mean = float(np.mean(list(per_corruption.values())))
    return {
        "metric": metric,
        "clean": clean,
        "table": table,
        "per_corruption": per_corruption,
        "mean_corruption_error": 1.0 - mean,
        "relative_drop": (clean - mean) / clean if clean else 0.0,
        "by_severity": {str(s): float(np.mean([table[n][str(s)] for n in table])) for s in opts.severities},
    }


def evaluate_task_run(
    run_dir: Path, domains: list[tuple[str, Path]], backend: str, name: str, opts, meta
) -> dict:
    from serving.export import run_config
    from trainer.tasks.base import get_task

    task, cfg = get_task(meta["task"]), run_config(run_dir, None)
    metric = meta["monitor"]["metric"].removeprefix("val/")
    sets = {domain: read_domain(task, cfg, meta, domain, path, opts) for domain, path in domains}
    predict, runtime = make_predict(meta, backend, run_dir)
    per_domain = {}
    for domain, batches in sets.items():
        scalars, tables = score(task, meta, predict, batches)
        images = sum(len(images) for images, _ in batches)
        per_domain[domain] = {"images": images, **scalars, **tables, "path": str(dict(domains)[domain])}
    primary = domains[0][0]
    clean = per_domain[primary][metric]
    report = {
        "run_dir": str(run_dir), "name": name, "task": meta["task"], "backend": backend, "runtime": runtime,
        "epoch": meta["epoch"], "options": asdict(opts), "metric": metric, "domains": per_domain,
        "worst_domain": min(per_domain, key=lambda d: per_domain[d][metric]), "primary_domain": primary,
        "corruptions": corruption_suite(task, meta, predict, sets[primary], opts, metric, clean)
        if opts.corruptions else None,
        "adversarial": None,  # FGSM/PGD ascend a classifier's loss: classification runs only
    }  # fmt: skip
    out = Path(run_dir, "eval", name)
    out.mkdir(parents=True, exist_ok=True)
    if report["corruptions"]:
        c = report["corruptions"]
        plots.corruption_heatmap(c["table"], out / "corruptions.png", label=metric)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    return report


SUMMARY = {"detection": ("map", "map50", "map75", "box_iou"), "segmentation": ("miou", "dice", "pixel_acc")}


def domain_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    keys = SUMMARY[report["task"]]
    rows = []
    for name, d in report["domains"].items():
        worst = " (worst)" if name == report["worst_domain"] and len(report["domains"]) > 1 else ""
        rows.append([name + worst, str(d["images"]), *(f"{d[k]:.4f}" for k in keys)])
    return ["domain", "images", *keys], rows


def corruption_rows(c: dict) -> tuple[list[str], list[list[str]]]:
    severities = list(next(iter(c["table"].values())))
    rows = [[name, *(f"{row[s]:.3f}" for s in severities), f"{c['per_corruption'][name]:.3f}"]
            for name, row in c["table"].items()]  # fmt: skip
    return ["corruption", *(f"severity {s}" for s in severities), "mean"], rows


def markdown(report: dict) -> str:
    from serving.evaluate import md_table

    r = report
    head = (
        f"Run `{r['run_dir']}` ({r['task']}), epoch {r['epoch']}; backend `{r['backend']}` ({r['runtime']})."
    )
    lines = [f"# vft eval: {r['name']}", "", head, "", "## Domains", "", *md_table(*domain_rows(r)), ""]
    if c := r["corruptions"]:
        lines += [
            "## Corruptions", "",
            f"Clean {c['metric']} {c['clean']:.4f}; mean corruption error {c['mean_corruption_error']:.4f}; "
            f"relative drop from clean {c['relative_drop']:.1%}.", "",
            *md_table(*corruption_rows(c)), "", "![corruptions](corruptions.png)", "",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"
