"""JPEG decoding in batches on the training device (`data.decode: gpu`): loader processes only
read bytes and check headers; the worker decodes each batch at once (nvJPEG on a GPU, through
torchvision.io.decode_jpeg) and runs the task's transform there. A serving replica whose model
runs on a GPU decodes request images the same way (`decode: auto | gpu`).

What the device decoder is not given, or refuses, decodes on the CPU per image with the same
rules as the CPU path: PNG, WebP and other formats and CMYK JPEGs in the loader process; a JPEG
the device decoder rejects (progressive or damaged) in the worker. A bad image is a
BadImageError naming the file, or, with `skip_bad`, dropped and counted."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2 as T
from torchvision.transforms.v2.functional import pil_to_tensor

from trainer.components.images import DEFAULT_MAX_PIXELS, BadImageError, checked_image, open_image

EXIF_ORIENTATION = 0x0112


@dataclass
class Encoded:
    """One image as a loader process hands it over: JPEG bytes for the device decoder (1-D
    uint8, with the EXIF orientation to apply after decoding), or pixels the loader decoded
    already (uint8, channels first). NumPy arrays, not tensors: a batch of tensors would cross
    from the loader processes as one shared-memory file descriptor each."""

    path: str
    data: np.ndarray
    orientation: int = 1
    size: tuple[int, int] = (0, 0)  # (width, height) as shown, after the EXIF orientation

    @property
    def jpeg(self) -> bool:
        return self.data.ndim == 1


def decoded(path: str, image: Image.Image) -> Encoded:
    """An RGB image decoded on the CPU already (a format the device decoder does not take, or a
    cached one)."""
    return Encoded(path, np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)), size=image.size)


def read_encoded(
    path: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str | bytes | None = None,
    formats: Collection[str] | None = None,
) -> Encoded:
    """The file's bytes (or `source`'s: the encoded image a dataset row holds, or a request
    body) after the header checks of `open_image` (format, pixel bound, `formats`); images that
    are not RGB or grey JPEGs are decoded here instead."""
    try:
        raw = source if isinstance(source, bytes) else Path(path).read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with checked_image(raw, max_pixels, name=path, formats=formats) as img:
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            size = img.size[::-1] if orientation in (5, 6, 7, 8) else img.size
            return Encoded(path, np.frombuffer(bytearray(raw), dtype=np.uint8), orientation, size)
    return decoded(path, open_image(raw, max_pixels, name=path, formats=formats))


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (2-8) to a CHW image, as Pillow's `exif_transpose` does."""
    if orientation in (5, 6, 7, 8):  # the stored image is transposed or turned a quarter
        image = {
            5: lambda x: x.transpose(-1, -2),
            6: lambda x: torch.rot90(x, -1, dims=(-2, -1)),
            7: lambda x: torch.rot90(x, 2, dims=(-2, -1)).transpose(-1, -2),
            8: lambda x: torch.rot90(x, 1, dims=(-2, -1)),
        }[orientation](image)
    elif orientation == 2:
        image = image.flip(-1)
    elif orientation == 3:
        image = image.flip(-2, -1)
    elif orientation == 4:
        image = image.flip(-2)
    return image


def decode_batch(
    items: list[Encoded], device: torch.device, skip_bad: bool = False
) -> tuple[list[torch.Tensor], list[int]]:
    """The batch's images as uint8 CHW tensors on `device`, and the indices of those kept (all,
    unless `skip_bad` dropped unreadable ones)."""
    images: list[torch.Tensor | None] = [
        None if item.jpeg else torch.from_numpy(item.data).to(device, non_blocking=True) for item in items
    ]
    jpegs = [i for i, item in enumerate(items) if item.jpeg]
    if jpegs:
        try:
            data = [torch.from_numpy(items[i].data) for i in jpegs]
            images_of_jpegs = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one file the device decoder refuses: decode them one by one
            images_of_jpegs = [_decode_one(items[i], device, skip_bad) for i in jpegs]
        if device.type == "cuda":
            # the hardware JPEG engine's output is read by other streams: wait for it
            torch.cuda.current_stream(device).synchronize()
        for i, image in zip(jpegs, images_of_jpegs, strict=True):
            images[i] = None if image is None else orient(image, items[i].orientation)
    kept = [i for i, image in enumerate(images) if image is not None]
    return [images[i] for i in kept], kept


def _decode_one(item: Encoded, device: torch.device, skip_bad: bool) -> torch.Tensor | None:
    try:
        return decode_jpeg(torch.from_numpy(item.data), mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        pass
    try:  # what libjpeg through Pillow makes of it, or the reason it cannot
        pixels = pil_to_tensor(open_image(item.data.tobytes(), name=item.path))
    except BadImageError:
        if skip_bad:
            return None
        raise
    return pixels.to(device)


class BatchTransform:
    """The task's transform for a list of device images of any size: `per_image` ops (crops,
    flips: each image draws its own), then one stack, normalisation of the whole batch,
    `after_normalize` ops per image (random erasing) and `batch_ops(images, targets)` (MixUp,
    CutMix)."""

    def __init__(self, per_image: list, normalize: list, after_normalize: tuple = (), batch_ops=None):
        self.per_image = T.Compose(per_image)
        self.normalize = T.Compose(normalize)
        self.after_normalize = T.Compose(list(after_normalize)) if after_normalize else None
        self.batch_ops = batch_ops

    def __call__(self, images: list[torch.Tensor], targets):
        batch = torch.stack([self.per_image(tv_tensors.Image(image)) for image in images])
        batch = self.normalize(tv_tensors.Image(batch))
        if self.after_normalize is not None:
            batch = torch.stack([self.after_normalize(image) for image in batch])
        batch = batch.as_subclass(torch.Tensor)
        if self.batch_ops is not None:
            batch, targets = self.batch_ops(batch, targets)
        return batch, targets


class JointBatchTransform:
    """For datasets of images with annotations (boxes, masks): each decoded image goes through
    its dataset's own joint transform (`transform_pair`, on the device) with the annotation of
    its sample (the batch's targets are sample indices), then the task's collate."""

    def __init__(self, dataset, collate):
        self.dataset, self.collate = dataset, collate

    def __call__(self, images: list[torch.Tensor], indices: torch.Tensor):
        samples = [
            self.dataset.transform_pair(tv_tensors.Image(image), i)
            for image, i in zip(images, indices.tolist(), strict=True)
        ]
        batch, targets, _ = self.collate(samples)
        return batch, targets


class EncodedCollate:
    """A batch of (Encoded, target) pairs: the Encoded as a list (the device decoder stacks them)
    and the targets stacked; skipped (None) samples dropped and counted."""

    def __call__(self, batch):
        good = [item for item in batch if item is not None]
        skipped = len(batch) - len(good)
        if not good:
            return None, None, skipped
        return [item for item, _ in good], torch.stack([torch.as_tensor(t) for _, t in good]), skipped


class DeviceDecodeLoader:
    """A DataLoader whose batches hold Encoded images (collated by EncodedCollate), yielding
    what the CPU path's loader yields: (images, targets, skipped) with the images decoded and
    transformed on `device` by `transform(images, targets)` (the dataset's `batch_transform`)."""

    def __init__(
        self,
        loader,
        device: torch.device,
        transform: Callable,
        skip_bad: bool = False,
    ):
        self.loader, self.device, self.transform, self.skip_bad = loader, device, transform, skip_bad

    @property
    def sampler(self):
        return self.loader.sampler

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for items, targets, skipped in self.loader:
            if items is None:
                yield None, None, skipped
                continue
            images, kept = decode_batch(items, self.device, self.skip_bad)
            skipped += len(items) - len(kept)
            if not images:
                yield None, None, skipped
                continue
            targets = targets[kept].to(self.device, non_blocking=True)
            images, targets = self.transform(images, targets)
            yield images, targets, skipped
