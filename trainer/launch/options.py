"""What `vft submit` takes (SubmitOptions), its error, and its status output."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import VftError

WORKLOADS = ("train", "tune", "serve")
TARGETS = ("k8s", "ray")
CR_PLURALS = {"RayJob": "rayjobs", "RayService": "rayservices"}  # the chart's custom resources


class SubmitError(VftError):
    """Bad input to `vft submit` (exit code 2); the message names the field or file."""


@dataclass
class SubmitOptions:
    workload: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    to: str = "k8s"
    address: str | None = None
    namespace: str | None = None
    name: str | None = None
    space: Path | None = None
    values: list[Path] = field(default_factory=list)
    set_values: list[str] = field(default_factory=list)
    dry_run: bool = False
    follow: bool = False
    timeout: float = 0.0
    poll_interval: float = 5.0
    kubeconfig: Path | None = None
    context: str | None = None
    chart: Path | None = None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
