"""`vft data`: example datasets (scikit-learn's digits, generated shapes for any task, a shifted
domain for `vft eval`) and prepared (downscaled) copies of image folders."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from trainer import registry
from trainer.components.prepare import prepare_images
from trainer.components.synthetic import digits, shifted_domain
from trainer.console import fail, out
from trainer.errors import VftError
from trainer.tasks.base import get_task

app = typer.Typer(no_args_is_help=True, help="Example datasets, and prepared (downscaled) copies of yours.")
Task = Enum("Task", {name: name for name in registry.list_tasks()}, type=str)  # registered tasks


@app.command("digits")
def data_digits(
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    size: Annotated[int, typer.Option(help="image side in pixels")] = 32,
) -> None:
    """scikit-learn's real handwritten digits, in the ImageFolder layout (train/ and val/)."""
    counts = digits(out_dir, size=size)
    out.print(f"wrote {counts['train']} train and {counts['val']} val digits to {out_dir}")


@app.command("shapes")
def data_shapes(
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    task: Annotated[Task, typer.Option(help="what the labels describe")] = Task.classification,
    n_train: Annotated[int, typer.Option(min=1)] = 400,
    n_val: Annotated[int, typer.Option(min=1)] = 100,
    size: Annotated[int, typer.Option(min=16)] = 64,
    seed: int = 0,
) -> None:
    """Generated shapes on textured backgrounds in the task's dataset layout: ImageFolder
    (classification), COCO instances JSON + images/ (detection; instance_segmentation, with an
    RLE mask per object, shapes touching and overlapping) or mask folders (segmentation:
    images/, masks/ of class indices, classes.txt)."""
    counts = get_task(task.value).write_example_data(out_dir, n_train, n_val, size, seed)
    out.print(f"wrote {counts['train']} train and {counts['val']} val images ({task.value}) to {out_dir}")


@app.command("shift")
def data_shift(
    src: Annotated[Path, typer.Option(help="an ImageFolder tree, e.g. data/digits/val")],
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    seed: int = 0,
) -> None:
    """Another domain of the same classes: images recoloured over textured backgrounds (`vft eval`)."""
    if not src.is_dir():
        fail(f"--src: {src} is not a folder")
    out.print(f"wrote {shifted_domain(src, out_dir, seed)} shifted images to {out_dir}")


@app.command("prepare")
def data_prepare(
    src: Annotated[
        Path,
        typer.Argument(help="a dataset folder: ImageFolder/CSV, COCO or YOLO, mask folders"),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    size: Annotated[int, typer.Option(min=8, help="the model's input size")] = 224,
    short_side: Annotated[
        int | None, typer.Option(min=8, help="shorter side of the copies (default: 2 x --size)")
    ] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality")] = 95,
) -> None:
    """A downscaled copy for fast training: images no larger than needed (shorter side 2 x the
    input size by default, so random crops keep detail), the same layout, names and manifests;
    masks and COCO boxes rescaled with their images."""
    side = short_side or 2 * size
    try:
        counts = prepare_images(src, out_dir, side, quality)
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    out.print(
        f"wrote {out_dir}: {counts['resized']} images resized to a {side}-px shorter side, "
        f"{counts['kept']} already small enough, {counts['copied']} other files copied, "
        f"{counts['coco']} COCO annotation files rescaled"
    )
