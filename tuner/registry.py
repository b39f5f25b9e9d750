"""Ray Tune components by registered name (a space file names them, never an import path):
trial schedulers and search algorithms, registered by `tuner.components`."""

from __future__ import annotations

from trainer.registry import Registry

SCHEDULERS = Registry("tune scheduler", "tuner.components")
SEARCHERS = Registry("search", "tuner.components")
