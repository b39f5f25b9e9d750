"""Checkpoints in the run-directory layout: model.safetensors (weights only), meta.json
(everything a third party needs to use the model) and state.pt (resume only), copied to
local or object storage (s3://, gs://) through pyarrow's filesystems."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import trainer

MODEL_FILE, META_FILE, STATE_FILE = "model.safetensors", "meta.json", "state.pt"
QAT_FILE = "qat.safetensors"  # a quantization-aware model's observers, scales and zero points


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_remote(base) else str(Path(base, *parts))


def write_checkpoint(
    directory: str | Path,
    weights: dict[str, torch.Tensor],
    meta: dict,
    state: dict,
    qparams: dict[str, torch.Tensor] | None = None,
) -> None:
    """`qparams`: a quantization-aware model's quantization state (qat.safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(directory / MODEL_FILE))
    if qparams:  # copies: observers shared between ops appear under each op's name
        save_file({k: v.detach().cpu().clone() for k, v in qparams.items()}, str(directory / QAT_FILE))
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    torch.save(state, directory / STATE_FILE)


def read_state(directory: str | Path) -> dict:
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)


def read_meta(directory: str | Path) -> dict:
    return json.loads((Path(directory) / META_FILE).read_text())


def publish(local_dir: str | Path, dest: str) -> None:
    """Replace `dest` (a local folder or an object-store prefix) with a copy of `local_dir`.
    Locally the swap is a rename, so readers never see a half-written checkpoint."""
    if is_remote(dest):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(dest)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        pafs.copy_files(str(local_dir), dest)
        return
    dest_path = Path(dest)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    staging = dest_path.with_name(f".{dest_path.name}.{uuid.uuid4().hex[:8]}")
    shutil.copytree(local_dir, staging)
    old = dest_path.with_name(f".{dest_path.name}.old.{uuid.uuid4().hex[:8]}")
    if dest_path.exists():
        os.replace(dest_path, old)
    os.replace(staging, dest_path)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def local_copy(uri: str):
    """A checkpoint folder as a local path (downloaded from object storage if needed), or None
    when it holds no complete checkpoint."""
    if not is_remote(uri):
        yield uri if Path(uri, STATE_FILE).is_file() and Path(uri, META_FILE).is_file() else None
        return
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(f"{path}/{STATE_FILE}").type == pafs.FileType.NotFound:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="vft-last-") as tmp:
        pafs.copy_files(uri, tmp)
        yield tmp


def build_meta(
    *,
    task: str,
    classes: list[str],
    multilabel: bool,
    model: dict,
    preprocessing: dict,
    metrics: dict,
    epoch: int,
    monitor: dict,
    training: dict,
) -> dict:
    return {
        "task": task,
        "multilabel": multilabel,
        "classes": classes,
        "num_classes": len(classes),
        "model": model,
        "preprocessing": preprocessing,
        "metrics": metrics,
        "epoch": epoch,
        "monitor": monitor,
        "training": training,
        "vft_version": trainer.__version__,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value
