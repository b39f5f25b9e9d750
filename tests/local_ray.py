"""A real local Ray cluster with token authentication, started with `ray start --head --block`.

It keeps to itself: its own temp dir (so it writes no /tmp/ray/ray_current_cluster, and a
`ray.init()` elsewhere in the session starts its own cluster instead of joining this one), free
ports for every listener, and no RAY_ADDRESS in the test process. It is stopped by killing the
processes it started, found by id (the `ray start` process tree, and the workers that name its
temp dir), never with `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent  # the venv running the tests: vft, ray, hadolint
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any Ray address or token, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class LocalRay:
    token: str
    dashboard: str
    temp_dir: Path
    process: subprocess.Popen
    log: Path
    gcs_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def get(self, path: str, token: str | None) -> int:
        request = urllib.request.Request(self.dashboard + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self) -> None:
        # `ray start` itself only while it runs (with --block): an exited one's pid may be reused
        roots = naming(str(self.temp_dir)) | ({self.process.pid} if self.process.poll() is None else set())
        pids = set().union(*(_descendants(p) for p in roots))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in sorted(pids):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + (4 if sig == signal.SIGTERM else 10)
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
            pids = {p for p in pids if _alive(p)} | naming(str(self.temp_dir))
            if not pids:
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start(
    num_cpus: int = 2, timeout: float = 90, block: bool = True, args: tuple[str, ...] = (), **extra_env: str
) -> LocalRay:
    """`ray start --head` with `args` and `extra_env` added (e.g. RAY_REDIS_ADDRESS).
    `block=False` leaves the Ray processes on their own, as a pod's are: with `--block`, `ray
    start` tears the whole node down when any of them dies, which a test that kills the GCS must
    not have."""
    token = secrets.token_hex(24)
    temp_dir = Path(tempfile.mkdtemp(prefix="vftray-", dir="/tmp"))  # short: unix socket paths
    gcs, dash, agent, agent_grpc, env_agent, metrics, client = free_ports(7)
    log = temp_dir / "ray-start.log"
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", f"--num-cpus={num_cpus}", "--num-gpus=0",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
        "--ray-client-server-port", str(client), "--temp-dir", str(temp_dir),
        "--include-dashboard=true", "--disable-usage-stats", *(["--block"] if block else []), *args,
    ]  # fmt: skip
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **extra_env)
    with log.open("w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = LocalRay(token, f"http://127.0.0.1:{dash}", temp_dir, process, log, gcs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()  # without --block, `ray start` exits 0 once the node is up
        if code is not None and (block or code != 0):
            break
        try:
            if cluster.get("/api/jobs/", token) == 200:
                return cluster
        except OSError:
            pass
        time.sleep(0.5)
    text = log.read_text()
    cluster.stop()
    raise AssertionError(f"the local Ray cluster did not come up in {timeout:.0f}s:\n{text[-3000:]}")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), {pid}, [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def naming(text: str) -> set[int]:
    """Processes whose command line names `text` (this cluster's temp dir)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    """The Prometheus text a metrics port serves: each sample name's (labels, value) pairs."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def metric_total(url: str, name: str, **labels: str) -> float:
    """The sum of `name` over the series carrying `labels` (0 when there are none)."""
    series = scrape(url).get(name, [])
    return sum(value for have, value in series if labels.items() <= have.items())


def wait_for_metric(url: str, name: str, check, timeout: float = 30.0, **labels: str) -> float:
    """Poll until `check(total)` holds for metric_total(url, name, **labels); the total."""
    deadline = time.monotonic() + timeout
    while True:
        total = metric_total(url, name, **labels)
        if check(total) or time.monotonic() > deadline:
            assert check(total), f"{name}{labels} = {total} after {timeout:.0f} s"
            return total
        time.sleep(0.5)
