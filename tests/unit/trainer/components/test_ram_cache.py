"""`data.cache: ram`: each worker's own shard decoded once and kept; fixed shards per rank."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.components import ram_cache
from trainer.components.loader import FixedShardSampler
from trainer.components.preprocess import Preprocessing, eval_transform
from trainer.config import load_config
from trainer.engine.assemble import setup
from trainer.engine.loop import set_stage, train_one_epoch
from trainer.engine.progress import WorkerProgress
from trainer.errors import BadImageError, DataError
from trainer.tasks.classification.data import ImageDataset, read_imagefolder

ROOT = Path(__file__).resolve().parents[4]
PREP = Preprocessing(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)


def test_fixed_shards_cover_every_image_in_equal_parts_and_reshuffle_within():
    shards = [FixedShardSampler(10, rank, 3, seed=1) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded: every rank runs as many steps
    assert set().union(*(s.indices for s in shards)) == set(range(10))
    first = list(shards[0])
    shards[0].set_epoch(1)
    second = list(shards[0])
    assert sorted(first) == sorted(second) == sorted(shards[0].indices) and first != second


def photos(root: Path, size: tuple[int, int], n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for j in range(n):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{j}.jpg", quality=95)
    return root


def test_cached_images_serve_without_the_files_and_equal_the_decoded_ones(tmp_path):
    root = photos(tmp_path / "photos", (40, 30))
    samples = read_imagefolder(root)
    dataset = ImageDataset(samples, ["a", "b"], eval_transform(PREP))
    expected = [dataset[i][0] for i in range(len(samples))]
    dataset.cache_images([0, 2, 4], threads=2)
    shutil.rmtree(root / "a")  # indices 0..2: the cached ones read nothing from disk
    for i in (0, 2):
        assert torch.equal(dataset[i][0], expected[i])
    assert torch.equal(dataset[4][0], expected[4])
    with pytest.raises(BadImageError, match="1.jpg: file not found"):
        dataset[1]  # not this worker's shard: read from disk as before


def test_photos_are_kept_downscaled_to_what_the_crop_needs(tmp_path):
    root = photos(tmp_path / "photos", (1200, 900), n=1)
    dataset = ImageDataset(read_imagefolder(root), ["a", "b"], eval_transform(PREP), min_side=100)
    dataset.cache_images([0, 1], threads=1)
    assert dataset.cache.image(0).size == (133, 100)
    assert dataset.cache.nbytes == 2 * 133 * 100 * 3


def test_a_bad_image_fails_the_cache_or_is_skipped(tmp_path):
    root = photos(tmp_path / "photos", (40, 30))
    (root / "b" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    samples = read_imagefolder(root)
    bad = samples.paths.index(str(root / "b" / "bad.jpg"))
    strict = ImageDataset(samples, ["a", "b"], eval_transform(PREP))
    with pytest.raises(BadImageError, match="bad.jpg"):
        strict.cache_images(list(range(len(samples))), threads=2)
    lenient = ImageDataset(samples, ["a", "b"], eval_transform(PREP), skip_bad=True)
    lenient.cache_images(list(range(len(samples))), threads=2)
    assert lenient[bad] is None and lenient[0] is not None


def test_a_cache_that_does_not_fit_is_a_data_error_before_decoding(tmp_path, monkeypatch):
    root = photos(tmp_path / "photos", (400, 300), n=2)
    dataset = ImageDataset(read_imagefolder(root), ["a", "b"], eval_transform(PREP))
    monkeypatch.setattr(ram_cache, "available_memory", lambda: 1_000_000)
    with pytest.raises(DataError, match=r"data.cache: ram needs about 0.0 GiB for this worker's 4 images"):
        dataset.cache_images([0, 1, 2, 3], threads=1)
    assert dataset.cache.nbytes == 0


def test_a_job_with_a_ram_cache_keeps_its_shard_and_trains(digits_dir):
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [f"data.train={digits_dir}/train", f"data.val={digits_dir}/val", "data.num_workers=0"]
        + ["data.cache=ram"],
    )
    job = setup(cfg, rank=1, world=2, device=torch.device("cpu"))
    sampler, dataset = job.train_loader.sampler, job.train_loader.dataset
    assert isinstance(sampler, FixedShardSampler)
    assert set(dataset.cache.images) == set(sampler.indices) and len(dataset.cache.images) < len(dataset)
    assert set(job.val_loader.dataset.cache.images) == set(job.val_loader.sampler.indices)
    job.world = 1  # one worker of two, run alone: no process group here
    set_stage(job, 0)
    assert train_one_epoch(job, 0, WorkerProgress(None))["train/loss"] > 0


def test_ram_cache_and_class_balancing_do_not_mix(digits_dir):
    from trainer.errors import ConfigError

    overrides = [f"data.train={digits_dir}/train", "data.val=null", "data.cache=ram"]
    overrides.append("data.balanced_sampling=true")
    with pytest.raises(ConfigError, match="data.cache: 'ram' keeps each worker's own shard"):
        load_config(ROOT / "configs/digits.yaml", overrides)
