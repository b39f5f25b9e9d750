"""`onnx` and `int8`: RUN_DIR/export/model.onnx and model.int8.onnx (statically quantized, QDQ)
in ONNX Runtime. A batch is one run; images of their own sizes are one run each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving.runtime.base import NO_ONNXRUNTIME, Backend, BackendError
from serving.runtime.registry import BACKENDS
from serving.runtime.rundir import INT8_FILE, ONNX_FILE, export_path
from trainer.components.deploy import IMAGES
from trainer.tasks.base import Task

try:
    import onnxruntime as ort
except ImportError as exc:
    raise ImportError(NO_ONNXRUNTIME) from exc


def onnx_session(path: Path, threads: int | None = None, cpu_only: bool = False) -> ort.InferenceSession:
    if not path.is_file():
        raise BackendError(f"{path}: not found; run `vft export {path.parent.parent}` first")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    # no busy-waiting between runs: a replica shares its CPUs with decoding and HTTP
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider",) if p in available and not cpu_only]
    return ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])


@BACKENDS.register("onnx")
class OnnxBackend(Backend):
    format, file = "onnx", ONNX_FILE
    cpu_only = False

    def __init__(self, run_dir: Path, task: Task, threads: int | None = None):
        self.session = onnx_session(export_path(run_dir, self.file), threads, self.cpu_only)
        self.input = self.session.get_inputs()[0].name
        self.images = task.input_kind == IMAGES
        self.name = f"onnxruntime ({self.session.get_providers()[0]}, {self.file})"

    def on_gpu(self) -> bool:
        return self.session.get_providers()[0] == "CUDAExecutionProvider"

    def __call__(self, inputs: Any) -> Any:
        if self.images:
            return [tuple(self._run(x)) for x in inputs]
        return self._run(inputs)[0]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})


@BACKENDS.register("int8")
class Int8Backend(OnnxBackend):
    """The statically quantized (QDQ) model; its integer kernels are ONNX Runtime's CPU ones."""

    format, file = "int8", INT8_FILE
    cpu_only = True
