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
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

WORKLOADS = ("train", "tune", "serve")
TARGETS = ("k8s", "ray")
CONFIG_MOUNT = "/config/"
RAY_GROUP, RAY_VERSION = "ray.io", "v1"
CR_PLURALS = {"RayJob": "rayjobs", "RayService": "rayservices"}
# Created in this order; the Ray custom resource comes last so its pods find their ConfigMap.
CREATE_ORDER = ["ServiceAccount", "NetworkPolicy", "ConfigMap", "RayJob", "RayService"]
# Overrides travel through two shells (KubeRay's submitter and the job's): keep them inert.
SAFE_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=[A-Za-z0-9_./:@+=,\[\]-]*$")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SubmitError(Exception):
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


# ----------------------------------------------------------------------------- rendering


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def find_helm() -> str:
    """`VFT_HELM`, else the repository's `.tools/helm` (`make tools`), else `helm` on PATH."""
    candidates = [os.environ.get("VFT_HELM"), str(repo_root() / ".tools" / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SubmitError("helm not found: run `make tools` (installs .tools/helm), or set VFT_HELM or PATH")


def find_chart(chart: Path | None) -> Path:
    path = chart or Path(os.environ.get("VFT_CHART") or repo_root() / "charts" / "vft")
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
    from trainer.config import build_config, merge, parse_overrides, read_yaml
    from trainer.errors import ConfigError

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


# ----------------------------------------------------------------------------- entry point


def submit(opts: SubmitOptions, out: Callable[[str], None] = print) -> int:
    """Render, then create on Kubernetes or send to Ray; the exit code reflects the result."""
    run_name = check_inputs(opts)
    namespace = opts.namespace or (_kube_namespace(opts) if opts.to == "k8s" else "default")
    docs = render(opts, run_name, namespace)
    if opts.to == "k8s":
        if opts.dry_run:
            out(yaml.safe_dump_all(docs, sort_keys=False).rstrip())
            return 0
        return submit_k8s(docs, namespace, opts)
    return submit_ray(docs, opts, out)


# ----------------------------------------------------------------------------- kubernetes


def _kube_namespace(opts: SubmitOptions) -> str:
    """The kubeconfig context's namespace, else `default`."""
    from kubernetes import config as kube_config

    try:
        contexts, active = kube_config.list_kube_config_contexts(
            config_file=str(opts.kubeconfig) if opts.kubeconfig else None
        )
    except Exception:  # noqa: BLE001 - no kubeconfig: in-cluster or a dry run
        return "default"
    if opts.context:
        active = next((c for c in contexts if c["name"] == opts.context), active)
    return (active or {}).get("context", {}).get("namespace") or "default"


def kube_client(opts: SubmitOptions):
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.config.config_exception import ConfigException

    try:
        kube_config.load_kube_config(
            config_file=str(opts.kubeconfig) if opts.kubeconfig else None, context=opts.context
        )
    except (ConfigException, FileNotFoundError, OSError) as exc:
        try:
            kube_config.load_incluster_config()
        except ConfigException:
            raise SubmitError(f"--kubeconfig: no usable Kubernetes configuration ({exc})") from None
    return client.ApiClient()


class KubeObjects:
    """Create, read and replace the chart's kinds through the kubernetes client."""

    def __init__(self, api_client):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create(self, doc: dict, ns: str) -> None:
        kind = doc["kind"]
        if kind == "ConfigMap":
            self.core.create_namespaced_config_map(ns, doc)
        elif kind == "ServiceAccount":
            self.core.create_namespaced_service_account(ns, doc)
        elif kind == "NetworkPolicy":
            self.net.create_namespaced_network_policy(ns, doc)
        elif kind in CR_PLURALS:
            self.custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, CR_PLURALS[kind], doc)
        else:
            raise SubmitError(f"the chart rendered a {kind}, which `vft submit` does not create")

    def replace(self, doc: dict, ns: str) -> None:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap":
            self.core.replace_namespaced_config_map(name, ns, doc)
        elif kind == "ServiceAccount":
            self.core.replace_namespaced_service_account(name, ns, doc)
        elif kind == "NetworkPolicy":
            self.net.replace_namespaced_network_policy(name, ns, doc)
        elif kind == "RayService":  # a new model or config: KubeRay upgrades it without downtime
            self.custom.patch_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, "rayservices", name, doc)
        else:
            raise SubmitError(
                f"{kind} {ns}/{name} already exists: delete it "
                f"(kubectl -n {ns} delete {kind.lower()} {name}) or submit with another --name"
            )

    def get(self, kind: str, name: str, ns: str) -> dict:
        return self.custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, CR_PLURALS[kind], name)


def submit_k8s(docs: list[dict], namespace: str, opts: SubmitOptions) -> int:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api = KubeObjects(kube_client(opts))
    docs = sorted(docs, key=lambda d: CREATE_ORDER.index(d["kind"]) if d["kind"] in CREATE_ORDER else 99)
    try:
        for doc in docs:
            ref = f"{doc['kind']} {namespace}/{doc['metadata']['name']}"
            try:
                api.create(doc, namespace)
                say(f"created {ref}")
            except ApiException as exc:
                if exc.status != 409:
                    raise
                api.replace(doc, namespace)
                say(f"updated {ref}")
    except ApiException as exc:
        message = f"{exc.status} {exc.reason}: {_api_message(exc)}"
        raise SubmitError(f"Kubernetes refused the objects: {message}") from None
    except HTTPError as exc:
        raise SubmitError(f"cannot reach the Kubernetes API: {exc}") from None
    main = next(d for d in docs if d["kind"] in CR_PLURALS)
    return watch(api, main["kind"], main["metadata"]["name"], namespace, opts)


def _api_message(exc) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)


def watch(api: KubeObjects, kind: str, name: str, ns: str, opts: SubmitOptions) -> int:
    """Poll the RayJob or RayService until it settles; 0 on success, 1 on failure or timeout."""
    from kubernetes.client.exceptions import ApiException

    started = time.monotonic()
    seen = None
    follower = None
    while True:
        try:
            obj = api.get(kind, name, ns)
        except ApiException as exc:
            if exc.status == 404:
                say(f"{kind} {ns}/{name} was deleted")
                return 1
            raise
        status = obj.get("status") or {}
        state, outcome = job_outcome(status) if kind == "RayJob" else service_outcome(status)
        if state != seen:
            say(f"{kind} {ns}/{name}: {state}")
            seen = state
        running = status.get("jobDeploymentStatus") in ("Running", "Complete", "Failed")
        if opts.follow and kind == "RayJob" and follower is None and running:
            follower = threading.Thread(target=follow_submitter, args=(api, name, ns), daemon=True)
            follower.start()
        if outcome is not None:
            if follower is not None:
                follower.join(timeout=30)
            if outcome != 0:
                detail = status.get("message") or status.get("reason") or state
                say(f"{kind} {ns}/{name} failed: {detail}")
            return outcome
        if opts.timeout and time.monotonic() - started > opts.timeout:
            say(f"{kind} {ns}/{name}: still {state} after {opts.timeout:.0f}s (--timeout); it keeps running")
            return 1
        time.sleep(opts.poll_interval)


def job_outcome(status: dict) -> tuple[str, int | None]:
    deployment = status.get("jobDeploymentStatus") or "New"
    job = status.get("jobStatus") or ""
    state = f"{deployment}" + (f" (job {job})" if job else "")
    if deployment == "Complete":
        return state, 0 if job == "SUCCEEDED" else 1
    if deployment in ("Failed", "ValidationFailed"):
        return state, 1
    return state, None


def service_outcome(status: dict) -> tuple[str, int | None]:
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    if ready.get("status") == "True":
        return "Ready", 0
    reason = ready.get("reason") or "Initializing"
    if reason in ("InitializingTimeout", "ValidationFailed"):
        return reason, 1
    return reason, None


def follow_submitter(api: KubeObjects, name: str, ns: str) -> None:
    """Stream the submitter pod's output: `ray job logs --follow`, i.e. the driver's logs."""
    from kubernetes.client.exceptions import ApiException

    for _ in range(120):
        pods = api.core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={name}").items
        started = [p for p in pods if p.status and p.status.phase in ("Running", "Succeeded", "Failed")]
        if started:
            pod = started[-1].metadata.name
            try:
                stream = api.core.read_namespaced_pod_log(pod, ns, follow=True, _preload_content=False)
                for chunk in stream.stream():
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
            except ApiException as exc:
                say(f"cannot read the logs of pod {ns}/{pod}: {exc.reason}")
            return
        time.sleep(1)


# ----------------------------------------------------------------------------- ray


def ray_token() -> str | None:
    """The Ray token, where Ray looks for it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        if not Path(path).is_file():
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH {path}: file not found")
        return Path(path).read_text().strip() or None
    default = Path.home() / ".ray" / "auth_token"
    return (default.read_text().strip() or None) if default.is_file() else None


def ray_headers() -> dict[str, str]:
    token = ray_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_submission(docs: list[dict]) -> tuple[str, dict[str, str]]:
    """The rendered RayJob's entrypoint, its /config paths made relative, and the files they name."""
    job = next(d for d in docs if d["kind"] == "RayJob")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    args = [a.removeprefix(CONFIG_MOUNT) for a in shlex.split(job["spec"]["entrypoint"])]
    return shlex.join(args), dict(config_map["data"])


def submit_ray(docs: list[dict], opts: SubmitOptions, out: Callable[[str], None]) -> int:
    if opts.workload == "serve":
        return deploy_serve(docs, opts, out)
    entrypoint, files = job_submission(docs)
    if opts.dry_run:
        plan = {"address": opts.address, "entrypoint": entrypoint, "working_dir": files}
        out(yaml.safe_dump(plan, sort_keys=False).rstrip())
        return 0
    from ray.exceptions import RayError
    from ray.job_submission import JobStatus, JobSubmissionClient

    with tempfile.TemporaryDirectory(prefix="vft-submit-") as workdir:
        for name, text in files.items():
            Path(workdir, name).write_text(text)
        try:
            client = JobSubmissionClient(opts.address, headers=ray_headers())
            job_id = client.submit_job(
                entrypoint=entrypoint,
                runtime_env={"working_dir": workdir},
                metadata={"vft.workload": opts.workload, "vft.run": docs_run_name(docs)},
            )
        except (ConnectionError, RuntimeError, RayError) as exc:
            raise SubmitError(f"--address {opts.address}: the Ray job API refused the job: {exc}") from None
    say(f"submitted Ray job {job_id} to {opts.address}: {entrypoint}")
    if opts.follow:
        import asyncio

        async def tail() -> None:
            async for lines in client.tail_job_logs(job_id):
                sys.stdout.write(lines)
                sys.stdout.flush()

        asyncio.run(tail())
    started = time.monotonic()
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            break
        if opts.timeout and time.monotonic() - started > opts.timeout:
            say(f"Ray job {job_id}: still {status.value} after {opts.timeout:.0f}s (--timeout); it goes on")
            return 1
        time.sleep(min(opts.poll_interval, 2.0))
    say(f"Ray job {job_id}: {status.value}")
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        if info.message:
            say(info.message)
        return 1
    return 0


def docs_run_name(docs: list[dict]) -> str:
    return next(d for d in docs if d["kind"] in CR_PLURALS)["metadata"]["name"]


def deploy_serve(docs: list[dict], opts: SubmitOptions, out: Callable[[str], None]) -> int:
    """Send the RayService's serveConfigV2 to the cluster's Serve API; wait for the app."""
    service = next(d for d in docs if d["kind"] == "RayService")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    if opts.dry_run:
        out(yaml.safe_dump(serve_config, sort_keys=False).rstrip())
        return 0
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
    from ray.exceptions import RayError

    try:
        client = ServeSubmissionClient(opts.address, headers=ray_headers())
        client.deploy_applications(serve_config)
    except (ConnectionError, RuntimeError, RayError) as exc:
        raise SubmitError(f"--address {opts.address}: the Ray Serve API refused the config: {exc}") from None
    say(f"deployed {', '.join(a['name'] for a in serve_config['applications'])} to {opts.address}")
    started = time.monotonic()
    while True:
        apps = client.get_serve_details().get("applications", {})
        states = {name: app.get("status") for name, app in apps.items()}
        if states and all(s == "RUNNING" for s in states.values()):
            return 0
        bad = ("DEPLOY_FAILED", "UNHEALTHY")
        failed = {n: apps[n].get("message", "") for n, s in states.items() if s in bad}
        if failed:
            for app_name, message in failed.items():
                say(f"Serve application {app_name} failed: {message}")
            return 1
        if opts.timeout and time.monotonic() - started > opts.timeout:
            say(f"Serve applications still {states} after {opts.timeout:.0f}s (--timeout)")
            return 1
        time.sleep(min(opts.poll_interval, 2.0))
