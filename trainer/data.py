"""Datasets by registered format (ImageFolder layout, CSV manifest), stratified seeded split,
class-balanced and sharded samplers, and the loaders the training loop uses."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS

from trainer.images import BadImageError, open_image
from trainer.registry import DATASET_FORMATS

if TYPE_CHECKING:
    from trainer.config import VftConfig


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file (and line or entry)."""


@dataclass
class Samples:
    paths: list[str]
    labels: list[list[str]]  # one label per sample, or several for multilabel

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx) -> Samples:
        return Samples([self.paths[i] for i in idx], [self.labels[i] for i in idx])


# ----------------------------------------------------------------------------- formats


@DATASET_FORMATS.register("imagefolder")
def read_imagefolder(root: str | Path) -> Samples:
    """root/<class>/<image>: the torchvision ImageFolder layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (ImageFolder layout expected)")
    paths, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(class_dir.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMG_EXTENSIONS:
                paths.append(str(file))
                labels.append([class_dir.name])
    if not paths:
        raise DataError(
            f"{root}: no images found in class folders (ImageFolder layout: root/<class>/<image>)"
        )
    return Samples(paths, labels)


@DATASET_FORMATS.register("csv")
def read_csv_manifest(manifest: str | Path) -> Samples:
    """A CSV with a header holding `path,label`; paths are relative to the CSV's folder; several
    labels (multilabel) are separated by ';'."""
    manifest = Path(manifest)
    base = manifest.parent
    paths, labels = [], []
    with manifest.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(
                f"{manifest}: header needs columns path,label; missing {', '.join(sorted(missing))}"
            )
        for line, row in enumerate(reader, start=2):
            rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not rel or not label:
                raise DataError(f"{manifest}:{line}: empty path or label")
            file = Path(rel) if Path(rel).is_absolute() else base / rel
            if not file.is_file():
                raise DataError(f"{manifest}:{line}: image '{rel}' not found")
            paths.append(str(file))
            labels.append([part.strip() for part in label.split(";") if part.strip()])
    if not paths:
        raise DataError(f"{manifest}: no rows")
    return Samples(paths, labels)


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    return "csv" if Path(path).suffix.lower() == ".csv" else "imagefolder"


def read_samples(path: str | Path, fmt: str = "auto") -> Samples:
    return DATASET_FORMATS.get(detect_format(path, fmt))(path)


def split_samples(samples: Samples, val_fraction: float, seed: int, stratify: bool = True):
    """Seeded split; stratified by class when every class has at least two samples."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(samples))
    keys = [lab[0] for lab in samples.labels]
    counts = {k: keys.count(k) for k in set(keys)}
    n_val = max(1, round(len(idx) * val_fraction))
    strat = keys if stratify and min(counts.values()) >= 2 and n_val >= len(counts) else None
    train_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strat)
    return samples.subset(sorted(train_idx)), samples.subset(sorted(val_idx))


def class_names(samples: Samples) -> list[str]:
    return sorted({label for labels in samples.labels for label in labels})


# ----------------------------------------------------------------------------- dataset


class JointDataset(Dataset):
    """Images with per-image annotations (masks, boxes: `samples.images` plus the task's own
    fields) through one joint transform, decoded on access. A bad image raises BadImageError
    naming the file, or, with `skip_bad`, yields None (dropped and counted by the collate)."""

    def __init__(self, samples, transform, max_pixels: int = 89_478_485, skip_bad: bool = False):
        self.samples, self.transform = samples, transform
        self.max_pixels, self.skip_bad = max_pixels, skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            image = open_image(self.samples.images[i], self.max_pixels)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        return self.transform_pair(image, i)

    def transform_pair(self, image, i: int):
        """The transformed (image, annotation) of sample `i`."""
        raise NotImplementedError


class ImageDataset(Dataset):
    """Decodes on access. A bad image raises BadImageError naming the file, or, with
    `skip_bad`, yields None, which the collate function drops and counts."""

    def __init__(
        self,
        samples: Samples,
        classes: list[str],
        transform,
        multilabel: bool = False,
        max_pixels: int = 89_478_485,
        skip_bad: bool = False,
    ):
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({lab for labels in samples.labels for lab in labels} - set(index))
        if unknown:
            raise DataError(f"labels not among the training classes: {', '.join(unknown[:10])}")
        self.paths = samples.paths
        self.multilabel = multilabel
        self.num_classes = len(classes)
        self.targets = [[index[lab] for lab in labels] for labels in samples.labels]
        self.transform = transform
        self.max_pixels = max_pixels
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def target(self, i: int):
        if self.multilabel:
            hot = torch.zeros(self.num_classes)
            hot[self.targets[i]] = 1.0
            return hot
        return self.targets[i][0]

    def __getitem__(self, i: int):
        try:
            img = open_image(self.paths[i], self.max_pixels)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        return self.transform(img), self.target(i)


class Collate:
    """Stacks a batch, drops skipped (None) samples and counts them, applies MixUp/CutMix."""

    def __init__(self, mix=None):
        self.mix = mix

    def __call__(self, batch):
        good = [item for item in batch if item is not None]
        skipped = len(batch) - len(good)
        if not good:
            return None, None, skipped
        images = torch.stack([img for img, _ in good])
        targets = torch.stack([torch.as_tensor(t) for _, t in good])
        if self.mix is not None:
            images, targets = self.mix(images, targets)
        return images, targets, skipped


# ----------------------------------------------------------------------------- samplers


class ShardSampler(Sampler[int]):
    """Evaluation shard: rank r takes indices r, r+W, ...; no padding, so metrics count each
    sample exactly once after the cross-worker sync."""

    def __init__(self, size: int, rank: int, world: int):
        self.indices = list(range(rank, size, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement (weights 1 / class count), sharded across
    workers: each epoch draws the same global sequence on every rank and takes its slice."""

    def __init__(self, first_labels: list[int], rank: int, world: int, seed: int = 0):
        counts = np.bincount(first_labels)
        weights = 1.0 / counts[first_labels]
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.per_rank = math.ceil(len(first_labels) / world)
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world, replacement=True, generator=gen)
        return iter(draw[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int,
    rank: int,
    world: int,
    train: bool,
    seed: int = 0,
    balanced: bool = False,
    mix=None,
    pin_memory: bool = False,
    collate_fn=None,
):
    """A DataLoader over `dataset`: sharded eval, distributed (or class-balanced) training.
    `collate_fn` is the task's; by default classification's Collate (with MixUp/CutMix `mix`)."""
    if not train:
        sampler = ShardSampler(len(dataset), rank, world)
    elif balanced:
        sampler = BalancedSampler([t[0] for t in dataset.targets], rank, world, seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or Collate(mix if train else None),
        pin_memory=pin_memory,
        drop_last=train and len(dataset) >= batch_size * world,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )


# ----------------------------------------------------------------------------- builders (read the config)


def build_data(cfg: VftConfig):
    """Samples, classes and the train/val split (stratified and seeded when no val set)."""
    d = cfg.data
    train_samples = read_samples(d.train, d.format)
    if d.val:
        val_samples = read_samples(d.val, d.format)
    else:
        train_samples, val_samples = split_samples(
            train_samples, d.val_fraction, d.split_seed, stratify=not d.multilabel
        )
    return train_samples, val_samples, class_names(train_samples)


def check_data(cfg: VftConfig) -> list[str]:
    """Read the dataset as the workers will and check it can train: at least two classes, and
    no validation label the training set lacks. Returns the classes."""
    train_samples, val_samples, classes = build_data(cfg)
    if len(classes) < 2:
        raise DataError(f"data.train: {cfg.data.train} has {len(classes)} class(es); at least 2 are needed")
    unknown = sorted({lab for labels in val_samples.labels for lab in labels} - set(classes))
    if unknown:
        raise DataError(f"data.val: labels not in the training set: {', '.join(unknown[:10])}")
    return classes
