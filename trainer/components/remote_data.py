"""Datasets in object storage (s3://, gs://, hdfs://: what pyarrow's filesystems open; S3
endpoints and credentials from the usual AWS_* variables), read through a per-machine local
mirror that fetches each image the first time it is read.

`localize` lists the folder once (a folder URI: an ImageFolder tree, a COCO, YOLO or mask
dataset; a file URI, a CSV manifest or a COCO JSON, brings its folder since its paths are
relative to it) and builds the mirror: every file that is not an image (manifests, COCO JSON,
YOLO label files) is copied, every image is an empty placeholder. Readers list and parse the
mirror as a local folder; `fetched(path)` downloads a placeholder's object when a sample is
read, so a Train worker on a fixed shard downloads only its shard's images, once. Index readers
that need an image's size (YOLO, mask folders, COCO files without sizes) read its header
through `header(path)`: a ranged read, not the whole object.

The mirror is rebuilt when the listing (names, sizes, times) changes, keeping the images
already fetched that did not change, and workers on one machine wait for one build (a file
lock). A run lists each prefix once per machine: its driver's listings (`listed()`) travel to
the workers, which take a mirror of the same listing as it is."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs as pafs
from PIL import Image

from trainer.components.checkpoint import is_remote
from trainer.errors import DataError

CACHE_ENV = "VFT_DATA_CACHE"  # default: ~/.cache/vft/datasets
MARKER = ".vft-complete.json"
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
)
HEADER_BYTES = 64 * 1024  # covers a JPEG's SOF after a typical EXIF block; more is read if not
ATTEMPTS = 3


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vft" / "datasets")


_LISTED: dict[str, list] = {}  # URI -> [mirror base, file name or "", listing digest] seen here


def localize(uri: str, listed: dict[str, list] | None = None) -> str:
    """A local path for `uri`: itself when local, else its place in this machine's mirror (built
    or refreshed here). With `listed` (the run's driver's `listed()`), a mirror of the listing
    the driver saw is used without listing the prefix again: one listing per machine and run,
    however many workers, restarts and trials. DataError naming the URI when it cannot be
    listed or copied."""
    if not is_remote(uri):
        return uri
    if listed and uri in listed:
        base, name, digest = listed[uri]
        local = _mirror_of(base)
        with _locked(local.with_suffix(".lock")):
            if (_read_marker(local) or {}).get("digest") == digest:
                return str(local / name if name else local)
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
    name = "" if info.type == pafs.FileType.Directory else path.rsplit("/", 1)[1]
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]
    local = _mirror_of(base)
    with _locked(local.with_suffix(".lock")):
        marker = _read_marker(local)
        if marker is None or marker.get("digest") != digest:
            _build(base, local, listing, digest, marker)
    _LISTED[uri] = [base, name, digest]
    return str(local / name if name else local)


def listed() -> dict[str, list]:
    """What this process's `localize` calls saw, for the run's workers (`localize(uri, listed)`)."""
    return {uri: list(entry) for uri, entry in _LISTED.items()}


def is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def fetched(path: str) -> str:
    """`path`, after downloading its object when it is a placeholder in a mirror; any other
    path (local data, an image already fetched, a missing file) is returned as it is."""
    found = _placeholder(path)
    if found is not None:
        source, rel = found
        _write(path, _read_object(source, rel))
    return path


def header(path: str | Path) -> str | io.BytesIO:
    """What Pillow reads an image's size from: `path` itself, or for a placeholder the first
    bytes of its object when they hold the size (any PNG, most JPEGs), else the fetched file."""
    found = _placeholder(str(path))
    if found is None:
        return str(path)
    head = _read_object(*found, length=HEADER_BYTES)
    with contextlib.suppress(Exception), Image.open(io.BytesIO(head)) as img:
        if img.size:
            return io.BytesIO(head)
    return fetched(str(path))


def _listing(fs: pafs.FileSystem, folder: str) -> dict[str, list]:
    files = fs.get_file_info(pafs.FileSelector(folder, recursive=True))
    return {f.path[len(folder) + 1 :]: [f.size, f.mtime_ns] for f in files if f.type == pafs.FileType.File}


def _read_marker(local: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((local / MARKER).read_text())
    return None


def _mirror_of(base: str) -> Path:
    return cache_root() / hashlib.sha256(base.encode()).hexdigest()[:16]


def _build(base: str, local: Path, listing: dict, digest: str, old: dict | None) -> None:
    """Build the mirror in a fresh folder and swap it in, so a reader never sees half of one."""
    staging = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}")
    try:
        _fill(staging, base, listing, local, (old or {}).get("listing", {}))
    except DataError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / MARKER).write_text(json.dumps({"source": base, "digest": digest, "listing": listing}))
    shutil.rmtree(local, ignore_errors=True)
    os.replace(staging, local)


def _fill(staging: Path, base: str, listing: dict, previous: Path, kept: dict) -> None:
    """Files other than images copied; images kept from the previous mirror when unchanged and
    fetched there, else empty placeholders."""
    copies = []
    for rel, entry in listing.items():
        if ".." in Path(rel).parts:
            raise DataError(f"{base}/{rel}: the object's name leaves its folder")
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not is_image(rel):
            copies.append(rel)
        elif kept.get(rel) == entry and entry[0] and _size(previous / rel) == entry[0]:
            try:
                os.link(previous / rel, dest)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(previous / rel, dest)
        else:
            dest.touch()
    with ThreadPoolExecutor(16) as pool:
        for rel, data in zip(copies, pool.map(lambda r: _read_object(base, r), copies), strict=True):
            (staging / rel).write_bytes(data)


def _placeholder(path: str) -> tuple[str, str] | None:
    """(the mirror's source URI, the path inside it) when `path` is an empty file in a mirror."""
    root = str(cache_root()) + os.sep
    if not path.startswith(root) or _size(path) != 0:
        return None
    mirror, _, rel = path[len(root) :].partition(os.sep)
    source = _source(root + mirror)
    return (source, rel) if source and rel else None


@functools.cache
def _source(mirror: str) -> str | None:
    marker = _read_marker(Path(mirror))
    return marker.get("source") if marker else None


def _size(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


@functools.cache
def _filesystem(source: str, pid: int) -> tuple[pafs.FileSystem, str]:
    """The filesystem of `source`, one per process (a forked loader process makes its own)."""
    return pafs.FileSystem.from_uri(source)


def _read_object(source: str, rel: str, length: int | None = None) -> bytes:
    """The object `source/rel` (its first `length` bytes), retried on transient errors; a
    DataError naming the URI when it stays unreadable."""
    for attempt in range(ATTEMPTS):
        try:
            fs, folder = _filesystem(source, os.getpid())
            with fs.open_input_file(f"{folder}/{rel}") as handle:
                return handle.read() if length is None else handle.read_at(length, 0)
        except OSError as exc:
            if attempt == ATTEMPTS - 1:
                raise DataError(f"{source}/{rel}: cannot read it from object storage ({exc})") from None
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _write(path: str, data: bytes) -> None:
    """Replace the placeholder at once: a reader sees the placeholder or the whole image."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.part"
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
