"""The task protocol and tasks by registered name.

A task (`trainer/tasks/<task>/`) owns everything that depends on what the labels describe: its
config section, reading the dataset, the model, preprocessing and joint image+target transforms,
collation, the loss, metrics, postprocessing, the fields it adds to meta.json, and what export,
serving and eval need. The engine (`trainer.engine`) and `serving` only call this interface.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from trainer.components.deploy import BATCH, ExportSpec, OnnxGraph, ServeHandler, TaskEval, Thresholds
from trainer.components.models import BuiltModel, load_weights
from trainer.components.preprocess import Preprocessing, resolve_preprocessing
from trainer.errors import WeightsError
from trainer.registry import TASKS

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from trainer.config import VftConfig


@dataclass
class DataSplit:
    """What a task's dataset reader returns: train and val samples (task-specific types with
    `len`) and the class names, index = class id."""

    train: Any
    val: Any
    classes: list[str]


class Metrics(Protocol):
    """Per-epoch metrics (torchmetrics states, synced across DDP workers on compute)."""

    def update(self, outputs: Any, targets: Any, loss: torch.Tensor | None = None) -> None: ...

    def compute(self, prefix: str = "val/") -> tuple[dict[str, float], dict[str, list]]: ...

    def reset(self) -> None: ...


class TaskLoss(Protocol):
    """`loss(model, images, targets) -> scalar` for training (a detector computes its own loss
    dict from targets); `on_outputs(outputs, targets)` scores evaluation outputs, or None."""

    def __call__(self, model: torch.nn.Module, images: Any, targets: Any) -> torch.Tensor: ...

    def on_outputs(self, outputs: Any, targets: Any) -> torch.Tensor | None: ...


@dataclass
class EvalContext:
    """What a task's own validation metrics need from the loop: where and how the model runs,
    the preprocessing (to undo normalisation), and a sum over all workers."""

    device: torch.device
    precision: str
    memory_format: torch.memory_format
    prep: Preprocessing
    all_sum: Callable[[list[float]], list[float]]


class Task:
    """The interface each task implements, with the same signatures for every task. Only the
    `build_*`, `read_data`, `check_data`, `collate`, `balance_labels`, `meta_fields`,
    `feature_head` and `extra_val_metrics` methods read the config tree; everything after
    training works from a checkpoint's meta.json."""

    name: str = ""
    config: type[VftConfig]  # the task's config class (`trainer/tasks/<task>/config.py`)
    draws_predictions: bool = False  # plot_predictions draws something
    device_decoding: bool = False  # build_datasets(encoded=True) works: images decode on the GPU

    # -- data
    def read_data(self, cfg: VftConfig) -> DataSplit:
        raise NotImplementedError

    def check_data(self, cfg: VftConfig) -> DataSplit:
        """Read the dataset as the workers will (DataError naming the file on bad input); the
        split it read."""
        raise NotImplementedError

    def build_datasets(
        self, cfg: VftConfig, split: DataSplit, prep: Preprocessing, encoded: bool = False
    ) -> tuple[Dataset, Dataset]:
        """Train and val datasets with the train/eval transforms applied. `encoded` (for a task
        with `device_decoding`): their items are (Encoded, target) instead, and each dataset's
        `batch_transform(images, targets)` turns a batch decoded on the device into what the
        CPU path's collate returns (without the skipped count)."""
        raise NotImplementedError

    def collate(self, cfg: VftConfig, num_classes: int, train: bool) -> Callable:
        """A collate function returning (images, targets, skipped_count)."""
        raise NotImplementedError

    def manifest(self, samples: Any, classes: list[str]) -> list[tuple[str, list[str] | None]]:
        """One line per sample of a split as `read_data` returns it (the files and labels that
        identify it, hashed into the dataset's digest) and the classes it shows, or None where
        that needs decoding (masks): the tracked dataset identity (trainer/engine/lineage.py)."""
        raise NotImplementedError

    def balance_labels(self, cfg: VftConfig, train: Dataset) -> list[int] | None:
        """One class index per training sample for class-balanced sampling, or None."""
        return None

    def feature_head(self, cfg: VftConfig, built: BuiltModel) -> str | None:
        """Cached linear probe: the module that trains on features the frozen model computes
        once (its inputs are cached); None trains on images every epoch."""
        return None

    def write_example_data(self, out: Path, n_train: int, n_val: int, size: int, seed: int) -> dict[str, int]:
        """Generated shapes in this task's dataset layout (`vft data shapes`); image counts."""
        raise NotImplementedError

    # -- model
    def build_model(self, cfg: VftConfig, num_classes: int) -> BuiltModel:
        raise NotImplementedError

    def model_names(self, pattern: str | None = None) -> list[tuple[str, str]]:
        """(model name, source library) for `vft ls models`, filtered by a glob pattern."""
        raise NotImplementedError

    def build_preprocessing(self, cfg: VftConfig, built: BuiltModel) -> Preprocessing:
        d = cfg.data
        return resolve_preprocessing(
            built.data_defaults, d.img_size, d.mean, d.std, d.interpolation, d.crop_pct
        )

    def build_loss(self, cfg: VftConfig) -> TaskLoss:
        raise NotImplementedError

    def create_metrics(self, meta: dict, device: torch.device | str = "cpu") -> Metrics:
        """The task's metrics for a model described by `meta` (a checkpoint's meta.json, or
        `training_meta` during training): one definition for training, export and eval."""
        raise NotImplementedError

    def training_meta(self, cfg: VftConfig, classes: list[str]) -> dict:
        """The meta.json fields known before training: task, classes and the task's own."""
        fields = self.meta_fields(cfg)
        return {
            "task": self.name,
            "classes": classes,
            "num_classes": len(classes),
            "multilabel": fields.pop("multilabel", False),
            **fields,
        }

    def meta_fields(self, cfg: VftConfig) -> dict:
        """Task-specific fields added to meta.json (`model`: extra fields of its model section)."""
        return {}

    # -- evaluation and outputs
    def eval_outputs(self, model: nn.Module, images: Any) -> Any:
        """The model's evaluation outputs, in the form metrics and `on_outputs` take."""
        return model(images)

    def extra_val_metrics(
        self, cfg: VftConfig, model: nn.Module, loader, ctx: EvalContext
    ) -> dict[str, float]:
        """Validation metrics the task measures itself, beyond `create_metrics` (all workers)."""
        return {}

    def postprocess(self, outputs: Any, meta: dict) -> Any:
        """Evaluation outputs to predictions (probabilities, per-image boxes, class masks)."""
        raise NotImplementedError

    def rebuild_model(self, meta: dict) -> nn.Module:
        """The architecture of a saved checkpoint from its meta.json alone (no weights loaded)."""
        raise NotImplementedError

    def preprocessing_from_meta(self, meta: dict):
        return Preprocessing.from_meta(meta["preprocessing"])

    def plot_predictions(self, model: nn.Module, meta: dict, dataset: Dataset, path: Path) -> bool:
        """Draw the model's predictions on the first validation samples to `path` (PNG);
        False when the task has no such plot."""
        return False

    # -- export, serving, evaluation (called by serving/)
    input_kind: str = BATCH  # what backends take: BATCH (one preprocessed array) or IMAGES (a list)
    export_spec: ExportSpec  # the `vft export` formats it supports and builds by default

    def graph_outputs(self, model: nn.Module, inputs: Any) -> Any:
        """The model's outputs as its exported graph gives them, which every backend returns:
        logits for a batch, or per image a tuple in the graph's output order."""
        raise NotImplementedError

    def metric_inputs(self, outputs: Any) -> Any:
        """One backend call's outputs in the form `create_metrics(meta).update` takes."""
        raise NotImplementedError

    def onnx_graph(self, model: nn.Module, meta: dict) -> OnnxGraph:
        """What torch.onnx exports for the checkpoint that `meta` describes."""
        raise NotImplementedError

    def parity(self, reference: list, outputs: list) -> dict:
        """How an exported format's outputs differ from PyTorch's (each a list, one entry per
        backend call on the same batches)."""
        raise NotImplementedError

    def parity_failures(self, result: dict, exact: bool, thresholds: Thresholds) -> list[str]:
        """The thresholds a format's parity `result` exceeds; `exact`: an FP32 format."""
        raise NotImplementedError

    def serve_handler(self, meta: dict, top_k: int, score_threshold: float) -> ServeHandler:
        """A serving replica's handler for the checkpoint that `meta` describes (`top_k` labels
        of a classifier, `score_threshold` for a detector's boxes)."""
        raise NotImplementedError

    def evaluation(self, meta: dict, n_bins: int) -> TaskEval:
        """How `vft eval` evaluates the run that `meta` describes (`n_bins` calibration bins)."""
        raise NotImplementedError


def split_samples(samples, val_fraction: float, seed: int):
    """A seeded random train/val split of a task's sample list (anything with `subset`)."""
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * val_fraction))
    return samples.subset(sorted(order[n_val:])), samples.subset(sorted(order[:n_val]))


def register_task(task: Task) -> Task:
    return TASKS.register(task.name)(task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def task_of(meta: dict) -> Task:
    """The task of a checkpoint's meta.json (one written before tasks existed: classification)."""
    return get_task(meta.get("task", "classification"))


def model_from_checkpoint(directory: str | Path) -> tuple[nn.Module, dict]:
    """The trained model of a checkpoint folder (model.safetensors + meta.json), in eval mode,
    rebuilt from meta.json alone: no config, no hub. Returns (model, meta)."""
    directory = Path(directory)
    meta_file, weights_file = directory / "meta.json", directory / "model.safetensors"
    for path in (meta_file, weights_file):
        if not path.is_file():
            raise WeightsError(f"{path}: not found (is {directory} a checkpoint folder?)")
    meta = json.loads(meta_file.read_text())
    module = task_of(meta).rebuild_model(meta)
    try:
        load_weights(module, load_file(str(weights_file)), head=())
    except (WeightsError, RuntimeError, OSError) as exc:
        raise WeightsError(f"{weights_file}: does not fit {meta['model']['name']} ({exc})") from exc
    return module.eval(), meta
