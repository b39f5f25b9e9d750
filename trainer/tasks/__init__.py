"""The task interface and tasks by registered name.

A task (classification, detection, segmentation) owns everything that depends on what
the labels describe: config checks, reading the dataset, the model, preprocessing and joint
image+target transforms, collation, the loss, metrics, postprocessing and the fields it adds to
meta.json. The training loop (`trainer.loop`, `trainer.step`) only calls this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainer.registry import TASKS

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from trainer.config import VftConfig
    from trainer.models import BuiltModel
    from trainer.preprocess import Preprocessing


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
    draws_predictions: bool = False  # plot_predictions draws something

    # -- config
    def metric_names(self, multilabel: bool = False) -> list[str]:
        raise NotImplementedError

    def default_monitor(self, multilabel: bool = False) -> str:
        raise NotImplementedError

    def validate_config(self, cfg: VftConfig) -> None:
        """Raise ValueError('dotted.field: why') for settings this task cannot use."""

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
        from trainer.preprocess import resolve_preprocessing

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
        from trainer.preprocess import Preprocessing

        return Preprocessing.from_meta(meta["preprocessing"])

    def plot_predictions(self, model: torch.nn.Module, meta: dict, dataset: Dataset, path) -> bool:
        """Draw the model's predictions on the first validation samples to `path` (PNG);
        False when the task has no such plot."""
        return False


# settings that act on whole images or single labels: detection and segmentation reject them
WHOLE_IMAGE_ONLY = {
    "data.multilabel": lambda c: c.data.multilabel,
    "data.balanced_sampling": lambda c: c.data.balanced_sampling,
    "data.augment.mixup_alpha": lambda c: c.data.augment.mixup_alpha,
    "data.augment.cutmix_alpha": lambda c: c.data.augment.cutmix_alpha,
    "data.augment.random_erasing": lambda c: c.data.augment.random_erasing,
    "data.augment.auto_augment": lambda c: c.data.augment.auto_augment != "none",
    "train.robust_val": lambda c: c.train.robust_val,
}

# settings only detection uses: other tasks reject them rather than ignore them
DETECTION_ONLY = {
    "loss.weights": lambda c: c.loss.weights,
    "model.backbone_weights": lambda c: c.model.backbone_weights != "none",
    "model.trainable_backbone_layers": lambda c: c.model.trainable_backbone_layers is not None,
    "data.augment.zoom_out": lambda c: c.data.augment.zoom_out != 1.0,
    "data.augment.iou_crop": lambda c: c.data.augment.iou_crop,
}


def reject_unsupported(cfg: VftConfig, task: str, checks: dict) -> None:
    """ValueError('field: not supported by task X') for the first setting `checks` flags."""
    for field, used in checks.items():
        if used(cfg):
            raise ValueError(f"{field}: not supported by task {task}")


def split_samples(samples, val_fraction: float, seed: int):
    """A seeded random train/val split of a task's sample list (anything with `subset`)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * val_fraction))
    return samples.subset(sorted(order[n_val:])), samples.subset(sorted(order[:n_val]))


def register_task(task: Task) -> Task:
    return TASKS.register(task.name)(task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def _register_builtin() -> None:
    from trainer.tasks import classification, detection, segmentation  # noqa: F401 - they register themselves


_register_builtin()
