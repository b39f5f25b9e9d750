"""`vft export RUN_DIR`: the best checkpoint to the formats asked for (the task's default
otherwise), each run on the validation images next to PyTorch: the task's parity measures, the
monitored metric and its delta, img/s, gated by the thresholds; RUN_DIR/export/ gets the
formats, a copy of meta.json (model.onnx + meta.json reproduce a prediction) and report.json."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.export.base import EXPORTERS, ExportError, ExportOptions, with_requirements
from serving.export.parity import first, monitored_value, parity_batches, run_batches
from serving.export.timing import speeds, timing_inputs
from serving.runtime.registry import create_backend
from serving.runtime.rundir import EXPORT_DIR, checkpoint_dir, fetch_run_dir, read_run_meta, run_config
from serving.runtime.torch_backend import TorchBackend
from trainer.components import checkpoint as ckpt
from trainer.components.deploy import Batches
from trainer.tasks.base import Task, task_of

SPEED_BASE = "onnx"  # speed-ups are relative to FP32 ONNX Runtime


@dataclass
class Check:
    """What every format is measured against: the run, its parity batches, PyTorch's outputs on
    them and their metric, and the inputs timed."""

    run_dir: Path
    task: Task
    meta: dict
    batches: Batches
    reference: list
    value: float
    timing: dict[int, Any]


def export_run(run_dir: str | Path, opts: ExportOptions) -> dict:
    """Export, check, time; write RUN_DIR/export/report.json and return the report. A run in
    object storage is exported in a local copy, whose export/ then replaces the run's."""
    if not ckpt.is_remote(str(run_dir)):
        return export_local(Path(run_dir), opts)
    local = fetch_run_dir(str(run_dir))
    report = export_local(local, opts, label=str(run_dir))
    ckpt.publish(local / EXPORT_DIR, ckpt.join(str(run_dir), EXPORT_DIR))
    shutil.rmtree(local, ignore_errors=True)
    return report


def export_local(run_dir: Path, opts: ExportOptions, label: str | None = None) -> dict:
    """`label`: the run as the report names it (its URI when `run_dir` is a local copy)."""
    best = checkpoint_dir(run_dir)
    meta = read_run_meta(run_dir)
    task = task_of(meta)
    spec = task.export_spec
    formats, blocked = plan_formats(opts.formats or spec.default_formats, spec)
    if not formats:  # nothing to build: the run's export/ stays as it is
        raise ExportError("; ".join(f"{fmt}: not built: {why}" for fmt, why in blocked.items()))
    torch_backend = TorchBackend(run_dir, task, device="cpu")  # the reference: fp32, as exported
    graph = task.onnx_graph(torch_backend.model, meta)
    cfg = run_config(run_dir, opts.data)
    split = task.read_data(cfg)
    if not len(split.val):
        raise ExportError(f"data.val: {cfg.data.val} holds no images")
    limit = min(opts.max_images, spec.max_parity_images or opts.max_images)
    val = parity_batches(task, cfg, meta, first(split.val, limit), opts.batch_size)
    calibration: Batches = []
    if any(EXPORTERS.get(f).calibrated for f in formats):
        shuffled = split.train.subset(np.random.default_rng(0).permutation(len(split.train)))
        calibration = parity_batches(
            task, cfg, meta, first(shuffled, opts.calibration_images), opts.batch_size
        )
    out = Path(run_dir, EXPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best / ckpt.META_FILE, out / ckpt.META_FILE)
    reference = run_batches(torch_backend, val)
    check = Check(run_dir, task, meta, val, reference, monitored_value(task, meta, reference, val),
                  timing_inputs(task.input_kind, val, opts.batch_size))  # fmt: skip
    report: dict = {
        "run_dir": label or str(run_dir),
        "checkpoint": str(best),
        "epoch": meta["epoch"],
        "images": sum(len(inputs) for inputs, _ in val),
        "thresholds": asdict(opts.thresholds),
        "torch": {
            "metric": meta["monitor"]["metric"],
            "value": check.value,
            **speeds(torch_backend, check.timing),
        },
        "formats": {fmt: {"status": "unavailable", "reason": reason} for fmt, reason in blocked.items()},
    }
    for fmt in formats:
        result = EXPORTERS.get(fmt).build(run_dir, graph, opts, calibration)
        report["formats"][fmt] = check_format(fmt, result, check, opts)
    add_speedups(report["formats"], f"img_s_batch{opts.batch_size}")
    report["passed"] = all(r["status"] != "failed" for r in report["formats"].values())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def plan_formats(
    requested: tuple[str, ...], spec, unavailable=None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """(formats to build, in build order; {format: why not} for those this task or machine cannot
    build). What only a blocked format needed (the ONNX model a TensorRT engine is built from) is
    not built for it. `unavailable(fmt)`: why this machine cannot build `fmt` (default: ask its
    exporter)."""
    unavailable = unavailable or (lambda fmt: EXPORTERS.get(fmt).unavailable())
    blocked = {}
    for fmt in requested:
        why = spec.unsupported if fmt not in spec.formats else unavailable(fmt)
        if why:
            blocked[fmt] = why
    return with_requirements(tuple(f for f in requested if f not in blocked)), blocked


def check_format(fmt: str, result: dict, check: Check, opts: ExportOptions) -> dict:
    """A written format's backend on the parity batches, measured against PyTorch's outputs."""
    backend = create_backend(fmt, check.run_dir)
    outputs = run_batches(backend, check.batches)
    value = monitored_value(check.task, check.meta, outputs, check.batches)
    result.update(check.task.parity(check.reference, outputs))
    result.update(metric=check.meta["monitor"]["metric"], value=value, metric_delta=value - check.value)
    result.update(speeds(backend, check.timing))
    result["failed"] = check.task.parity_failures(result, EXPORTERS.get(fmt).exact, opts.thresholds)
    result["status"] = "failed" if result["failed"] else "passed"
    return result


def add_speedups(results: dict[str, dict], key: str) -> None:
    """Each format's speed-up over FP32 ONNX at the export batch size, where both were timed."""
    base = results.get(SPEED_BASE, {}).get(key)
    for fmt, result in results.items():
        if base and result.get(key) and fmt != SPEED_BASE:
            result["speedup_vs_onnx_fp32"] = result[key] / base
