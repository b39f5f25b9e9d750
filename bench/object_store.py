"""A Train worker's start on a dataset in object storage: vft's mirror (index listed, each image
fetched when the worker's fixed shard reads it) against the plain way a hand-rolled script (and
vft before) does it, copying the whole prefix to local disk first (pyarrow's threaded
`copy_files`, like `aws s3 sync`) and reading the shard from there. One worker of `--world`;
JPEGs at 500x375 made from scikit-learn's sample photos, served by moto's S3 server on localhost
(`make tools`), so request costs, not bandwidth, dominate here: on a cluster the bytes decide.

    python bench/object_store.py
    python bench/object_store.py --images 800 --world 8

The last line is one JSON object: `first_batch_vs_whole_copy` (time until the first batch of
`--batch` images is readable), `epoch_vs_whole_copy` (time until the whole shard has been read
once) and `bytes_vs_whole_copy` (bytes downloaded), each plain / vft (higher is better).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.components.loader import FixedShardSampler  # noqa: E402
from trainer.components.remote_data import fetched, localize  # noqa: E402
from trainer.tasks.classification.data import read_imagefolder  # noqa: E402

MOTO = ROOT / ".tools" / "moto" / "bin" / "moto_server"


def write_photos(root: Path, count: int) -> None:
    """bench/data.py's photo set: `count` JPEGs per class at 500x375."""
    spec = importlib.util.spec_from_file_location("bench_data", ROOT / "bench" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_photos(root, (500, 375), count)


def start_moto() -> tuple[subprocess.Popen, str]:
    port = 45000 + os.getpid() % 10000
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([str(MOTO), "-p", str(port)], **quiet)
    url = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


def upload(fs: pafs.FileSystem, src: Path, prefix: str) -> int:
    total = 0
    for file in sorted(p for p in src.rglob("*.jpg")):
        data = file.read_bytes()
        with fs.open_output_stream(f"{prefix}/{file.relative_to(src)}") as out:
            out.write(data)
        total += len(data)
    return total


def shard(paths: list[str], world: int) -> list[str]:
    return [paths[i] for i in FixedShardSampler(len(paths), 0, world, seed=0).indices]


def plain(fs, prefix: str, local: Path, world: int, batch: int) -> dict:
    start = time.perf_counter()
    pafs.copy_files(prefix, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    paths = shard(read_imagefolder(local).paths, world)
    for path in paths[:batch]:
        Path(path).read_bytes()
    first = time.perf_counter() - start
    for path in paths[batch:]:
        Path(path).read_bytes()
    on_disk = sum(p.stat().st_size for p in local.rglob("*.jpg"))
    return {"first_batch_s": first, "epoch_s": time.perf_counter() - start, "bytes": on_disk}


def vft(uri: str, world: int, batch: int) -> dict:
    start = time.perf_counter()
    paths = shard(read_imagefolder(localize(uri)).paths, world)
    for path in paths[:batch]:
        Path(fetched(path)).read_bytes()
    first = time.perf_counter() - start
    for path in paths[batch:]:
        Path(fetched(path)).read_bytes()
    on_disk = sum(p.stat().st_size for p in Path(localize(uri)).rglob("*.jpg"))
    return {"first_batch_s": first, "epoch_s": time.perf_counter() - start, "bytes": on_disk}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200, help="JPEGs per class (2 classes)")
    parser.add_argument("--world", type=int, default=4, help="Train workers sharing the dataset")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not MOTO.is_file():
        raise SystemExit(f"moto_server not found at {MOTO}: run `make tools`")
    proc, url = start_moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            os.environ.update(
                AWS_ENDPOINT_URL=url,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_REGION="us-east-1",
                VFT_DATA_CACHE=str(tmp / "cache"),
            )
            fs = pafs.S3FileSystem(endpoint_override=url, allow_bucket_creation=True)
            fs.create_dir("bench-data")
            write_photos(tmp / "photos", args.images)
            size = upload(fs, tmp / "photos", "bench-data/photos")
            base = plain(fs, "bench-data/photos", tmp / "copy", args.world, args.batch)
            ours = vft("s3://bench-data/photos", args.world, args.batch)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for name, row in (("plain (whole copy)", base), ("vft (shard fetched)", ours)):
        print(
            f"{name:20s} first batch {row['first_batch_s']:6.2f} s  shard read {row['epoch_s']:6.2f} s  "
            f"downloaded {row['bytes'] / 2**20:6.1f} MiB"
        )
    summary = {
        "first_batch_vs_whole_copy": round(base["first_batch_s"] / ours["first_batch_s"], 2),
        "epoch_vs_whole_copy": round(base["epoch_s"] / ours["epoch_s"], 2),
        "bytes_vs_whole_copy": round(base["bytes"] / ours["bytes"], 2),
    }
    print(
        json.dumps(
            {"bench": "object_store", "images": 2 * args.images, "world": args.world, "dataset_bytes": size}
            | summary
            | {"plain": base, "vft": ours}
        )
    )


if __name__ == "__main__":
    main()
