"""`vft tune`: the console-script subcommand (registered through the `vft.commands` entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def tune(
    config: Path,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value")] = None,
    space: Annotated[Path | None, typer.Option(help="the search space file (YAML)")] = None,
) -> None:
    """Sweep hyperparameters with Ray Tune; each trial is a distributed training run."""
    raise NotImplementedError
