"""Task-agnostic data plumbing: the joint image+annotation dataset base, sharded and
class-balanced samplers, and the DataLoader the training loop and evaluation use."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from trainer.components.device_decode import JointBatchTransform, decoded, read_encoded
from trainer.components.images import DEFAULT_MAX_PIXELS, BadImageError, open_image
from trainer.components.ram_cache import RamCache
from trainer.components.remote_data import fetched


class JointDataset(Dataset):
    """Images with per-image annotations (masks, boxes: `samples.images` plus the task's own
    fields) through one joint transform, decoded on access. A bad image raises BadImageError
    naming the file, or, with `skip_bad`, yields None (dropped and counted by the collate)."""

    def __init__(
        self,
        samples,
        transform,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        skip_bad: bool = False,
        collate=None,
        encoded: bool = False,
    ):
        self.samples, self.transform = samples, transform
        self.max_pixels, self.skip_bad = max_pixels, skip_bad
        self.cache: RamCache | None = None
        # `encoded`: items are (Encoded, sample index); the device decoder calls transform_pair
        self.encoded = encoded
        self.batch_transform = JointBatchTransform(self, collate) if encoded else None

    def __len__(self) -> int:
        return len(self.samples)

    def cache_images(self, indices: list[int], threads: int) -> None:
        """`data.cache: ram`: decode `indices` once and keep them (at full size: the
        annotations are in its pixels)."""
        self.cache = RamCache()
        paths = {i: self.samples.images[i] for i in indices}
        self.cache.fill(paths, self.open, None, self.skip_bad, threads)

    def image_source(self, i: int) -> str | bytes:
        """Sample `i`'s image file, or (a dataset whose rows hold images) its encoded bytes."""
        return fetched(self.samples.images[i])

    def open(self, i: int):
        return open_image(self.image_source(i), self.max_pixels, name=self.samples.images[i])

    def __getitem__(self, i: int):
        path = self.samples.images[i]
        try:
            if self.cache is not None and i in self.cache:
                image = self.cache.image(i)
                if image is None:
                    return None  # a bad image, skipped when the cache was filled
            elif self.encoded:
                return read_encoded(path, self.max_pixels, self.image_source(i)), i
            else:
                image = self.open(i)
        except BadImageError:
            if self.skip_bad:
                return None
            raise
        return (decoded(path, image), i) if self.encoded else self.transform_pair(image, i)

    def transform_pair(self, image, i: int):
        """The transformed (image, annotation) of sample `i` (`image`: a PIL image, or an image
        tensor on the device decoder's device)."""
        raise NotImplementedError


class ListCollate:
    """A batch of (image, target) pairs of any sizes as a list of images and a list of targets
    (detectors resize and batch inside the model); skipped samples (None) dropped and counted."""

    def __call__(self, batch):
        good = [item for item in batch if item is not None]
        skipped = len(batch) - len(good)
        if not good:
            return None, None, skipped
        return [img for img, _ in good], [t for _, t in good], skipped


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


class FixedShardSampler(Sampler[int]):
    """Training shard that stays with its rank (`data.cache: ram`: each worker decodes and keeps
    its own images): a seeded permutation split once into equal shards (padded by wrapping
    around, as DistributedSampler pads, so every rank runs as many steps), reshuffled within the
    shard every epoch."""

    def __init__(self, size: int, rank: int, world: int, seed: int = 0):
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
        per_rank = math.ceil(size / world)
        order += order[: per_rank * world - size]
        self.indices = order[rank::world]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + 1 + self.epoch)
        return iter([self.indices[j] for j in torch.randperm(len(self.indices), generator=gen).tolist()])

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
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    rank: int,
    world: int,
    train: bool,
    collate_fn,
    seed: int = 0,
    balance_labels: list[int] | None = None,
    pin_memory: bool = False,
    fixed_shard: bool = False,
):
    """A DataLoader over `dataset` with the task's `collate_fn`: sharded evaluation; distributed
    training, class-balanced over `balance_labels` (one class index per sample), or on a
    `fixed_shard` per rank."""
    if not train:
        sampler = ShardSampler(len(dataset), rank, world)
    elif balance_labels is not None:
        sampler = BalancedSampler(balance_labels, rank, world, seed)
    elif fixed_shard:
        sampler = FixedShardSampler(len(dataset), rank, world, seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=train and len(dataset) >= batch_size * world,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
