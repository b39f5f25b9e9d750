"""What `vft eval` takes: its options, the `--data` domains, and its error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.components import robustness as R
from trainer.errors import VftError

DEFAULT_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


class EvalError(VftError):
    """Evaluation cannot start: bad data, run or option (exit code 2)."""


@dataclass
class EvalOptions:
    corruptions: tuple[str, ...] = field(default_factory=lambda: tuple(R.list_corruptions()))
    severities: tuple[int, ...] = R.SEVERITIES
    eps: tuple[float, ...] = DEFAULT_EPS
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    pgd_steps: int = 10
    max_images: int = 1000
    batch_size: int = 64
    n_bins: int = 15
    seed: int = 0


def parse_domains(specs: list[str]) -> list[tuple[str, Path]]:
    """`PATH` or `NAME=PATH` items; names default to the folder's name and are unique."""
    domains: list[tuple[str, Path]] = []
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path)
        name = name or path.name or "data"
        if name in {n for n, _ in domains}:
            name = f"{name}-{len(domains) + 1}"
        domains.append((name, path))
    if not domains:
        raise EvalError("--data: give at least one dataset")
    return domains
