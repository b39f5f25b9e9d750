"""Classification data: ImageFolder trees, CSV manifests and Hugging Face datasets by registered
format, a stratified seeded split, the decoding dataset and the collate function (with
MixUp/CutMix)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from trainer.components import hf_data
from trainer.components.device_decode import decoded, read_encoded
from trainer.components.images import DEFAULT_MAX_PIXELS, BadImageError, open_image
from trainer.components.ram_cache import RamCache
from trainer.components.remote_data import fetched
from trainer.errors import DataError
from trainer.registry import DATASET_FORMATS


@dataclass
class Samples:
    paths: list[str]  # files, or the names of dataset rows (`images` reads those)
    labels: list[list[str]]  # one label per sample, or several for multilabel
    images: hf_data.RowImages | None = None  # images held in a dataset's rows
    rows: list[int] | None = None  # each sample's row in `images`

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx) -> Samples:
        rows = [self.rows[i] for i in idx] if self.rows is not None else None
        return Samples([self.paths[i] for i in idx], [self.labels[i] for i in idx], self.images, rows)


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


@DATASET_FORMATS.register("hf")
def read_hf(
    source: str | Path, split: str | None = None, options: hf_data.HfOptions = hf_data.HfOptions()
) -> Samples:
    """A Hugging Face dataset's split: an image column and a label column (ClassLabel names,
    or the values; a list of them is multilabel). Without `split` (`vft eval --data`): the
    validation or test split of a dataset that has several."""
    names, labels, images = hf_data.read_rows(str(source), split, options)
    return Samples(names, labels, images, list(range(len(names))))


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if hf_data.is_hf_dataset(str(path)):
        return "hf"
    return "csv" if Path(path).suffix.lower() == ".csv" else "imagefolder"


def read_samples(path: str | Path, fmt: str = "auto") -> Samples:
    return DATASET_FORMATS.get(detect_format(path, fmt))(path)


def split_samples(samples: Samples, val_fraction: float, seed: int, stratify: bool = True):
    """Seeded split; stratified by class when every class has at least two samples."""
    idx = np.arange(len(samples))
    keys = [lab[0] for lab in samples.labels]
    counts = {k: keys.count(k) for k in set(keys)}
    n_val = max(1, round(len(idx) * val_fraction))
    strat = keys if stratify and min(counts.values()) >= 2 and n_val >= len(counts) else None
    train_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=strat)
    return samples.subset(sorted(train_idx)), samples.subset(sorted(val_idx))


def class_names(samples: Samples) -> list[str]:
    return sorted({label for labels in samples.labels for label in labels})


class ImageDataset(Dataset):
    """Decodes on access (JPEGs at reduced DCT scale when `min_side` allows), or with `encoded`
    hands the image over undecoded for the device decoder (`Encoded`; no transform). A bad image
    raises BadImageError naming the file, or, with `skip_bad`, yields None, which the collate
    function drops and counts."""

    def __init__(
        self,
        samples: Samples,
        classes: list[str],
        transform,
        multilabel: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        skip_bad: bool = False,
        min_side: int | None = None,
        encoded: bool = False,
    ):
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({lab for labels in samples.labels for lab in labels} - set(index))
        if unknown:
            raise DataError(f"labels not among the training classes: {', '.join(unknown[:10])}")
        self.paths = samples.paths
        self.images, self.rows = samples.images, samples.rows
        self.multilabel = multilabel
        self.num_classes = len(classes)
        self.targets = [[index[lab] for lab in labels] for labels in samples.labels]
        self.transform = transform
        self.max_pixels = max_pixels
        self.skip_bad = skip_bad
        self.min_side = min_side  # JPEGs decode at the smallest DCT scale keeping this side
        self.encoded = encoded
        self.batch_transform = None  # encoded: set by the task (the device decoder's transform)
        self.cache: RamCache | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, i: int) -> str | bytes:
        """Sample `i`'s file, or its encoded image when a dataset's row holds it."""
        if self.images is not None:
            return self.images.read(self.rows[i], self.paths[i])
        return fetched(self.paths[i])

    def open(self, i: int):
        return open_image(self.source(i), self.max_pixels, name=self.paths[i], min_side=self.min_side)

    def cache_images(self, indices: list[int], threads: int) -> None:
        """`data.cache: ram`: decode `indices` once and keep them, downscaled to `min_side`."""
        self.cache = RamCache()
        self.cache.fill({i: self.paths[i] for i in indices}, self.open, self.min_side, self.skip_bad, threads)

    def target(self, i: int):
        if self.multilabel:
            hot = torch.zeros(self.num_classes)
            hot[self.targets[i]] = 1.0
            return hot
        return self.targets[i][0]

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            if self.cache is not None and i in self.cache:
                img = self.cache.image(i)
                if img is None:
                    return None  # a bad image, skipped when the cache was filled
            elif self.encoded:
                return read_encoded(path, self.max_pixels, self.source(i)), self.target(i)
            else:
                img = self.open(i)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        return (decoded(path, img) if self.encoded else self.transform(img)), self.target(i)


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


def read_split(
    train: str,
    val: str | None,
    fmt: str,
    val_fraction: float,
    seed: int,
    multilabel: bool,
    hf: hf_data.HfOptions | None = None,
    hf_val_split: str | None = None,
) -> tuple[Samples, Samples, list[str]]:
    """Train and val samples and the classes; without `val` (or, for a Hugging Face dataset,
    `hf_val_split`), a seeded split of `train` (stratified by class unless multilabel)."""
    if detect_format(train, fmt) == "hf":
        hf = hf or hf_data.HfOptions()
        train_samples = read_hf(train, hf.split or "train", hf)
        if val or hf_val_split:
            return train_samples, read_hf(val or train, hf_val_split, hf), class_names(train_samples)
    else:
        train_samples = read_samples(train, fmt)
    if val:
        val_samples = read_samples(val, fmt)
    else:
        train_samples, val_samples = split_samples(train_samples, val_fraction, seed, stratify=not multilabel)
    return train_samples, val_samples, class_names(train_samples)


def check_split(train: Samples, val: Samples, classes: list[str], where: str) -> None:
    """A split that can train: at least two classes, no validation label the training set lacks."""
    if len(classes) < 2:
        raise DataError(f"data.train: {where} has {len(classes)} class(es); at least 2 are needed")
    unknown = sorted({lab for labels in val.labels for lab in labels} - set(classes))
    if unknown:
        raise DataError(f"data.val: labels not in the training set: {', '.join(unknown[:10])}")
