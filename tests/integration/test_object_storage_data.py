"""Datasets in object storage: a real S3-protocol server on localhost (moto's standalone server
from `make tools`), read through pyarrow exactly as on a cluster: the copy into the per-machine
cache, its reuse and refresh, the errors, the worker's setup reading s3:// paths, and a whole
run (train, a killed worker, resume, export, serve) with its data and run directory in S3."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import pytest
import requests
import torch
from local_ray import clean_env, free_ports
from PIL import Image
from train_tools import SMALL_MODEL
from typer.testing import CliRunner

from serving.app import ServeArgs, build_local_app
from trainer.cli import app
from trainer.components.remote_data import MARKER, fetched, listed, localize
from trainer.components.runlog import read_metrics_csv
from trainer.config import load_config
from trainer.engine.assemble import setup
from trainer.errors import DataError
from trainer.tasks.base import get_task
from trainer.tasks.detection.data import read_detection
from trainer.tasks.detection.shapes import shapes_detection
from trainer.tasks.segmentation.data import read_maskfolder
from trainer.tasks.segmentation.shapes import shapes_segmentation

ROOT = Path(__file__).resolve().parents[2]
VFT = [sys.executable, "-m", "trainer.cli"]
PNG = {"Content-Type": "image/png"}
MOTO = ROOT / ".tools" / "moto" / "bin" / "moto_server"


@pytest.fixture(scope="module")
def s3_endpoint():
    if not MOTO.is_file():
        raise AssertionError(f"moto_server not found at {MOTO}: run `make tools`")
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [str(MOTO), "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError("moto_server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_endpoint, monkeypatch, tmp_path) -> pafs.S3FileSystem:
    """AWS_* variables as a cluster would set them, a fresh bucket, and a private data cache."""
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "VFT_DATA_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(key, value)
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint, allow_bucket_creation=True)
    bucket = f"data-{os.urandom(4).hex()}"
    fs.create_dir(bucket)
    return fs, bucket


def upload_digits(fs, bucket: str, digits_dir: Path, per_class: int = 6) -> list[str]:
    """A few digits per class as an ImageFolder tree under s3://bucket/digits/{train,val}."""
    keys = []
    for split in ("train", "val"):
        for folder in sorted((digits_dir / split).iterdir()):
            for image in sorted(folder.glob("*.png"))[:per_class]:
                key = f"{bucket}/digits/{split}/{folder.name}/{image.name}"
                with fs.open_output_stream(key) as out:
                    out.write(image.read_bytes())
                keys.append(key)
    return keys


def upload_tree(fs, bucket: str, src: Path, prefix: str) -> None:
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        with fs.open_output_stream(f"{bucket}/{prefix}/{file.relative_to(src)}") as out:
            out.write(file.read_bytes())


def test_an_s3_dataset_is_mirrored_once_and_images_are_fetched_when_read(s3, digits_dir):
    """The mirror lists every image as an empty placeholder; reading one fetches it; an unchanged
    listing reuses the mirror; a changed one rebuilds it, keeping the images already fetched."""
    fs, bucket = s3
    keys = upload_digits(fs, bucket, digits_dir)
    local = Path(localize(f"s3://{bucket}/digits/train"))
    images = sorted(local.rglob("*.png"))
    assert sorted(str(p.relative_to(local)) for p in images) == sorted(
        k.split("/digits/train/")[1] for k in keys if "/train/" in k
    )
    assert {p.stat().st_size for p in images} == {0}  # nothing downloaded by the listing
    first = images[0]
    original = (digits_dir / "train" / first.relative_to(local)).read_bytes()
    assert fetched(str(first)) == str(first) and first.read_bytes() == original
    assert fetched(str(first)) == str(first)  # already there: returned as it is
    stamp = (local / MARKER).stat().st_mtime_ns
    assert localize(f"s3://{bucket}/digits/train") == str(local)  # unchanged listing: no rebuild
    assert (local / MARKER).stat().st_mtime_ns == stamp
    with fs.open_output_stream(f"{bucket}/digits/train/7/new.png") as out:
        out.write(next((digits_dir / "val" / "7").glob("*.png")).read_bytes())
    assert localize(f"s3://{bucket}/digits/train") == str(local)
    assert (local / MARKER).stat().st_mtime_ns != stamp  # rebuilt for the new object
    assert (local / "7" / "new.png").stat().st_size == 0
    assert first.read_bytes() == original  # the fetched image survived the rebuild
    assert sum(p.stat().st_size > 0 for p in local.rglob("*.png")) == 1


def test_workers_reuse_the_listing_their_driver_saw(s3, digits_dir, monkeypatch, tmp_path):
    """`localize(uri, listed())`: a worker on the driver's machine takes the mirror of the
    driver's listing without listing again (an object added since is not in it); a machine
    without that mirror lists for itself."""
    fs, bucket = s3
    upload_digits(fs, bucket, digits_dir, per_class=2)
    uri = f"s3://{bucket}/digits/train"
    local = localize(uri)  # the driver's data check
    hint = listed()
    assert hint[uri][2] == json.loads((Path(local) / MARKER).read_text())["digest"]
    with fs.open_output_stream(f"{bucket}/digits/train/7/late.png") as out:
        out.write(next((digits_dir / "val" / "7").glob("*.png")).read_bytes())
    assert localize(uri, hint) == local and not (Path(local) / "7" / "late.png").exists()
    monkeypatch.setenv("VFT_DATA_CACHE", str(tmp_path / "other-machine"))
    assert (Path(localize(uri, hint)) / "7" / "late.png").is_file()


def test_each_worker_fetches_only_its_shards_images(s3, digits_dir):
    """Two ranks' setups on one machine's mirror, two epochs each with a loader process: rank 0
    fetches exactly its fixed training shard and its validation shard, rank 1 adds its own, and
    together they fetch every image once."""
    fs, bucket = s3
    upload_digits(fs, bucket, digits_dir)
    overrides = [
        f"data.train=s3://{bucket}/digits/train",
        f"data.val=s3://{bucket}/digits/val",
        "data.num_workers=1",
        "data.batch_size=10",  # 3 whole batches per shard: drop_last leaves none unread
    ]
    cfg = load_config(ROOT / "configs/digits.yaml", overrides)
    shards = []
    for rank in (0, 1):
        job = setup(cfg, rank=rank, world=2, device=torch.device("cpu"))
        train, val = job.train_loader, job.val_loader
        for epoch in (0, 1):
            train.sampler.set_epoch(epoch)
            assert sum(len(batch[0]) for batch in train) == 30
        assert sum(len(batch[0]) for batch in val) == 30
        shards.append(
            {train.dataset.paths[i] for i in train.sampler.indices}
            | {val.dataset.paths[i] for i in val.sampler.indices}
        )
        mirrors = {Path(job.cfg.data.train), Path(job.cfg.data.val)}
        on_disk = {str(p) for m in mirrors for p in m.rglob("*.png") if p.stat().st_size > 0}
        assert on_disk == set().union(*shards)
    assert len(shards[0]) == len(shards[1]) == 60 and not shards[0] & shards[1]


def test_index_readers_take_image_sizes_from_ranged_reads(s3, tmp_path):
    """A mask folder and a COCO file without sizes are read with only their images' first bytes
    (masks and the JSON are read whole); a JPEG whose size lies past those bytes is fetched."""
    fs, bucket = s3
    shapes_segmentation(tmp_path / "seg", n_train=4, n_val=1, size=48)
    shapes_detection(tmp_path / "det", n_train=4, n_val=1, size=48)
    coco = tmp_path / "det" / "train" / "annotations.json"
    doc = json.loads(coco.read_text())
    for image in doc["images"]:
        del image["width"], image["height"]
    late = Image.open(tmp_path / "det" / "train" / "images" / "00000.png").convert("RGB")
    late.save(tmp_path / "det" / "train" / "images" / "late.jpg", icc_profile=os.urandom(100_000))
    doc["images"].append({"id": 99, "file_name": "late.jpg"})  # its SOF lies 100 kB in
    box = {"id": 999, "image_id": 99, "category_id": 1, "bbox": [4, 4, 40, 40], "area": 1600, "iscrowd": 0}
    doc["annotations"].append(box)
    coco.write_text(json.dumps(doc))
    upload_tree(fs, bucket, tmp_path / "seg" / "train", "seg")
    upload_tree(fs, bucket, tmp_path / "det" / "train", "det")

    masks = read_maskfolder(localize(f"s3://{bucket}/seg"))
    assert len(masks) == 4 and masks.max_index[0] >= 0
    assert {Path(p).stat().st_size for p in masks.images} == {0}
    assert all(Path(p).stat().st_size > 0 for p in masks.masks)

    boxes = read_detection(localize(f"s3://{bucket}/det/annotations.json"))
    sizes = {Path(p).name: Path(p).stat().st_size for p in boxes.images}
    assert len(sizes) == 5 and sizes["late.jpg"] > 100_000
    assert {v for k, v in sizes.items() if k != "late.jpg"} == {0}
    assert sum(len(b) for b in boxes.boxes) == len(doc["annotations"])  # sizes read right: none dropped


def test_a_csv_manifest_in_s3_brings_its_folder(s3, digits_dir):
    fs, bucket = s3
    upload_digits(fs, bucket, digits_dir, per_class=2)
    with fs.open_output_stream(f"{bucket}/digits/train.csv") as out:
        out.write(
            b"path,label\ntrain/3/" + next((digits_dir / "train" / "3").glob("*.png")).name.encode() + b",3\n"
        )
    manifest = Path(localize(f"s3://{bucket}/digits/train.csv"))
    assert manifest.name == "train.csv" and (manifest.parent / "train" / "3").is_dir()


def test_missing_data_in_s3_is_a_data_error_naming_the_uri(s3):
    fs, bucket = s3
    with pytest.raises(DataError, match=f"s3://{bucket}/nope: not found in object storage"):
        localize(f"s3://{bucket}/nope")
    fs.create_dir(f"{bucket}/empty")
    with pytest.raises(DataError, match=f"s3://{bucket}/empty: the folder is empty"):
        localize(f"s3://{bucket}/empty")
    with pytest.raises(DataError, match="s3://nope-bucket/x: "):
        localize("s3://nope-bucket/x")


def test_a_worker_reads_its_s3_dataset_through_the_cache(s3, digits_dir, tmp_path):
    """The config keeps the s3:// URIs (they are what the workers get); `vft train`'s data check
    and each worker's setup read them through their machine's copy."""
    fs, bucket = s3
    upload_digits(fs, bucket, digits_dir)
    overrides = [
        f"data.train=s3://{bucket}/digits/train",
        f"data.val=s3://{bucket}/digits/val",
        "data.num_workers=0",
    ]
    cfg = load_config(ROOT / "configs/digits.yaml", overrides)
    assert cfg.data.train == f"s3://{bucket}/digits/train"
    classes = get_task(cfg.task).check_data(cfg.with_data_paths(localize)).classes
    assert classes == [str(d) for d in range(10)]
    job = setup(cfg, rank=0, world=1, device=torch.device("cpu"))
    images, targets, _ = next(iter(job.train_loader))
    assert images.shape[1:] == (3, 32, 32) and len(job.train_loader.dataset) == 60
    assert job.cfg.data.train.startswith(str(tmp_path / "cache"))
    shutil.rmtree(tmp_path / "cache")


def test_train_kill_a_worker_resume_export_eval_and_serve_all_from_s3(ray_cluster, s3, digits_dir, tmp_path):
    """Data and runs on the same S3 server, as on a cluster. `vft train` runs as a shell runs it
    (its own local Ray cluster, whose processes get the AWS_* variables): one of its two Train
    workers is killed after the first epoch and Ray Train (FailureConfig: run.max_failures)
    resumes from the checkpoint in S3 instead of epoch 1; the data holds a corrupt image, skipped
    and counted (data.skip_bad_images) before and after the restart. Then `vft export`,
    `vft eval` and a Ray Serve replica work from the s3:// run directory."""
    fs, bucket = s3
    upload_digits(fs, bucket, digits_dir, per_class=15)
    with fs.open_output_stream(f"{bucket}/digits/train/3/broken.png") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    run = f"s3://{bucket}/runs/s3run"
    env = clean_env()  # the test's AWS_* variables and data cache, no Ray address
    log = tmp_path / "train.log"
    args = [
        "train", ROOT / "configs/digits.yaml", f"data.train=s3://{bucket}/digits/train",
        f"data.val=s3://{bucket}/digits/val", f"run.storage=s3://{bucket}/runs", "train.epochs=3",
        "run.max_failures=1", "data.skip_bad_images=true", "data.num_workers=0", SMALL_MODEL,
        "--name", "s3run", "--quiet",
    ]  # fmt: skip
    with log.open("w") as out:
        train = subprocess.Popen(
            [*VFT, *map(str, args)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while not read_metrics_csv(f"{run}/metrics.csv"):
            assert train.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        first_epoch = read_metrics_csv(f"{run}/metrics.csv")[0]
        workers = [
            p
            for p in psutil.Process(train.pid).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2, [p.cmdline() for p in workers]
        workers[0].kill()
        assert train.wait(timeout=300) == 0, log.read_text()
    finally:
        if train.poll() is None:
            os.killpg(train.pid, signal.SIGKILL)
    history = read_metrics_csv(f"{run}/metrics.csv")
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[0] == first_epoch  # not trained again after the restart
    assert [row["data/skipped_images"] for row in history] == [1, 1, 1]

    exported = CliRunner().invoke(app, ["export", run, "--format", "onnx", "--check", "--no-register"])
    assert exported.exit_code == 0, exported.output
    assert fs.get_file_info(f"{bucket}/runs/s3run/export/model.onnx").type == pafs.FileType.File
    args = ["eval", run, "--data", str(digits_dir / "val"), "--corruptions", "none", "--attacks", "none"]
    evaluated = CliRunner().invoke(app, [*args, "--backend", "onnx", "--max-images", "50"])
    assert evaluated.exit_code == 0, evaluated.output
    assert fs.get_file_info(f"{bucket}/runs/s3run/eval/onnx/report.md").type == pafs.FileType.File
    for report in ("export/report.json", "eval/onnx/report.json"):  # they name the run, not a local copy
        with fs.open_input_stream(f"{bucket}/runs/s3run/{report}") as src:
            assert json.loads(src.read())["run_dir"] == run

    from ray import serve

    # the replica on the session's cluster, given the AWS_* variables as a pod's env gives them
    # (`vft serve` itself adds nothing for an s3:// run: the replica reads it)
    aws = {key: value for key, value in os.environ.items() if key.startswith("AWS_")}
    deployment = {"ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": aws}}}
    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_local_app(ServeArgs(run_dir=run), 1, None, deployment), name="s3", route_prefix="/")
        image = sorted((digits_dir / "val" / "7").glob("*.png"))[0]
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/predict", data=image.read_bytes(), headers=PNG, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert {p["label"] for p in answer.json()["predictions"]} <= {str(d) for d in range(10)}
    finally:
        serve.shutdown()
