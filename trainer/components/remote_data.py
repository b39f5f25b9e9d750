"""Datasets in object storage (s3://, gs://, hdfs://: what pyarrow's filesystems open; S3
endpoints and credentials from the usual AWS_* variables): copied once per machine into a local
cache, then read like a local folder. A folder URI (an ImageFolder tree, a COCO or mask dataset)
is copied whole; a file URI (a CSV manifest, a COCO JSON) brings its folder, since its paths are
relative to it. The copy is reused while the listing (names, sizes, times) is unchanged, and
workers on one machine wait for a single copy (a file lock)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from trainer.components.checkpoint import is_remote
from trainer.errors import DataError

CACHE_ENV = "VFT_DATA_CACHE"  # default: ~/.cache/vft/datasets
MARKER = ".vft-complete.json"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vft" / "datasets")


def localize(uri: str) -> str:
    """A local path for `uri`: itself when local, else its copy in the cache (made or refreshed
    here). DataError naming the URI when it cannot be listed or copied."""
    if not is_remote(uri):
        return uri
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{uri}: not found in object storage")
        folder = path if info.type == pafs.FileType.Directory else path.rsplit("/", 1)[0]
        listing = _listing(fs, folder)
    except OSError as exc:
        raise DataError(f"{uri}: cannot list it in object storage ({exc})") from None
    if not listing:
        raise DataError(f"{uri}: the folder is empty")
    base = uri.split("://", 1)[0] + "://" + folder
    local = cache_root() / hashlib.sha256(base.encode()).hexdigest()[:16]
    with _locked(local.with_suffix(".lock")):
        if _read_marker(local) != listing:
            _copy(fs, folder, local, listing, uri)
    return str(local if info.type == pafs.FileType.Directory else local / path.rsplit("/", 1)[1])


def _listing(fs: pafs.FileSystem, folder: str) -> dict[str, list]:
    files = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return {f.path[len(folder) + 1 :]: [f.size, f.mtime_ns] for f in files if f.type == pafs.FileType.File}


def _read_marker(local: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((local / MARKER).read_text())
    return None


def _copy(fs: pafs.FileSystem, folder: str, local: Path, listing: dict, uri: str) -> None:
    """Copy into a fresh folder and swap it in, so a reader never sees half a dataset."""
    staging = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
    try:
        pafs.copy_files(
            folder, str(staging), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
        )
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{uri}: cannot copy it from object storage ({exc})") from None
    (staging / MARKER).write_text(json.dumps(listing))
    shutil.rmtree(local, ignore_errors=True)
    os.replace(staging, local)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
