"""`tensorrt`: a serialized TensorRT engine (FP16, or INT8 from the calibrated QDQ model) with an
optimization profile for batches 1..max_batch (serving/runtime/tensorrt_build.py), cached under
RUN_DIR/export/tensorrt/<gpu>-trt<version>-<precision>-b<min>-<opt>-<max>.plan and copied to
RUN_DIR/export/model.plan (with model.plan.json naming the GPU and TensorRT version). TensorRT is
optional (the `gpu` extra): it is imported where an engine is built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from serving.export.base import EXPORTERS, Exporter, ExportError, ExportOptions
from serving.runtime.rundir import PLAN_FILE, export_path
from serving.runtime.tensorrt_backend import tensorrt_unavailable
from serving.runtime.tensorrt_build import build_engine, engine_cache, engine_key, engine_source
from trainer.components.deploy import Batches, OnnxGraph


def build_tensorrt(run_dir: Path, precision: str, max_batch: int) -> dict:
    """An engine of RUN_DIR/export/model.onnx (model.int8.onnx for `precision` int8), built for
    this GPU unless the cache has it, copied to model.plan beside a record of what it is for."""
    import tensorrt as trt  # optional: only the gpu extra installs it

    gpu, version, opt = torch.cuda.get_device_name(), trt.__version__, max(1, max_batch // 2)
    source = engine_source(run_dir, precision)
    if not source.is_file():
        raise ExportError(f"--trt-precision int8 needs {source}: export --format int8 first")
    key = engine_key(gpu, version, precision, 1, opt, max_batch)
    cached = engine_cache(run_dir) / f"{key}.plan"
    fresh = not cached.is_file() or cached.stat().st_mtime < source.stat().st_mtime
    build_engine(run_dir, gpu, version, precision, opt, max_batch)
    plan = export_path(run_dir, PLAN_FILE)
    shutil.copyfile(cached, plan)
    info = {"gpu": gpu, "tensorrt": version, "precision": precision,
            "profile": {"min": 1, "opt": opt, "max": max_batch}, "cache_key": key}  # fmt: skip
    export_path(run_dir, PLAN_FILE + ".json").write_text(json.dumps(info, indent=2))
    return {"path": str(plan), "cached": not fresh, **info}


class TensorRTExporter(Exporter):
    requires = ("onnx",)

    def unavailable(self) -> str | None:
        return tensorrt_unavailable()

    def build(self, run_dir: Path, graph: OnnxGraph, opts: ExportOptions, calibration: Batches) -> dict:
        return build_tensorrt(run_dir, opts.trt_precision, opts.trt_max_batch)


EXPORTERS.register("tensorrt")(TensorRTExporter())
