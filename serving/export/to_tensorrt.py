"""`tensorrt`: a serialized TensorRT engine (FP16, or INT8 from the calibrated QDQ model) with an
optimization profile for batches 1..max_batch, cached under
RUN_DIR/export/tensorrt/<gpu>-trt<version>-<precision>-b<min>-<opt>-<max>.plan and copied to
RUN_DIR/export/model.plan (with model.plan.json naming the GPU and TensorRT version). TensorRT is
optional (the `gpu` extra): it is imported where an engine is built."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from serving.export.base import EXPORTERS, Exporter, ExportError, ExportOptions
from serving.runtime.rundir import INT8_FILE, ONNX_FILE, PLAN_FILE, export_path
from serving.runtime.tensorrt_backend import engine_cache, engine_key, tensorrt_unavailable
from trainer.components.deploy import Batches, OnnxGraph


def build_tensorrt(run_dir: Path, graph: OnnxGraph, precision: str, max_batch: int) -> dict:
    """An engine of RUN_DIR/export/model.onnx (model.int8.onnx for `precision` int8)."""
    import tensorrt as trt  # optional: only the gpu extra installs it

    opt = max(1, max_batch // 2)
    key = engine_key(torch.cuda.get_device_name(), trt.__version__, precision, 1, opt, max_batch)
    cached = engine_cache(run_dir) / f"{key}.plan"
    source = export_path(run_dir, INT8_FILE if precision == "int8" else ONNX_FILE)
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
        shape = tuple(graph.example[0].shape[1:])
        profile.set_shape(graph.inputs[0], (1, *shape), (opt, *shape), (max_batch, *shape))
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise RuntimeError("TensorRT failed to build the engine (see its log above)")
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(bytes(engine))
    plan = export_path(run_dir, PLAN_FILE)
    shutil.copyfile(cached, plan)
    info = {"gpu": torch.cuda.get_device_name(), "tensorrt": trt.__version__, "precision": precision,
            "profile": {"min": 1, "opt": opt, "max": max_batch}, "cache_key": key}  # fmt: skip
    export_path(run_dir, PLAN_FILE + ".json").write_text(json.dumps(info, indent=2))
    return {"path": str(plan), "cached": not fresh, **info}


class TensorRTExporter(Exporter):
    requires = ("onnx",)

    def unavailable(self) -> str | None:
        return tensorrt_unavailable()

    def build(self, run_dir: Path, graph: OnnxGraph, opts: ExportOptions, calibration: Batches) -> dict:
        return build_tensorrt(run_dir, graph, opts.trt_precision, opts.trt_max_batch)


EXPORTERS.register("tensorrt")(TensorRTExporter())
