"""What every inference backend is: built from a run directory for the run's task, called on the
task's inputs (`Task.input_kind`: one preprocessed batch, or a list of images of their own
sizes), it returns what the task's exported graph outputs (`Task.graph_outputs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.errors import VftError
from trainer.tasks.base import Task

#: ONNX Runtime is an extra (two builds of one module): what to install when it is missing
NO_ONNXRUNTIME = "ONNX Runtime is not installed: pip install 'vft[cpu]' (or 'vft[gpu]' on CUDA nodes)"


class BackendError(VftError):
    """A backend that cannot be built here: not a run directory, no export yet, a backend the
    task has no export for, a missing runtime or GPU (exit code 2)."""


class Backend:
    format: str | None = None  # the `vft export` format it runs; None: the checkpoint itself
    file: str | None = None  # the file of RUN_DIR/export/ it needs
    name: str  # the runtime, as GET /v1/model and the reports show it

    def __init__(self, run_dir: Path, task: Task, threads: int | None = None):
        raise NotImplementedError

    def on_gpu(self) -> bool:
        """Whether the model runs on a CUDA device (request images may then be decoded there)."""
        return False

    @staticmethod
    def unavailable() -> str | None:
        """Why this backend cannot run on this machine, or None when it can."""
        return None

    def __call__(self, inputs: Any) -> Any:
        raise NotImplementedError
