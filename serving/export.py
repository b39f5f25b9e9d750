"""`vft export`: the best checkpoint to ONNX (opset >= 17, dynamic batch, simplified with
onnxslim, checked with onnx.checker), INT8 (ONNX Runtime static QDQ calibrated on training
images, or dynamic) and TensorRT (an engine per GPU and TensorRT version), each gated by a
parity check on the validation images against PyTorch: max abs diff, top-1 agreement and the
monitored metric's delta, written to RUN_DIR/export/report.json.

RUN_DIR/export/ also gets a copy of meta.json: model.onnx + meta.json reproduce a prediction.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from serving import backends as B
from trainer.components import checkpoint as ckpt

log = logging.getLogger("vft.export")
FORMATS = ("onnx", "int8", "tensorrt")
MIN_OPSET = 17


class ExportError(ValueError):
    """Export cannot start: bad run directory, format or data (exit code 2)."""


@dataclass(frozen=True)
class Thresholds:
    """Parity gates. FP32 ONNX must match PyTorch closely; quantized or FP16 engines may lose
    at most `max_metric_drop` of the monitored metric."""

    max_abs_diff: float = 1e-3
    min_agreement: float = 0.99
    max_metric_drop: float = 0.01


DEFAULT_FORMATS = {"detection": ("onnx",)}  # other tasks: onnx, int8


@dataclass
class ExportOptions:
    formats: tuple[str, ...] | None = None  # None: the task's default
    thresholds: Thresholds = field(default_factory=Thresholds)
    opset: int = 18
    int8_mode: str = "static"  # static (QDQ, calibrated) | dynamic
    calibration_images: int = 256
    max_images: int = 2000  # validation images used for parity
    batch_size: int = 32
    trt_precision: str = "fp16"  # fp16 | int8 (from the calibrated QDQ model)
    trt_max_batch: int = 32
    data: Path | None = None  # validation images; default: the run's data.val


@dataclass
class EvalSet:
    images: list[np.ndarray]  # batches, float32 NCHW, preprocessed per meta.json
    targets: torch.Tensor
    source: str

    @property
    def count(self) -> int:
        return int(self.targets.shape[0])


# ----------------------------------------------------------------------------- data


def run_config(run_dir: Path, data: Path | None):
    from trainer.config import load_config

    overrides = [f"data.val={data}"] if data else []
    return load_config(run_dir / "config.yaml", overrides)


def preprocessed_batches(samples, classes, meta: dict, limit: int, batch_size: int) -> EvalSet:
    """Samples through the checkpoint's own eval preprocessing (the code training used)."""
    from trainer.components.loader import make_loader
    from trainer.components.preprocess import Preprocessing, eval_transform
    from trainer.tasks.classification.data import ImageDataset

    prep = Preprocessing.from_meta(meta["preprocessing"])
    dataset = ImageDataset(samples.subset(range(min(limit, len(samples)))), classes, eval_transform(prep),
                           multilabel=meta["multilabel"])  # fmt: skip
    loader = make_loader(dataset, batch_size, 0, 0, 1, train=False)
    batches, targets = [], []
    for images, target, _ in loader:
        batches.append(images.numpy())
        targets.append(target)
    return EvalSet(batches, torch.cat(targets), str(samples.paths[0]) if len(samples) else "")


SEGMENTATION_PARITY_IMAGES = 100  # logits of every pixel are kept in memory for the comparison


def task_batches(task, cfg, samples, meta: dict, limit: int, batch_size: int) -> EvalSet:
    """Samples of any task through the checkpoint's eval preprocessing, as float32 batches."""
    from trainer.components.loader import make_loader
    from trainer.tasks.base import DataSplit

    samples = samples.subset(range(min(limit, len(samples))))
    prep = task.preprocessing_from_meta(meta)
    dataset = task.build_datasets(cfg, DataSplit(samples, samples, meta["classes"]), prep)[1]
    collate = task.collate(cfg, meta["num_classes"], train=False)
    loader = make_loader(dataset, batch_size, 0, 0, 1, train=False, collate_fn=collate)
    batches, targets = [], []
    for images, target, _ in loader:
        batches.append(images.numpy())
        targets.append(target)
    paths = getattr(samples, "paths", None) or getattr(samples, "images", [])
    return EvalSet(batches, torch.cat(targets), str(paths[0]) if len(paths) else "")


def load_eval_sets(run_dir: Path, meta: dict, opts: ExportOptions) -> tuple[EvalSet, EvalSet]:
    """(validation images for parity, training images for INT8 calibration)."""
    from trainer.tasks.base import get_task

    cfg = run_config(run_dir, opts.data)
    task = get_task(meta["task"])
    split = task.read_data(cfg)
    if not len(split.val):
        raise ExportError(f"data.val: {cfg.data.val} holds no images")
    limit = (
        opts.max_images
        if meta["task"] != "segmentation"
        else min(opts.max_images, SEGMENTATION_PARITY_IMAGES)
    )
    shuffled = split.train.subset(np.random.default_rng(0).permutation(len(split.train)))
    val = task_batches(task, cfg, split.val, meta, limit, opts.batch_size)
    calib = task_batches(task, cfg, shuffled, meta, opts.calibration_images, opts.batch_size)
    return val, calib


class Logits(torch.nn.Module):
    """A segmenter's logits tensor (torchvision segmenters return a dict with `out`)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


# ----------------------------------------------------------------------------- parity


def run_all(predict: Callable[[np.ndarray], np.ndarray], data: EvalSet) -> np.ndarray:
    return np.concatenate([predict(batch) for batch in data.images])


def monitored_metric(meta: dict, outputs: np.ndarray, targets: torch.Tensor) -> tuple[str, float]:
    from trainer.tasks.base import get_task

    name = meta["monitor"]["metric"]
    metrics = get_task(meta["task"]).create_metrics(meta["num_classes"], meta["multilabel"])
    metrics.update(torch.from_numpy(outputs), targets)
    scalars, _ = metrics.compute("val/")
    return name, scalars[name]


def parity(meta: dict, reference: np.ndarray, outputs: np.ndarray, targets: torch.Tensor) -> dict:
    name, ref_value = monitored_metric(meta, reference, targets)
    _, value = monitored_metric(meta, outputs, targets)
    return {
        "max_abs_diff": float(np.abs(reference - outputs).max()),
        "top1_agreement": float((reference.argmax(1) == outputs.argmax(1)).mean()),
        "metric": name,
        "value": value,
        "metric_delta": value - ref_value,
    }


def gate(result: dict, fmt: str, t: Thresholds) -> list[str]:
    """The thresholds `result` exceeds (empty when it passes)."""
    failed = []
    if fmt == "onnx":
        if result["max_abs_diff"] > t.max_abs_diff:
            failed.append(f"max abs diff {result['max_abs_diff']:.2e} > {t.max_abs_diff:.2e}")
        if result["top1_agreement"] < t.min_agreement:
            failed.append(f"top-1 agreement {result['top1_agreement']:.4f} < {t.min_agreement}")
    elif -result["metric_delta"] > t.max_metric_drop:
        failed.append(f"{result['metric']} drops {-result['metric_delta']:.4f} > {t.max_metric_drop}")
    return failed


def images_per_second(predict: Callable, batch: np.ndarray | list, seconds=1.0) -> float:
    """Median throughput over repeated calls after a warm-up (at least 3 timed calls); `batch`
    is an NCHW array or, for detectors, a list of images."""
    predict(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def sample_batch(data: EvalSet, size: int) -> np.ndarray:
    pool = np.concatenate(data.images)
    return np.ascontiguousarray(np.resize(pool, (size, *pool.shape[1:])))


# ----------------------------------------------------------------------------- ONNX


def export_onnx(model: torch.nn.Module, input_size: int, path: Path, opset: int) -> dict:
    """torch.onnx (the dynamo exporter) with a dynamic batch axis, then onnxslim and the checker."""
    import onnx
    import onnxslim

    if opset < MIN_OPSET:
        raise ExportError(f"--opset: {opset} is below {MIN_OPSET}")
    example = torch.randn(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=opset, dynamic_shapes=({0: batch},),
            input_names=[B.INPUT_NAME], output_names=[B.OUTPUT_NAME], optimize=True,
        )  # fmt: skip
    raw = program.model_proto
    slim = onnxslim.slim(raw)
    onnx.checker.check_model(slim, full_check=True)
    onnx.save(slim, str(path))
    return {
        "path": str(path),
        "opset": max(o.version for o in slim.opset_import if o.domain in ("", "ai.onnx")),
        "nodes": len(slim.graph.node),
        "nodes_before_slim": len(raw.graph.node),
        "bytes": path.stat().st_size,
        "dynamic_batch": slim.graph.input[0].type.tensor_type.shape.dim[0].dim_param or None,
    }


# ----------------------------------------------------------------------------- INT8


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over preprocessed training batches."""

    def __init__(self, data: EvalSet):
        self.batches: Iterator[np.ndarray] = iter(data.images)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {B.INPUT_NAME: batch}

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators only
        pass


def quantize_int8(onnx_path: Path, out_path: Path, calibration: EvalSet, mode: str) -> dict:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_path.with_name("model.int8-prep.onnx")
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    try:
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
        else:
            quantize_static(
                str(prepared), str(out_path), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
    return {"path": str(out_path), "mode": mode, "calibration_images": calibration.count,
            "bytes": out_path.stat().st_size}  # fmt: skip


# ----------------------------------------------------------------------------- TensorRT


def build_tensorrt(run_dir: Path, onnx_path: Path, input_size: int, precision: str, max_batch: int) -> dict:
    """A serialized engine with an optimization profile for batches 1..max_batch, cached under
    RUN_DIR/export/tensorrt/<gpu>-trt<version>-<precision>-b<min>-<opt>-<max>.plan and copied to
    RUN_DIR/export/model.plan (with model.plan.json naming the GPU and TensorRT version)."""
    import tensorrt as trt
    import torch as _torch

    opt = max(1, max_batch // 2)
    key = B.engine_key(precision, 1, opt, max_batch)
    cached = B.engine_cache(run_dir) / f"{key}.plan"
    source = B.export_path(run_dir, B.INT8_FILE) if precision == "int8" else onnx_path
    if not source.is_file():
        raise ExportError(f"--trt-precision int8 needs {source}: export --format int8 first")
    fresh = not cached.is_file() or cached.stat().st_mtime < source.stat().st_mtime
    if fresh:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(source.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {source}: {errors}")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the QDQ nodes' scales
        profile = builder.create_optimization_profile()
        shape = (3, input_size, input_size)
        profile.set_shape(B.INPUT_NAME, (1, *shape), (opt, *shape), (max_batch, *shape))
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError("TensorRT failed to build the engine (see its log above)")
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(bytes(engine))
    plan = B.export_path(run_dir, B.PLAN_FILE)
    shutil.copyfile(cached, plan)
    info = {"gpu": _torch.cuda.get_device_name(), "tensorrt": trt.__version__, "precision": precision,
            "profile": {"min": 1, "opt": opt, "max": max_batch}, "cache_key": key}  # fmt: skip
    B.export_path(run_dir, B.PLAN_FILE + ".json").write_text(json.dumps(info, indent=2))
    return {"path": str(plan), "cached": not fresh, **info}


# ----------------------------------------------------------------------------- the command


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format: unknown {', '.join(unknown) or 'empty'}; allowed: {', '.join(FORMATS)}")
    return formats


def export_run(run_dir: Path, opts: ExportOptions) -> dict:
    """Export, check, time; write RUN_DIR/export/report.json and return the report."""
    from trainer.tasks.base import model_from_checkpoint

    best = B.checkpoint_dir(run_dir)
    task = B.read_run_meta(run_dir)["task"]  # a task export covers
    if opts.formats is None:
        opts.formats = DEFAULT_FORMATS.get(task, ("onnx", "int8"))
    if "int8" in opts.formats or "tensorrt" in opts.formats:
        opts.formats = tuple(dict.fromkeys(("onnx", *opts.formats)))
    unavailable = B.tensorrt_unavailable() if "tensorrt" in opts.formats else None
    model, meta = model_from_checkpoint(best)
    out = Path(run_dir, B.EXPORT_DIR)
    if meta["task"] == "detection":
        from serving.detexport import export_detection

        return export_detection(run_dir, best, model, meta, opts)
    model = Logits(model).eval() if meta["task"] == "segmentation" else model
    val, calib = load_eval_sets(run_dir, meta, opts)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best / ckpt.META_FILE, out / ckpt.META_FILE)

    def torch_predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch)).float().numpy()

    reference = run_all(torch_predict, val)
    _, ref_value = monitored_metric(meta, reference, val.targets)
    speed_batch = sample_batch(val, opts.batch_size)
    report: dict = {
        "run_dir": str(run_dir),
        "checkpoint": str(best),
        "epoch": meta["epoch"],
        "images": val.count,
        "thresholds": asdict(opts.thresholds),
        "torch": {
            "metric": meta["monitor"]["metric"],
            "value": ref_value,
            "img_s_batch1": images_per_second(torch_predict, speed_batch[:1]),
            f"img_s_batch{opts.batch_size}": images_per_second(torch_predict, speed_batch),
        },
        "formats": {},
    }
    for fmt in opts.formats:
        if fmt == "tensorrt" and unavailable:
            report["formats"][fmt] = {"status": "unavailable", "reason": unavailable}
            continue
        report["formats"][fmt] = export_format(fmt, run_dir, model, meta, opts, (val, calib), reference)
    base = report["formats"].get("onnx", {}).get(f"img_s_batch{opts.batch_size}")
    for fmt, result in report["formats"].items():
        rate = result.get(f"img_s_batch{opts.batch_size}")
        if base and rate and fmt != "onnx":
            result["speedup_vs_onnx_fp32"] = rate / base
    report["passed"] = all(r["status"] != "failed" for r in report["formats"].values())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def export_format(fmt: str, run_dir: Path, model, meta: dict, opts: ExportOptions, data, reference) -> dict:
    """Write one format, then measure it against the PyTorch outputs `reference`."""
    val, calib = data
    onnx_path = B.export_path(run_dir, B.ONNX_FILE)
    size = int(meta["preprocessing"]["input_size"])
    if fmt == "onnx":
        result = export_onnx(model, size, onnx_path, opts.opset)
    elif fmt == "int8":
        result = quantize_int8(onnx_path, B.export_path(run_dir, B.INT8_FILE), calib, opts.int8_mode)
    else:
        result = build_tensorrt(run_dir, onnx_path, size, opts.trt_precision, opts.trt_max_batch)
    backend = B.create_backend(fmt, run_dir)
    outputs = run_all(backend, val)
    result.update(parity(meta, reference, outputs, val.targets))
    speed_batch = sample_batch(val, opts.batch_size)
    result["img_s_batch1"] = images_per_second(backend, speed_batch[:1])
    result[f"img_s_batch{opts.batch_size}"] = images_per_second(backend, speed_batch)
    result["failed"] = gate(result, fmt, opts.thresholds)
    result["status"] = "failed" if result["failed"] else "passed"
    return result
