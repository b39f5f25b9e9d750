"""`vft validate` (the resolved config, or its errors) and `vft ls` (registered names)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trainer import registry
from trainer.components import hf_models
from trainer.config import load_config, to_yaml
from trainer.console import fail, out
from trainer.errors import VftError
from trainer.tasks.base import get_task


class Listing(str, Enum):
    models = "models"
    optimizers = "optimizers"
    schedulers = "schedulers"
    losses = "losses"
    tasks = "tasks"


def validate(
    config: Path, overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value")] = None
) -> None:
    """Print the resolved config, or the errors (exit code 2)."""
    try:
        cfg = load_config(config, overrides or [])
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    out.print(to_yaml(cfg), highlight=False, end="")


class ModelSource(str, Enum):
    timm = "timm"
    torchvision = "torchvision"
    hf = "hf"


def list_components(
    what: Listing,
    pattern: Annotated[str | None, typer.Argument()] = None,
    source: Annotated[ModelSource | None, typer.Option(help="models of one source only")] = None,
) -> None:
    """List registered names: models (timm and torchvision, per task; `--source hf` names the
    transformers model types that work), optimizers, schedulers, losses, tasks."""
    if what == Listing.models and source == ModelSource.hf:
        _explain_hf()
        return
    if what == Listing.models:
        rows = [
            (name, task, sources)
            for task in registry.list_tasks()
            for name, sources in get_task(task).model_names(pattern)
            if source is None or source.value in sources.split(", ")
        ]
        table = Table("model", "task", "source")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        out.print(f"{len(rows)} models")
        return
    names = getattr(registry, f"list_{what.value}")(pattern)
    for name in names:
        out.print(name, highlight=False)


def _explain_hf() -> None:
    out.print(
        "model.source: hf takes any Hugging Face Hub id (org/name) or save_pretrained directory "
        "whose config's model type is one of these:",
        highlight=False,
    )
    for kind in hf_models.KINDS:
        out.print(f"  {kind}: {', '.join(hf_models.supported_types(kind))}", highlight=False, soft_wrap=True)
