"""`vft ui`: the tracked runs of a run storage in MLflow's UI (the embedded store,
STORAGE/mlflow.db, with its artifacts) or TensorBoard (every run's tb/ folder), bound to
127.0.0.1 unless told otherwise. Ctrl-C stops it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from trainer.console import err, fail


class UiBackend(str, Enum):
    mlflow = "mlflow"
    tensorboard = "tensorboard"


def ui_command(storage: Path, backend: UiBackend, host: str, port: int) -> list[str]:
    """The server's command line (exit 2 when the storage holds nothing it could show)."""
    if backend is UiBackend.tensorboard:
        if not any(storage.glob("**/tb/events.out.tfevents.*")):
            fail(f"{storage}: no TensorBoard event files (train with track.backend=tensorboard)", 2)
        return [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(storage),
            "--host",
            host,
            "--port",
            str(port),
        ]
    db = storage / "mlflow.db"
    if not db.is_file():
        fail(f"{db}: not found (runs tracked with the default track.backend=mlflow write it)", 2)
    store = f"sqlite:///{db.resolve()}"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
            "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip


def ui(
    storage: Annotated[Path, typer.Argument(help="run.storage of the runs to show")] = Path("runs"),
    backend: Annotated[UiBackend, typer.Option(help="mlflow or tensorboard")] = UiBackend.mlflow,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 5000,
) -> None:
    """Browse tracked runs, sweeps and registered models (MLflow) or event files (TensorBoard)."""
    command = ui_command(storage, backend, host, port)
    err.print(f"{backend.value} UI of {storage} at http://{host}:{port}  (Ctrl-C stops)", highlight=False)
    # MLflow's background job runner (prompt optimization and the like) is not needed to browse
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # its own process group: Ctrl-C or a SIGTERM here stops the server and its workers together
    server = subprocess.Popen(command, env=env, start_new_session=True)

    def stop(*_) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    code = server.wait()
    raise typer.Exit(0 if code in (0, -signal.SIGTERM) else code)
