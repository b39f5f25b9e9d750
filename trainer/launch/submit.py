"""`vft submit`: run `vft train`, `vft tune` or a Ray Serve app on a cluster.

The Helm chart (charts/vft) is the one source of truth: `helm template` renders it, and

- `--to k8s` creates the rendered objects (ServiceAccount, NetworkPolicy, ConfigMap, and the
  RayJob or RayService) with the kubernetes client, then watches the status until the job
  succeeds or fails (with `--follow`, streaming the driver's logs from the submitter pod);
- `--to ray` sends the rendered RayJob's entrypoint to a running Ray cluster's job API with
  Ray's `JobSubmissionClient` (the ConfigMap's files travel as the job's working_dir), or the
  rendered RayService's `serveConfigV2` to its Serve API, with the Ray token when one is set.

Exit codes: 0 success, 1 the job failed (or the watch timed out), 2 bad input.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from trainer.config import build_config, merge, parse_overrides, read_yaml
from trainer.errors import ConfigError
from trainer.launch.kube import kube_namespace, submit_k8s
from trainer.launch.options import TARGETS, WORKLOADS, SubmitError, SubmitOptions
from trainer.launch.ray_jobs import submit_ray

SAFE_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=[A-Za-z0-9_./:@+=,\[\]-]*$")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# The chart ships inside the package (`trainer/launch/chart` links to charts/vft in a checkout
# and is copied into the wheel), so an installed `vft submit` finds it.
PACKAGED_CHART = Path(__file__).resolve().parent / "chart"
CHECKOUT_TOOLS = Path(__file__).resolve().parents[2] / ".tools"  # `make tools` in a checkout


def find_helm() -> str:
    """`VFT_HELM`, else the checkout's `.tools/helm` (`make tools`), else `helm` on PATH."""
    candidates = [os.environ.get("VFT_HELM"), str(CHECKOUT_TOOLS / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SubmitError("helm not found: run `make tools` (installs .tools/helm), or set VFT_HELM or PATH")


def find_chart(chart: Path | None) -> Path:
    path = chart or Path(os.environ.get("VFT_CHART") or PACKAGED_CHART)
    if not (path / "Chart.yaml").is_file():
        raise SubmitError(f"--chart: {path} is not a Helm chart (no Chart.yaml); set --chart or VFT_CHART")
    return path


def release_name(run_name: str, workload: str) -> str:
    """A DNS-1123 release name, one per run and workload: `<run>-<workload>`."""
    base = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")[:30].strip("-") or "run"
    return f"{base}-{workload}"


def submission_values(opts: SubmitOptions, run_name: str) -> dict[str, Any]:
    """The submission's own chart values: the workload, run name, config (and space) file texts."""
    values: dict[str, Any] = {"workload": opts.workload, "run": {"name": run_name}}
    values["configFile"] = opts.config.read_text()
    if opts.overrides:
        values["run"]["overrides"] = list(opts.overrides)
    if opts.space is not None:
        values["tune"] = {"spaceFile": opts.space.read_text()}
    return values


def render(opts: SubmitOptions, run_name: str, namespace: str) -> list[dict[str, Any]]:
    """`helm template` the chart with the user's values files, then the submission's values, then
    the user's --set; every object gets `namespace`."""
    helm = find_helm()
    chart = find_chart(opts.chart)
    with tempfile.TemporaryDirectory(prefix="vft-values-") as tmp:
        own = Path(tmp, "submission.yaml")
        own.write_text(yaml.safe_dump(submission_values(opts, run_name), sort_keys=False))
        cmd = [helm, "template", release_name(run_name, opts.workload), str(chart), "--namespace", namespace]
        for path in [*opts.values, own]:
            cmd += ["-f", str(path)]
        for item in opts.set_values:
            cmd += ["--set", item]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        message = proc.stderr.strip().removeprefix("Error: ")
        raise SubmitError(f"the chart rejected these values:\n{message}")
    docs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = namespace
    return docs


def check_inputs(opts: SubmitOptions) -> str:
    """Fail fast (exit 2) on bad input; returns the run name."""

    if opts.workload not in WORKLOADS:
        raise SubmitError(f"workload '{opts.workload}': allowed: {', '.join(WORKLOADS)}")
    if opts.to not in TARGETS:
        raise SubmitError(f"--to '{opts.to}': allowed: {', '.join(TARGETS)}")
    if opts.to == "ray" and not opts.address:
        raise SubmitError("--address: --to ray needs the Ray dashboard's address, e.g. http://127.0.0.1:8265")
    if opts.to == "ray" and not re.match(r"^https?://[^\s/]+", opts.address):
        raise SubmitError(f"--address '{opts.address}': expected http://HOST:PORT (the Ray dashboard)")
    for path in opts.values:
        if not Path(path).is_file():
            raise SubmitError(f"--values {path}: file not found")
    if opts.workload == "tune":
        if opts.space is None:
            raise SubmitError("--space: `vft submit tune` needs the search space file")
        if not opts.space.is_file():
            raise SubmitError(f"--space {opts.space}: file not found")
        try:
            space = yaml.safe_load(opts.space.read_text())
        except yaml.YAMLError as exc:
            raise SubmitError(f"--space {opts.space}: not valid YAML ({exc})") from None
        if not isinstance(space, dict):
            raise SubmitError(f"--space {opts.space}: top level must be a mapping")
    elif opts.space is not None:
        raise SubmitError(f"--space: only `vft submit tune` takes a search space, not '{opts.workload}'")
    try:
        raw = merge(read_yaml(opts.config), parse_overrides(list(opts.overrides)))
    except ConfigError as exc:
        raise SubmitError(str(exc)) from None
    for item in opts.overrides:
        if not SAFE_OVERRIDE.match(item):
            raise SubmitError(
                f"override '{item}': values sent to a cluster may hold only letters, digits and _./:@+=,[]-"
            )
    run_section = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    run_name = opts.name or run_section.get("name") or opts.config.stem
    if not RUN_NAME.match(str(run_name)):
        raise SubmitError(f"run.name '{run_name}': use letters, digits, '.', '_' and '-'")
    if isinstance(raw.get("run", {}), dict):
        raw["run"] = {**raw.get("run", {}), "name": run_name}
    try:
        build_config(raw, local_paths=False)  # data and weights paths are the cluster's
    except ConfigError as exc:
        raise SubmitError(f"{opts.config}:\n{exc}") from None
    return str(run_name)


def submit(opts: SubmitOptions, out: Callable[[str], None] = print) -> int:
    """Render, then create on Kubernetes or send to Ray; the exit code reflects the result."""
    run_name = check_inputs(opts)
    namespace = opts.namespace or (kube_namespace(opts) if opts.to == "k8s" else "default")
    docs = render(opts, run_name, namespace)
    if opts.to == "k8s":
        if opts.dry_run:
            out(yaml.safe_dump_all(docs, sort_keys=False).rstrip())
            return 0
        return submit_k8s(docs, namespace, opts)
    return submit_ray(docs, opts, out)
