"""MLflow as a tracking backend (`track.backend: mlflow`, the default) and the MLflow client the
model registry uses (trainer/components/model_registry.py).

The tracking URI is `track.uri`, else $MLFLOW_TRACKING_URI, else an embedded SQLite store beside
the runs (`sqlite:///<run.storage>/mlflow.db`; MLflow 3 has no file store). A run's MLflow run id
is kept in RUN_DIR/tracking.json, so a resumed run (and `vft export`) continues the same MLflow
run. A tracking server that does not answer fails fast: two retries, 10 s per request, unless
MLFLOW_HTTP_REQUEST_* say otherwise; MLflow's own run-URL lines stay off the command's stdout.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from trainer.components.checkpoint import is_remote, join
from trainer.components.runlog import read_text, write_text
from trainer.components.tracking import TRACKERS, RunInfo, TrackOptions, numeric
from trainer.errors import ConfigError

for _key, _value in {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # stdout is the command's (summary, JSON)
}.items():
    os.environ.setdefault(_key, _value)

STATE_FILE = "tracking.json"
PARAMS_PER_CALL = 100  # MLflow's log_batch limit


def tracking_uri(uri: str | None, storage: str) -> str:
    """`track.uri`, else $MLFLOW_TRACKING_URI, else the embedded store in `storage`."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if is_remote(storage):
        raise ConfigError(
            f"track.uri: MLflow's embedded store is a SQLite file and run.storage is {storage}; set "
            "track.uri (or MLFLOW_TRACKING_URI) to a tracking server, or track.backend=none"
        )
    return f"sqlite:///{Path(storage).resolve() / 'mlflow.db'}"


def client(uri: str):
    from mlflow.tracking import MlflowClient  # 1-2 s: only where tracking is on

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its table creation at INFO
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_root(uri: str) -> str | None:
    """Where an embedded store's experiments keep their artifacts: `mlartifacts/` beside the
    database (MLflow's default, ./mlruns, would be wherever the command runs). A server
    decides for itself (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").as_uri()


def experiment_id(mlflow_client, name: str, uri: str) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_root(uri))
    except Exception:  # another process created it meanwhile
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def read_state(run_dir: str) -> dict | None:
    """RUN_DIR/tracking.json: {"uri", "run_id", "experiment_id"} of the run's MLflow run."""
    text = read_text(join(run_dir, STATE_FILE))
    return json.loads(text) if text else None


def log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(items), PARAMS_PER_CALL):
        mlflow_client.log_batch(run_id, params=items[i : i + PARAMS_PER_CALL])


def log_epoch(mlflow_client, run_id: str, record: dict) -> None:
    """An epoch's figures at step = epoch, and `epoch` itself: where a resumed run goes on."""
    from mlflow.entities import Metric

    now, step = int(time.time() * 1000), int(record["epoch"])
    metrics = [Metric(k, v, now, step) for k, v in numeric(record).items()]
    metrics.append(Metric("epoch", step, now, step))
    mlflow_client.log_batch(run_id, metrics=metrics)


def logged_epochs(mlflow_client, run_id: str) -> int:
    """The last epoch a run has logged (0: none)."""
    return int(mlflow_client.get_run(run_id).data.metrics.get("epoch", 0))


def log_files(mlflow_client, run_id: str, files: dict[str, bytes], under: str | None = None) -> None:
    """Artifacts from bytes (artifact path -> content)."""
    if not files:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            Path(tmp, name).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, name).write_bytes(content)
        mlflow_client.log_artifacts(run_id, tmp, under)


@TRACKERS.register("mlflow")
class MlflowBackend:
    name = "mlflow"

    def __init__(self, options: TrackOptions):
        self.where = tracking_uri(options.uri, options.storage)
        self.experiment, self.run_dir = options.experiment, options.run_dir
        self.client = self.run_id = None

    def start(self, info: RunInfo) -> int:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        self.client = client(self.where)
        state = read_state(self.run_dir)
        if state and state["uri"] == self.where:
            run = self.client.get_run(state["run_id"])
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            logged = set(run.data.params)
            log_params(self.client, self.run_id, {k: v for k, v in info.params.items() if k not in logged})
            return logged_epochs(self.client, self.run_id)
        tags = dict(info.tags)
        if info.parent:
            tags["mlflow.parentRunId"] = info.parent["run_id"]
        exp = experiment_id(self.client, self.experiment, self.where)
        self.run_id = self.client.create_run(exp, run_name=info.name, tags=tags).info.run_id
        state = {"uri": self.where, "run_id": self.run_id, "experiment_id": exp}
        write_text(join(self.run_dir, STATE_FILE), json.dumps(state, indent=2) + "\n")
        log_params(self.client, self.run_id, info.params)
        inputs = []
        for d in info.datasets:
            profile = json.dumps(d["profile"])
            dataset = Dataset(d["name"], d["digest"], d["source_type"], d["source"], None, profile)
            inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", d["name"])]))
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)
            described = json.dumps(info.datasets, indent=2).encode()
            log_files(self.client, self.run_id, {"dataset.json": described})
        return 0

    def log_epoch(self, record: dict) -> None:
        log_epoch(self.client, self.run_id, record)

    def finish(self, status: str, files: dict[str, bytes]) -> None:
        log_files(self.client, self.run_id, files)
        self.client.set_terminated(self.run_id, status)
