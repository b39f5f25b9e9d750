"""A real MLflow tracking server for the tests (`mlflow server` on localhost, SQLite backend,
artifacts served from a local folder), and what the tracking tests read back from it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from local_ray import free_ports


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen
    log: Path

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server not up after {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """The server and its uvicorn worker (its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start_mlflow_server(folder: Path, port: int | None = None) -> MlflowServer:
    """`mlflow server` with a SQLite store and proxied artifacts under `folder` (not waited for:
    call wait_ready)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_ports(1)[0]
    log = folder / "server.log"
    store = f"sqlite:///{folder / 'mlflow.db'}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--artifacts-destination", str(folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return MlflowServer(f"http://127.0.0.1:{port}", process, log)


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def tracked_run(run_dir: Path):
    """(client, run) of a run directory's MLflow run (RUN_DIR/tracking.json)."""
    state = json.loads((Path(run_dir) / "tracking.json").read_text())
    client = mlflow_client(state["uri"])
    return client, client.get_run(state["run_id"])


def steps(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    """Every file under `path` of the run's artifacts, recursively."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found
