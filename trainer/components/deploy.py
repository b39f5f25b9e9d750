"""What a task hands to export, serving and `vft eval` (the `serving` package), in shapes every
task shares: the kind of input its backends take, the ONNX graph it exports, the formats it
supports, parity thresholds, the serving handler and evaluation protocols, its metrics fed with
backend outputs, and labelled batches in the form backends take."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from trainer.components import robustness as R
from trainer.components.loader import ListCollate, make_loader
from trainer.errors import DataError

BATCH = "batch"  # one float32 (N, 3, H, W) array, preprocessed as meta.json says
IMAGES = "images"  # a list of float32 (3, H, W) images in [0, 1], each of its own size

Batches = list[tuple[Any, Any]]  # (backend input, targets) pairs
MIN_SIDE = 32  # pixels across an image's shorter side after a detector's resize (one stride)


def padded_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) with the shorter side padded so that a torchvision detector's resize, by
    min(min_size / shorter, max_size / longer), leaves it at least MIN_SIDE pixels: a very
    elongated image (4000x3) would otherwise shrink to less than a pixel across."""
    short, long = min(height, width), max(height, width)
    if short * min(min_size / short, max_size / long) >= MIN_SIDE:
        return height, width
    need = min(long, math.ceil(MIN_SIDE * long / max_size))
    return (need, width) if height < width else (height, need)


@dataclass(frozen=True)
class OnnxGraph:
    """What torch.onnx exports: `module` called on `example`, its inputs and outputs named,
    `dynamic_axes` naming the free axes per input/output name, through the dynamo exporter
    (`dynamo`) or the TorchScript one."""

    module: nn.Module
    example: tuple[torch.Tensor, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    dynamo: bool


@dataclass(frozen=True)
class ExportSpec:
    """The `vft export` formats a task supports and builds by default; `unsupported` says why
    the others are not built; `max_parity_images` bounds the images held for the parity check."""

    formats: tuple[str, ...]
    default_formats: tuple[str, ...]
    unsupported: str = ""
    max_parity_images: int | None = None


@dataclass(frozen=True)
class Thresholds:
    """Parity gates. An exact format (FP32 ONNX) must match PyTorch closely; quantized or FP16
    ones may lose at most `max_metric_drop` of the monitored metric."""

    max_abs_diff: float = 1e-3
    min_agreement: float = 0.99
    max_metric_drop: float = 0.01


class ServeHandler(Protocol):
    """A task's side of a serving replica: one decoded image to a backend input (and the
    image's size), a batch of those through a backend, one output to the JSON answer."""

    def prepare(self, image) -> tuple[np.ndarray, tuple[int, int]]: ...

    def run(self, backend: Callable, inputs: list[np.ndarray]) -> list: ...

    def answer(self, output: Any, size: tuple[int, int]) -> dict: ...

    def health_input(self) -> list[np.ndarray]: ...


class OutputMetrics:
    """A task's metrics (`Task.create_metrics`) fed with backend outputs, which `convert` turns
    into the outputs those metrics take."""

    def __init__(self, metrics, convert: Callable[[Any], Any]):
        self.metrics, self.convert = metrics, convert

    def update(self, outputs: Any, targets: Any) -> None:
        self.metrics.update(self.convert(outputs), targets)

    def compute(self, prefix: str = "") -> tuple[dict[str, float], dict[str, Any]]:
        return self.metrics.compute(prefix)


class TaskEval:
    """How `vft eval` evaluates one run of a task: `metric` ranks the domains and is scored under
    corruption; `columns` are the (label, field) pairs of the domains table; `report_names`
    renames the corruption suite's fields in report.json; `attacks` says whether FGSM/PGD apply
    (they ascend a classifier's loss)."""

    metric: str
    columns: list[tuple[str, str]]
    report_names: dict[str, str] = {}
    attacks: bool = False

    def read_samples(self, path: Path) -> Any:
        """A dataset in the task's layout (DataError on bad data), checked against the run's classes."""
        raise NotImplementedError

    def batches(self, samples: Any, batch_size: int) -> Batches:
        """`samples` through the checkpoint's eval preprocessing, as labelled backend inputs."""
        raise NotImplementedError

    def metrics(self):
        """Fresh metrics taking backend outputs; `compute("")` gives a domain's report fields."""
        raise NotImplementedError

    def corrupt(self, inputs: Any, name: str, severity: int, seed: int, index: int) -> Any:
        """Backend inputs (batch `index`) corrupted by `name` at `severity`, in [0, 1] pixel space."""
        raise NotImplementedError

    def write_extras(self, report: dict, out: Path) -> list[str]:
        """Write the task's own plots of `report` to `out`; the markdown lines showing them."""
        return []


class ImageListEval(TaskEval):
    """`vft eval` for a task whose backends take a list of images of their own sizes (detectors,
    Mask R-CNN): `read` a dataset in the task's layout, check its classes against the run's, run
    it through `dataset_type` with the eval transform, score with the task's metrics; corrupt
    image by image (image j of batch i with seed + IMAGE_SEEDS * i + j)."""

    IMAGE_SEEDS = 1000

    def __init__(self, task, meta: dict, transform: Callable, read: Callable, dataset_type: type):
        self.task, self.meta, self.transform = task, meta, transform
        self.read, self.dataset_type = read, dataset_type
        self.metric = meta["monitor"]["metric"].removeprefix("val/")

    def read_samples(self, path: Path) -> Any:
        samples = self.read(path)
        if samples.classes != self.meta["classes"]:
            raise DataError(f"{path}: classes {samples.classes} differ from the run's {self.meta['classes']}")
        return samples

    def batches(self, samples: Any, batch_size: int) -> Batches:
        return loader_batches(self.dataset_type(samples, self.transform), ListCollate(), batch_size)

    def metrics(self) -> OutputMetrics:
        return OutputMetrics(self.task.create_metrics(self.meta), self.task.metric_inputs)

    def corrupt(self, inputs: list[np.ndarray], name: str, severity: int, seed: int, index: int) -> list:
        corrupted = []
        for j, x in enumerate(inputs):
            image_seed = seed + self.IMAGE_SEEDS * index + j
            corrupted.append(R.corrupt(torch.from_numpy(x)[None], name, severity, image_seed)[0].numpy())
        return corrupted


def loader_batches(dataset: Dataset, collate: Callable, batch_size: int) -> Batches:
    """A dataset through its collate function in order, as (backend input, targets) pairs: a
    float32 array for stacked images, a list of float32 arrays for images of their own sizes."""
    loader = make_loader(dataset, batch_size, 0, 0, 1, train=False, collate_fn=collate)
    batches = []
    for images, targets, _ in loader:
        if images is None:  # every image of the batch was skipped (data.skip_bad_images)
            continue
        inputs = [x.numpy() for x in images] if isinstance(images, list) else images.numpy()
        batches.append((inputs, targets))
    return batches
