"""`vft eval` of a single-label classifier: ImageFolder or CSV domains through the checkpoint's
eval preprocessing; per domain top-1, macro F1, per-class accuracy, the confusion matrix, ECE and
reliability bins; a confusion matrix and a reliability diagram of the first domain; FGSM and PGD
apply (they ascend a classifier's loss)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.components import plots
from trainer.components import robustness as R
from trainer.components.deploy import Batches, TaskEval, loader_batches
from trainer.components.preprocess import eval_transform
from trainer.tasks.base import Task
from trainer.tasks.classification.data import Collate, ImageDataset, Samples, read_samples


class CalibratedMetrics:
    """The task's metrics of a domain's logits with the calibration of their softmax: top-1,
    macro F1, ECE, per-class accuracy (by class name), confusion matrix and reliability bins."""

    def __init__(self, task: Task, meta: dict, n_bins: int):
        self.metrics = task.create_metrics(meta)
        self.classes, self.n_bins = meta["classes"], n_bins
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: np.ndarray, targets: torch.Tensor) -> None:
        logits = torch.from_numpy(outputs).float()
        self.metrics.update(logits, targets)
        self.logits.append(logits)
        self.targets.append(targets)

    def compute(self, prefix: str = "") -> tuple[dict[str, float], dict]:
        scalars, tables = self.metrics.compute(prefix)
        probs, targets = torch.cat(self.logits).softmax(1), torch.cat(self.targets)
        ece = R.expected_calibration_error(probs, targets, self.n_bins)
        return (
            {
                f"{prefix}top1": scalars[f"{prefix}top1"],
                f"{prefix}f1": scalars[f"{prefix}f1"],
                f"{prefix}ece": ece,
            },
            {
                "per_class_acc": dict(zip(self.classes, tables["per_class_acc"], strict=True)),
                "confusion": tables["confusion"],
                "reliability": R.reliability_bins(probs, targets, self.n_bins),
            },
        )


class ClassificationEval(TaskEval):
    metric = "top1"
    columns = [("top-1", "top1"), ("macro F1", "f1"), ("ECE", "ece")]
    # report.json names the corruption suite's fields after top-1, as it always has for classifiers
    report_names = {"clean": "clean_top1", "table": "top1", "per_corruption": "per_corruption_top1"}
    attacks = True

    def __init__(self, task: Task, meta: dict, n_bins: int):
        self.task, self.meta, self.n_bins = task, meta, n_bins
        prep = task.preprocessing_from_meta(meta)
        self.transform = eval_transform(prep)
        self.norm = R.Normalizer(prep.mean, prep.std)

    def read_samples(self, path: Path) -> Samples:
        return read_samples(path)

    def batches(self, samples: Samples, batch_size: int) -> Batches:
        dataset = ImageDataset(samples, self.meta["classes"], self.transform)
        return loader_batches(dataset, Collate(), batch_size)

    def metrics(self) -> CalibratedMetrics:
        return CalibratedMetrics(self.task, self.meta, self.n_bins)

    def corrupt(self, inputs: np.ndarray, name: str, severity: int, seed: int, index: int) -> np.ndarray:
        return self.norm.corrupt(torch.from_numpy(inputs), name, severity, seed + index).numpy()

    def write_extras(self, report: dict, out: Path) -> list[str]:
        primary = report["domains"][report["primary_domain"]]
        plots.reliability_diagram(primary["reliability"], primary["ece"], out / "reliability.png")
        plots.confusion_matrix(primary["confusion"], self.meta["classes"], out / "confusion_matrix.png",
                               f"{report['primary_domain']} ({report['backend']})")  # fmt: skip
        return [
            "![confusion matrix](confusion_matrix.png)", "",
            "## Calibration", "", f"ECE ({len(primary['reliability'])} bins): {primary['ece']:.4f}", "",
            "![reliability diagram](reliability.png)", "",
        ]  # fmt: skip
