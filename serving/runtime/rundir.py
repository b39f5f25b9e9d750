"""Run directories as serving reads them: RUN_DIR/best (meta.json and weights; or a checkpoint
folder given directly), RUN_DIR/export (model.onnx, model.int8.onnx, model.plan) and
RUN_DIR/config.yaml; a run in object storage (s3://, gs://) or a registered model (models:/) is
fetched to a local folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from serving.runtime.base import BackendError
from trainer.components import checkpoint as ckpt
from trainer.components.model_registry import fetch_model, is_model_uri
from trainer.components.remote_data import localize
from trainer.config import VftConfig, load_config
from trainer.tasks.base import task_of

EXPORT_DIR, CONFIG_FILE = "export", "config.yaml"
ONNX_FILE, INT8_FILE, PLAN_FILE = "model.onnx", "model.int8.onnx", "model.plan"


def export_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir, EXPORT_DIR, name)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """RUN_DIR/best, or a checkpoint folder given directly."""
    run_dir = Path(run_dir)
    best = run_dir / "best"
    if (best / ckpt.META_FILE).is_file():
        return best
    if (run_dir / ckpt.META_FILE).is_file():
        return run_dir
    raise BackendError(f"{run_dir}: no best/meta.json (is it a run directory of `vft train`?)")


def read_run_meta(run_dir: str | Path) -> dict:
    """The checkpoint's meta.json, of a registered task."""
    meta = ckpt.read_meta(checkpoint_dir(run_dir))
    try:
        task_of(meta)
    except KeyError as exc:
        raise BackendError(f"{run_dir}: {exc.args[0]}") from None
    return meta


def run_config(run_dir: Path, data: Path | None = None) -> VftConfig:
    """RUN_DIR/config.yaml, with `data.val` replaced by `data` when given; datasets in object
    storage are read through this machine's copy."""
    cfg = load_config(Path(run_dir, CONFIG_FILE), [f"data.val={data}"] if data else [])
    return cfg.with_data_paths(localize)


def fetch_run_dir(uri: str, tracking_uri: str | None = None) -> Path:
    """A run directory as a local path. From object storage (s3://, gs://) best/ (without the
    resume state), export/ and config.yaml are copied to a temporary folder that lives with the
    process; a registered model (models:/<name>/<version> or @<alias>) is downloaded from the
    MLflow registry at `tracking_uri` (default $MLFLOW_TRACKING_URI)."""
    if is_model_uri(uri):
        return fetch_model(uri, tracking_uri)
    if not ckpt.is_remote(uri):
        return Path(uri)
    local = Path(tempfile.mkdtemp(prefix="vft-run-"))
    fs, root = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(f"{root}/{CONFIG_FILE}").type == pafs.FileType.File:
        with fs.open_input_stream(f"{root}/{CONFIG_FILE}") as src:
            (local / CONFIG_FILE).write_bytes(src.read())
    for sub in ("best", EXPORT_DIR):
        selector = pafs.FileSelector(f"{root}/{sub}", allow_not_found=True, recursive=True)
        for info in fs.get_file_info(selector):
            if info.type != pafs.FileType.File or info.base_name == ckpt.STATE_FILE:
                continue
            dest = local / sub / info.path[len(root) + len(sub) + 2 :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src:
                dest.write_bytes(src.read())
    return local
