"""`vft submit --to ray`: send the rendered RayJob's entrypoint to a running Ray cluster's job
API, or the rendered RayService's serveConfigV2 to its Serve API, with the Ray token if set."""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from trainer.launch.options import CR_PLURALS, SubmitError, SubmitOptions, say

CONFIG_MOUNT = "/config/"


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
