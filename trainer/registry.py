"""Registries: components are chosen by registered name, never by import path.

Each component module registers its builders here; `list_*` import that module first so a
name is known wherever the registry is asked.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str, module: str | tuple[str, ...]):
        self.kind = kind
        self._modules = (module,) if isinstance(module, str) else module
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator (or plain call) adding a builder or spec under `name`."""

        def add(item: Any) -> Any:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def _load(self) -> None:
        for module in self._modules:
            importlib.import_module(module)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} '{name}'; allowed: {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self, pattern: str | None = None) -> list[str]:
        self._load()
        return filter_names(sorted(self._items), pattern)


def filter_names(names: list[str], pattern: str | None) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else list(names)


SCHEDULERS = Registry("scheduler", "trainer.components.schedules")
LOSSES = Registry("loss", "trainer.components.losses")
# Each task is a package under trainer/tasks/ that registers itself (and its dataset formats)
# when imported: adding a task is its folder plus its line here.
TASK_PACKAGES = (
    "trainer.tasks.classification",
    "trainer.tasks.detection",
    "trainer.tasks.segmentation",
    "trainer.tasks.instance_segmentation",
)
TASKS = Registry("task", TASK_PACKAGES)
DATASET_FORMATS = Registry("dataset format", TASK_PACKAGES)


def list_schedulers(pattern: str | None = None) -> list[str]:
    return SCHEDULERS.names(pattern)


def list_losses(pattern: str | None = None) -> list[str]:
    return LOSSES.names(pattern)


def list_tasks(pattern: str | None = None) -> list[str]:
    return TASKS.names(pattern)


def list_optimizers(pattern: str | None = None) -> list[str]:
    """Every optimizer timm's factory offers (sgd, momentum, adam, adamw, lamb, lion, ...)."""
    import timm.optim

    return filter_names(timm.optim.list_optimizers(), pattern)
