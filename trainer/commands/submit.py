"""`vft submit`: run train, tune or serve on Kubernetes (KubeRay) or a Ray cluster."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from trainer.console import fail
from trainer.errors import VftError
from trainer.launch.submit import SubmitOptions
from trainer.launch.submit import submit as run_submit


class Workload(str, Enum):
    train = "train"
    tune = "tune"
    serve = "serve"


class Target(str, Enum):
    k8s = "k8s"
    ray = "ray"


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
