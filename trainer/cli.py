"""The `vft` console script. Each subcommand parses its arguments and calls one function.

Exit codes: 0 success, 1 run failed, 2 bad usage or invalid config/input.
"""

from __future__ import annotations

import logging
import traceback
from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trainer import registry
from trainer.components.synthetic import digits, shifted_domain
from trainer.config import load_config, to_yaml
from trainer.console import err, fail, out
from trainer.driver import RunFailed, run_dir_of, summary_table
from trainer.driver import train as run_training
from trainer.errors import VftError
from trainer.launch.submit import SubmitOptions
from trainer.launch.submit import submit as run_submit
from trainer.tasks.base import get_task

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune, sweep, export and serve vision models."
)
data_app = typer.Typer(no_args_is_help=True, help="Generate example datasets.")
app.add_typer(data_app, name="data")


Task = Enum("Task", {name: name for name in registry.list_tasks()}, type=str)  # registered tasks


class Listing(str, Enum):
    models = "models"
    optimizers = "optimizers"
    schedulers = "schedulers"
    losses = "losses"
    tasks = "tasks"


@data_app.command("digits")
def data_digits(
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    size: Annotated[int, typer.Option(help="image side in pixels")] = 32,
) -> None:
    """scikit-learn's real handwritten digits, in the ImageFolder layout (train/ and val/)."""
    counts = digits(out_dir, size=size)
    out.print(f"wrote {counts['train']} train and {counts['val']} val digits to {out_dir}")


@data_app.command("shapes")
def data_shapes(
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    task: Annotated[Task, typer.Option(help="what the labels describe")] = Task.classification,
    n_train: Annotated[int, typer.Option(min=1)] = 400,
    n_val: Annotated[int, typer.Option(min=1)] = 100,
    size: Annotated[int, typer.Option(min=16)] = 64,
    seed: int = 0,
) -> None:
    """Generated shapes on textured backgrounds in the task's dataset layout: ImageFolder
    (classification), COCO instances JSON + images/ (detection) or mask folders (segmentation:
    images/, masks/ of class indices, classes.txt)."""
    counts = get_task(task.value).write_example_data(out_dir, n_train, n_val, size, seed)
    out.print(f"wrote {counts['train']} train and {counts['val']} val images ({task.value}) to {out_dir}")


@data_app.command("shift")
def data_shift(
    src: Annotated[Path, typer.Option(help="an ImageFolder tree, e.g. data/digits/val")],
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")],
    seed: int = 0,
) -> None:
    """Another domain of the same classes: images recoloured over textured backgrounds (`vft eval`)."""
    if not src.is_dir():
        fail(f"--src: {src} is not a folder")
    out.print(f"wrote {shifted_domain(src, out_dir, seed)} shifted images to {out_dir}")


@app.command()
def validate(
    config: Path, overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value")] = None
) -> None:
    """Print the resolved config, or the errors (exit code 2)."""
    try:
        cfg = load_config(config, overrides or [])
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    out.print(to_yaml(cfg), highlight=False, end="")


@app.command("ls")
def list_components(what: Listing, pattern: Annotated[str | None, typer.Argument()] = None) -> None:
    """List registered names: models (timm and torchvision, per task), optimizers, schedulers, losses,
    tasks."""
    if what == Listing.models:
        rows = [
            (name, task, source)
            for task in registry.list_tasks()
            for name, source in get_task(task).model_names(pattern)
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


@app.command()
def train(
    config: Path,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local cluster)")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: the config file's name)")] = None,
    quiet: Annotated[bool, typer.Option(help="no live progress")] = False,
) -> None:
    """Fine-tune on a Ray cluster; resumes RUN_DIR if it holds a checkpoint."""
    try:
        cfg = load_config(config, overrides or [], name=name)
        get_task(cfg.task).check_data(cfg)  # fail fast, before any cluster starts, on an unusable dataset
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    logging.basicConfig(level=logging.WARNING)
    err.print(f"run dir: {run_dir_of(cfg)}")
    try:
        summary = run_training(cfg, address=address, quiet=quiet)
    except RunFailed as exc:
        if isinstance(exc.worker_error, VftError):  # bad input found by a worker: its own exit code
            fail(str(exc.worker_error), exc.worker_error.exit_code)
        trace = "".join(traceback.format_exception(exc.worker_error)).rstrip()
        err.print(trace, highlight=False, markup=False)
        fail(f"training failed: {exc}", 1)
    out.print(summary_table(summary, cfg))


class Workload(str, Enum):
    train = "train"
    tune = "tune"
    serve = "serve"


class Target(str, Enum):
    k8s = "k8s"
    ray = "ray"


@app.command()
def submit(
    workload: Workload,
    config: Path,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value")] = None,
    to: Annotated[Target, typer.Option(help="k8s (KubeRay) or ray (a running cluster)")] = Target.k8s,
    address: Annotated[str | None, typer.Option(help="--to ray: the dashboard, http://HOST:8265")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="default: the context's")] = None,
    name: Annotated[str | None, typer.Option(help="run name (default: the config file's name)")] = None,
    space: Annotated[Path | None, typer.Option(help="tune: the search space file")] = None,
    values: Annotated[list[Path] | None, typer.Option("--values", "-f", help="Helm values file")] = None,
    set_values: Annotated[list[str] | None, typer.Option("--set", help="Helm value, key=value")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the YAML, create nothing")] = False,
    follow: Annotated[bool, typer.Option(help="stream the driver's logs")] = False,
    timeout: Annotated[float, typer.Option(help="stop watching after N seconds (0: never)")] = 0.0,
    poll_interval: Annotated[float, typer.Option(hidden=True)] = 5.0,
    kubeconfig: Annotated[Path | None, typer.Option(help="default: $KUBECONFIG or ~/.kube/config")] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context")] = None,
    chart: Annotated[Path | None, typer.Option(help="the Helm chart (default: charts/vft)")] = None,
) -> None:
    """Run train, tune or serve on Kubernetes (KubeRay) or a Ray cluster, from the Helm chart."""
    options = SubmitOptions(
        workload=workload.value, config=config, overrides=overrides or [], to=to.value, address=address,
        namespace=namespace, name=name, space=space, values=values or [], set_values=set_values or [],
        dry_run=dry_run, follow=follow, timeout=timeout, poll_interval=poll_interval,
        kubeconfig=kubeconfig, context=context, chart=chart,
    )  # fmt: skip
    try:
        code = run_submit(options)
    except VftError as exc:
        fail(str(exc), exc.exit_code)
    raise typer.Exit(code)


def add_plugin_commands() -> None:
    """Subcommands from the `vft.commands` entry points (tuner, serving): `trainer` depends on
    neither package, they plug in."""
    for ep in sorted(entry_points(group="vft.commands"), key=lambda ep: ep.name):
        app.command(ep.name)(ep.load())


add_plugin_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
