"""`tensorrt`: an engine for this GPU model and TensorRT version (engines run nowhere else), on a
preprocessed batch: the one `vft export --format tensorrt` built here, one cached for this GPU,
or, on a GPU the run has no engine for, one this replica builds at start from the run's ONNX
model (logged; the cache keeps it for later replicas). TensorRT is optional (the `gpu` extra):
it is imported where an engine is built or run."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from serving.runtime.base import Backend, BackendError
from serving.runtime.registry import BACKENDS
from serving.runtime.rundir import PLAN_FILE, export_path
from serving.runtime.tensorrt_build import (
    build_engine,
    engine_cache,
    engine_key,
    engine_source,
    exported_profile,
    gpu_prefix,
)
from trainer.tasks.base import Task


def tensorrt_unavailable() -> str | None:
    """Why a TensorRT engine cannot be built or run here, or None when it can."""
    try:
        import tensorrt  # noqa: F401  (optional: only the gpu extra installs it)
    except ImportError:
        return "the `tensorrt` package is not installed (pip install 'vft[gpu]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


logger = logging.getLogger(__name__)


def find_engine(run_dir: Path) -> Path:
    """This GPU's engine, built here first when the run has none for it."""
    import tensorrt as trt  # optional: only the gpu extra installs it

    gpu, version = torch.cuda.get_device_name(), trt.__version__
    action, plan = engine_plan(run_dir, gpu, version)
    if action == "load":
        return plan
    precision, opt, max_batch = plan
    source, cache = engine_source(run_dir, precision).name, engine_cache(run_dir)
    logger.warning(
        "tensorrt: %s has no engine for %s with TensorRT %s; building a %s engine for batches 1..%d "
        "from %s (minutes; cached in %s for later replicas)",
        run_dir, gpu, version, precision, max_batch, source, cache,
    )  # fmt: skip
    return build_engine(run_dir, gpu, version, precision, opt, max_batch)


def engine_plan(run_dir: Path, gpu: str, trt_version: str):
    """("load", engine path) when the run has an engine for this GPU and version; otherwise
    ("build", (precision, opt batch, max batch)) as the run was exported (FP16, 1..32 when it
    never was), or a BackendError when there is no ONNX model to build it from."""
    try:
        return "load", select_engine(run_dir, gpu, trt_version)
    except BackendError as missing:
        wanted = exported_profile(run_dir)
        if not engine_source(run_dir, wanted[0]).is_file():
            raise BackendError(
                f"{missing}, and no {engine_source(run_dir, wanted[0]).name} in it to build one from"
            ) from None
        return "build", wanted


def select_engine(run_dir: Path, gpu: str, trt_version: str) -> Path:
    """RUN_DIR/export/model.plan when model.plan.json says it was built for this GPU model and
    TensorRT version. Otherwise an engine of the cache built for them: the one with the
    precision and batch profile the last export asked for, else the newest."""
    info = export_path(run_dir, PLAN_FILE + ".json")
    built = json.loads(info.read_text()) if info.is_file() else {}
    if built.get("gpu") == gpu and built.get("tensorrt") == trt_version:
        return export_path(run_dir, PLAN_FILE)
    if profile := built.get("profile"):
        batches = (profile["min"], profile["opt"], profile["max"])
        wanted = engine_cache(run_dir) / f"{engine_key(gpu, trt_version, built['precision'], *batches)}.plan"
        if wanted.is_file():
            return wanted
    prefix = gpu_prefix(gpu, trt_version)
    cached = sorted(engine_cache(run_dir).glob(f"{prefix}*.plan"), key=os.path.getmtime)
    if cached:
        return cached[-1]
    raise BackendError(
        f"{run_dir}: no TensorRT engine for {gpu} with TensorRT {trt_version}; "
        f"run `vft export {run_dir} --format tensorrt` on this machine"
    )


@BACKENDS.register("tensorrt")
class TensorRTBackend(Backend):
    """A batch larger than the engine's profile runs in slices of its largest batch."""

    format = "tensorrt"

    def __init__(self, run_dir: Path, task: Task, threads: int | None = None):
        if reason := self.unavailable():
            raise BackendError(f"tensorrt backend: {reason}")
        import tensorrt as trt  # optional: only the gpu extra installs it

        plan = find_engine(run_dir)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"{plan}: TensorRT could not load the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.max_batch = self.engine.get_tensor_profile_shape(self.input, 0)[2][0]
        self.name = f"tensorrt ({plan.name})"

    @staticmethod
    def unavailable() -> str | None:
        return tensorrt_unavailable()

    def on_gpu(self) -> bool:
        return True

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        step = self.max_batch
        return np.concatenate([self._run(batch[i : i + step]) for i in range(0, len(batch), step)])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).cuda()
        self.context.set_input_shape(self.input, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device="cuda")
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()
