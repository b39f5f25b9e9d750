"""`data.cache: ram`: each worker decodes the images of its own shard once, before its loader
processes start (they share the pages), and keeps them as uint8 pixels; every later epoch
costs only the transforms. For datasets that fit: the size is estimated from the image
headers first, and a cache that would not fit in the memory available is a DataError."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.components.images import BadImageError
from trainer.components.remote_data import header
from trainer.errors import DataError

FIT = 0.6  # at most this share of the memory available now


class RamCache:
    """Decoded images by sample index; a bad image is kept as None (skipped) when `skip_bad`."""

    def __init__(self) -> None:
        self.images: dict[int, np.ndarray | None] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.images

    def image(self, index: int) -> Image.Image | None:
        """The cached image as the datasets' transforms take it (None: a skipped bad image)."""
        pixels = self.images[index]
        return None if pixels is None else Image.fromarray(pixels)

    @property
    def nbytes(self) -> int:
        return sum(image.nbytes for image in self.images.values() if image is not None)

    def fill(
        self,
        paths: dict[int, str],
        load: Callable[[int], Image.Image],
        min_side: int | None,
        skip_bad: bool,
        threads: int,
    ) -> None:
        """Decode the images `paths` names with `load(index)` (Pillow releases the GIL: one
        thread per loader process), each downscaled so its shorter side is at most `min_side`."""
        check_fits(list(paths.values()), min_side)

        def one(index: int) -> np.ndarray | None:
            try:
                return shrink(load(index), min_side)
            except BadImageError:
                if skip_bad:
                    return None
                raise

        with ThreadPoolExecutor(max(1, threads)) as pool:
            self.images.update(zip(paths, pool.map(one, paths), strict=True))


def shrink(image: Image.Image, min_side: int | None) -> np.ndarray:
    """HWC uint8 pixels, resized (antialiased) so the shorter side is `min_side` if larger."""
    short = min(image.size)
    if min_side and short > min_side:
        scale = min_side / short
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image)


def cached_size(width: int, height: int, min_side: int | None) -> int:
    short = min(width, height)
    scale = min_side / short if min_side and short > min_side else 1.0
    return round(width * scale) * round(height * scale) * 3


def check_fits(paths: list[str], min_side: int | None) -> None:
    total = 0
    for path in paths:
        try:
            with Image.open(header(path)) as img:
                total += cached_size(*img.size, min_side)
        except (OSError, SyntaxError, ValueError):
            continue  # decoding it will say what is wrong with it
    free = available_memory()
    if free is not None and total > FIT * free:
        raise DataError(
            f"data.cache: ram needs about {total / 2**30:.1f} GiB for this worker's {len(paths)} images, "
            f"more than {FIT:.0%} of the {free / 2**30:.1f} GiB available; use `vft data prepare` "
            "for a smaller copy, or data.cache: none"
        )


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (bytes), or None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
