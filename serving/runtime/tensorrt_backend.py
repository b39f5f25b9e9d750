"""`tensorrt`: an engine from RUN_DIR/export/ built by `vft export --format tensorrt` for this GPU
model and TensorRT version (engines run nowhere else), on a preprocessed batch. TensorRT is
optional (the `gpu` extra): it is imported where an engine is built or run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from serving.runtime.base import Backend, BackendError
from serving.runtime.registry import BACKENDS
from serving.runtime.rundir import PLAN_FILE, export_path
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


def engine_key(
    gpu: str, trt_version: str, precision: str, min_batch: int, opt_batch: int, max_batch: int
) -> str:
    """Engines only run on the GPU model and TensorRT version that built them: both are in the
    cache key, with the precision and the batch profile."""
    return f"{_gpu_prefix(gpu, trt_version)}{precision}-b{min_batch}-{opt_batch}-{max_batch}"


def _gpu_prefix(gpu: str, trt_version: str) -> str:
    return f"{gpu.replace(' ', '_').replace('/', '_')}-trt{trt_version}-"


def engine_cache(run_dir: Path) -> Path:
    return export_path(run_dir, "tensorrt")


def find_engine(run_dir: Path) -> Path:
    import tensorrt as trt  # optional: only the gpu extra installs it

    return select_engine(run_dir, torch.cuda.get_device_name(), trt.__version__)


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
    prefix = _gpu_prefix(gpu, trt_version)
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
