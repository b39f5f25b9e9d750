"""Backends by registered name, one registry for every task: a task runs on PyTorch (`torch`)
and on the formats it exports (`Task.export_spec`); the checks `vft serve` and `vft eval` make
before anything starts."""

from __future__ import annotations

from pathlib import Path

from serving.runtime.base import Backend, BackendError
from serving.runtime.rundir import export_path, read_run_meta
from trainer.components import checkpoint as ckpt
from trainer.registry import Registry
from trainer.tasks.base import Task, task_of

BACKENDS = Registry("backend", "serving.runtime")


def backend_names() -> list[str]:
    return BACKENDS.names()


def backends_for(task: Task) -> list[str]:
    """The backends that run `task`'s models: PyTorch and the formats it exports."""
    return [n for n in BACKENDS.names() if BACKENDS.get(n).format in (None, *task.export_spec.formats)]


def backend_class(name: str, task: Task) -> type[Backend]:
    allowed = backends_for(task)
    if name not in allowed:
        raise BackendError(f"unknown {task.name} backend '{name}'; allowed: {', '.join(allowed)}")
    return BACKENDS.get(name)


def create_backend(name: str, run_dir: str | Path, threads: int | None = None) -> Backend:
    task = task_of(read_run_meta(run_dir))
    return backend_class(name, task)(Path(run_dir), task, threads)


def check_servable(run_dir: str | Path, backend: str) -> None:
    """Fail before any cluster starts: a checkpoint, a backend of its task, its export, its runtime."""
    if ckpt.is_remote(str(run_dir)):
        return
    task = task_of(read_run_meta(run_dir))
    try:
        chosen = backend_class(backend, task)
    except BackendError as exc:  # e.g. int8 for a detector
        raise BackendError(f"--backend: {exc}") from None
    path = export_path(run_dir, chosen.file) if chosen.file else None
    if path and not path.is_file():
        raise BackendError(f"{path}: not found; run `vft export {run_dir}` first")
    if reason := chosen.unavailable():
        raise BackendError(f"{backend} backend: {reason}")
