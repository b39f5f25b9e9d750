"""The task interface and tasks by registered name.

A task (classification, detection, segmentation) owns everything that depends on what
the labels describe: config checks, reading the dataset, the model, preprocessing and joint
image+target transforms, collation, the loss, metrics, postprocessing and the fields it adds to
meta.json. The training loop (`trainer.loop`, `trainer.step`) only calls this interface.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

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


class Task:
    """The interface each task implements. Only the `build_*`/`read_*`/`check_*`/
    `validate_config` methods read the config tree."""

    name: str = ""
    config: type[VftConfig]  # the task's config class (`trainer/tasks/<task>/config.py`)
    draws_predictions: bool = False  # plot_predictions draws something

    # -- data
    def read_data(self, cfg: VftConfig) -> DataSplit:
        raise NotImplementedError

    def check_data(self, cfg: VftConfig) -> list[str]:
        """Read the dataset as the workers will (DataError naming the file on bad input)."""
        raise NotImplementedError

    def build_datasets(
        self, cfg: VftConfig, split: DataSplit, prep: Preprocessing
    ) -> tuple[Dataset, Dataset]:
        """Train and val datasets with the train/eval transforms applied."""
        raise NotImplementedError

    def collate(self, cfg: VftConfig, num_classes: int, train: bool):
        """A collate function returning (images, targets, skipped_count)."""
        raise NotImplementedError

    # -- model
    def build_model(self, cfg: VftConfig, num_classes: int) -> BuiltModel:
        raise NotImplementedError

    def build_preprocessing(self, cfg: VftConfig, built: BuiltModel) -> Preprocessing:
        d = cfg.data
        return resolve_preprocessing(
            built.data_defaults, d.img_size, d.mean, d.std, d.interpolation, d.crop_pct
        )

    def build_loss(self, cfg: VftConfig) -> TaskLoss:
        raise NotImplementedError

    def create_metrics(
        self, num_classes: int, multilabel: bool = False, device: torch.device | str = "cpu"
    ) -> Metrics:
        raise NotImplementedError

    def build_metrics(self, cfg: VftConfig, num_classes: int, device: torch.device | str = "cpu") -> Metrics:
        return self.create_metrics(num_classes, cfg.data.multilabel, device)

    # -- evaluation and outputs
    def eval_outputs(self, model: torch.nn.Module, images: Any) -> Any:
        """The model's evaluation outputs, in the form metrics and `on_outputs` take."""
        return model(images)

    def postprocess(self, outputs: Any) -> Any:
        """Outputs to predictions (probabilities, masks, boxes)."""
        raise NotImplementedError

    def meta_fields(self, cfg: VftConfig) -> dict:
        """Task-specific fields added to meta.json."""
        return {}

    def rebuild_model(self, meta: dict) -> torch.nn.Module:
        """The architecture of a saved checkpoint from its meta.json alone (no weights loaded)."""
        raise NotImplementedError

    def preprocessing_from_meta(self, meta: dict):
        return Preprocessing.from_meta(meta["preprocessing"])

    def plot_predictions(self, model: torch.nn.Module, meta: dict, dataset: Dataset, path) -> bool:
        """Draw the model's predictions on the first validation samples to `path` (PNG);
        False when the task has no such plot."""
        return False


def split_samples(samples, val_fraction: float, seed: int):
    """A seeded random train/val split of a task's sample list (anything with `subset`)."""
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * val_fraction))
    return samples.subset(sorted(order[n_val:])), samples.subset(sorted(order[:n_val]))


def register_task(task: Task) -> Task:
    return TASKS.register(task.name)(task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def model_from_checkpoint(directory: str | Path) -> tuple[nn.Module, dict]:
    """The trained model of a checkpoint folder (model.safetensors + meta.json), in eval mode,
    rebuilt from meta.json alone: no config, no hub. Returns (model, meta)."""
    directory = Path(directory)
    meta_file, weights_file = directory / "meta.json", directory / "model.safetensors"
    for path in (meta_file, weights_file):
        if not path.is_file():
            raise WeightsError(f"{path}: not found (is {directory} a checkpoint folder?)")
    meta = json.loads(meta_file.read_text())
    module = get_task(meta.get("task", "classification")).rebuild_model(meta)
    try:
        load_weights(module, load_file(str(weights_file)), head=())
    except (WeightsError, RuntimeError, OSError) as exc:
        raise WeightsError(f"{weights_file}: does not fit {meta['model']['name']} ({exc})") from exc
    return module.eval(), meta
