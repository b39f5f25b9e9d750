"""Building TensorRT engines where they run. An engine runs only on the GPU model and TensorRT
version that built it, so `vft export --format tensorrt` builds one on the export machine and a
replica on another GPU builds its own at start (`engine_plan` says which), from the run's
ONNX model, into the cache RUN_DIR/export/tensorrt/ keyed by GPU, TensorRT version, precision
and batch profile; on shared run storage, later replicas of that GPU load it. TensorRT is
optional (the `gpu` extra): it is imported where an engine is built."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import onnx

from serving.runtime.base import BackendError
from serving.runtime.rundir import INT8_FILE, ONNX_FILE, PLAN_FILE, export_path

DEFAULT_MAX_BATCH = 32


def engine_key(
    gpu: str, trt_version: str, precision: str, min_batch: int, opt_batch: int, max_batch: int
) -> str:
    """Engines only run on the GPU model and TensorRT version that built them: both are in the
    cache key, with the precision and the batch profile."""
    return f"{gpu_prefix(gpu, trt_version)}{precision}-b{min_batch}-{opt_batch}-{max_batch}"


def gpu_prefix(gpu: str, trt_version: str) -> str:
    return f"{gpu.replace(' ', '_').replace('/', '_')}-trt{trt_version}-"


def engine_cache(run_dir: Path) -> Path:
    return export_path(run_dir, "tensorrt")


def exported_profile(run_dir: Path, max_batch: int = DEFAULT_MAX_BATCH) -> tuple[str, int, int]:
    """(precision, opt batch, max batch) the run was exported with (model.plan.json), else FP16
    for batches 1..`max_batch`."""
    info = export_path(run_dir, PLAN_FILE + ".json")
    built = json.loads(info.read_text()) if info.is_file() else {}
    if profile := built.get("profile"):
        return built["precision"], profile["opt"], profile["max"]
    return "fp16", max(1, max_batch // 2), max_batch


def engine_source(run_dir: Path, precision: str) -> Path:
    """The ONNX model an engine of `precision` is built from: the QDQ model for INT8."""
    return export_path(run_dir, INT8_FILE if precision == "int8" else ONNX_FILE)


def onnx_input(path: Path) -> tuple[str, tuple[int, ...]]:
    """The first input's name and its shape per sample (the batch axis left out)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    first = graph.input[0]
    dims = first.type.tensor_type.shape.dim[1:]
    if any(not d.HasField("dim_value") for d in dims):
        raise BackendError(f"{path}: input '{first.name}' has a dynamic size besides the batch")
    return first.name, tuple(d.dim_value for d in dims)


def build_engine(run_dir: Path, gpu: str, trt_version: str, precision: str, opt: int, max_batch: int) -> Path:
    """The cached engine for this GPU, TensorRT version, precision and profile, built from the
    run's ONNX model unless a cached one is newer than that model. Written to a temporary file
    and renamed, so replicas building at once never load half an engine."""
    import tensorrt as trt  # optional: only the gpu extra installs it

    source = engine_source(run_dir, precision)
    if not source.is_file():
        raise BackendError(f"{source}: not found, so no {precision} TensorRT engine can be built from it")
    cached = engine_cache(run_dir) / f"{engine_key(gpu, trt_version, precision, 1, opt, max_batch)}.plan"
    if cached.is_file() and cached.stat().st_mtime >= source.stat().st_mtime:
        return cached
    name, shape = onnx_input(source)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {source}: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the QDQ nodes' scales
    profile = builder.create_optimization_profile()
    profile.set_shape(name, (1, *shape), (opt, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BackendError(f"TensorRT failed to build an engine from {source} (see its log above)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(engine))
    os.replace(tmp, cached)
    return cached
