"""Exported models in MLflow's model registry: `vft export` registers what it built, `vft serve`
takes `models:/<name>/<version>` or `models:/<name>@<alias>` as well as a run directory, and
`vft promote` moves an alias.

A registered version's artifacts are a servable run directory: `best/meta.json`, `export/`
(model.onnx, model.int8.onnx, model.plan, meta.json, report.json) and `config.yaml`, logged
under `model/` of the training run's MLflow run, with the parity results as the version's tags.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from trainer.components.track_mlflow import client, log_files, read_state, tracking_uri
from trainer.components.tracking import first_line
from trainer.errors import ConfigError, VftError

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")
ARTIFACT_PATH = "model"


class RegistryError(VftError):
    """No such registered model, version or alias (exit 2)."""


def is_model_uri(uri: str) -> bool:
    return str(uri).startswith("models:/")


def registry_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the embedded store of the default run.storage
    (./runs/mlflow.db)."""
    return tracking_uri(uri, "runs")


def export_tags(report: dict) -> dict[str, str]:
    """The parity results of an export report as tags: `<format>.<figure>` and `passed`."""
    tags = {"passed": str(report["passed"]).lower(), "epoch": str(report["epoch"])}
    for fmt, result in report["formats"].items():
        tags[f"{fmt}.status"] = result["status"]
        for key, value in result.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                tags[f"{fmt}.{key}"] = f"{value:.6g}"
    return tags


def register_export(run_dir: Path, report: dict, name: str | None = None) -> str | None:
    """Log RUN_DIR's servable files to its MLflow run and register them as a new version of
    `name` (default: the run's name); returns `models:/<name>/<version>`, or None when the run
    was not tracked with MLflow (no RUN_DIR/tracking.json)."""
    state = read_state(str(run_dir))
    if state is None:
        return None
    mlflow = client(state["uri"])
    run_id, name = state["run_id"], name or run_dir.name
    files = {"config.yaml": run_dir / "config.yaml", "best/meta.json": run_dir / "best" / "meta.json"}
    files |= {f"export/{p.name}": p for p in sorted((run_dir / "export").iterdir()) if p.is_file()}
    log_files(mlflow, run_id, {k: p.read_bytes() for k, p in files.items() if p.is_file()}, ARTIFACT_PATH)
    tags = export_tags(report)
    for key, value in tags.items():
        if key.endswith(("metric_delta", ".value", "max_abs_diff", "top1_agreement")):
            mlflow.log_metric(run_id, f"export/{key}", float(value))
    if not mlflow.search_registered_models(filter_string=f"name = '{name}'"):
        mlflow.create_registered_model(name, description=f"vft exports of {run_dir.name}")
    version = mlflow.create_model_version(name, f"runs:/{run_id}/{ARTIFACT_PATH}", run_id, tags=tags)
    return f"models:/{name}/{version.version}"


def model_version(uri: str, tracking: str | None = None):
    """The registered version a `models:/` URI names (RegistryError when there is none)."""
    match = MODEL_URI.match(uri)
    if match is None:
        raise ConfigError(f"{uri}: not a model URI (models:/<name>/<version> or models:/<name>@<alias>)")
    mlflow = client(registry_uri(tracking))
    name, version, alias = match["name"], match["version"], match["alias"]
    try:
        if alias:
            return mlflow.get_model_version_by_alias(name, alias)
        return mlflow.get_model_version(name, version)
    except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST, or the store is unreachable
        raise RegistryError(f"{uri}: {first_line(exc)} (registry: {registry_uri(tracking)})") from None


def fetch_model(uri: str, tracking: str | None = None) -> Path:
    """A registered version's files as a local run directory (a temporary folder that lives
    with the process)."""
    version = model_version(uri, tracking)
    mlflow = client(registry_uri(tracking))
    dest = tempfile.mkdtemp(prefix="vft-model-")
    return Path(mlflow.download_artifacts(version.run_id, ARTIFACT_PATH, dest))


def promote(name: str, version: str, alias: str, tracking: str | None = None) -> None:
    """Point `alias` (say, production) at `name`'s `version`."""
    version_of = model_version(f"models:/{name}/{version}", tracking)
    client(registry_uri(tracking)).set_registered_model_alias(name, alias, version_of.version)
