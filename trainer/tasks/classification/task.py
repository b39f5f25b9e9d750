"""Classification (single- or multi-label) on the task interface: ImageFolder/CSV data, timm or
torchvision classifiers, MixUp/CutMix, cross-entropy/BCE/focal, torchmetrics scores."""

from __future__ import annotations

import torch

from trainer.components.deploy import OnnxGraph, Thresholds
from trainer.components.device_decode import BatchTransform
from trainer.components.hf_data import HfOptions
from trainer.components.hf_models import rebuild_hf
from trainer.components.losses import OutputLoss, create_loss
from trainer.components.models import BuiltModel, create_model, list_models, model_sources
from trainer.components.parity import logits_failures, logits_parity
from trainer.components.preprocess import (
    eval_decode_side,
    eval_ops,
    eval_transform,
    normalize_ops,
    train_decode_side,
    train_ops,
    train_transform,
)
from trainer.components.synthetic import shapes_classification
from trainer.errors import ConfigError
from trainer.tasks.base import DataSplit, EvalContext, Task
from trainer.tasks.classification import export
from trainer.tasks.classification.augment import batch_mix, erasing_ops, policy_ops
from trainer.tasks.classification.config import ClassificationConfig
from trainer.tasks.classification.data import Collate, ImageDataset, Samples, check_split, read_split
from trainer.tasks.classification.evaluate import ClassificationEval
from trainer.tasks.classification.metrics import ROBUST_METRIC, ClassificationMetrics
from trainer.tasks.classification.robust import robust_accuracy
from trainer.tasks.classification.serve import ClassificationHandler


class Classification(Task):
    name = "classification"
    config = ClassificationConfig
    device_decoding = True

    def read_data(self, cfg) -> DataSplit:
        d, h = cfg.data, cfg.data.hf
        options = HfOptions(h.config, h.split, h.image_column, h.label_column)
        split = read_split(
            d.train, d.val, d.format, d.val_fraction, d.split_seed, d.multilabel, options, h.val_split
        )
        return DataSplit(*split)

    def check_data(self, cfg) -> DataSplit:
        split = self.read_data(cfg)
        check_split(split.train, split.val, split.classes, cfg.data.train)
        return split

    def manifest(self, samples: Samples, classes: list[str]) -> list[tuple[str, list[str] | None]]:
        pairs = zip(samples.paths, samples.labels, strict=True)
        return [(f"{path}\t{','.join(labels)}", labels) for path, labels in pairs]

    def build_datasets(self, cfg, split: DataSplit, prep, encoded: bool = False):
        d = cfg.data
        common = {
            "multilabel": d.multilabel,
            "max_pixels": d.max_image_pixels,
            "skip_bad": d.skip_bad_images,
            "encoded": encoded,
        }
        eval_side = eval_decode_side(prep) if d.jpeg_draft else None
        if cfg.finetune.cache_features:  # each image's features are computed once: no augmentation
            transform, train_side = eval_transform(prep), eval_side
        else:
            transform = train_transform(
                prep, d.augment, policy=policy_ops(d.augment), after_normalize=erasing_ops(d.augment)
            )
            train_side = train_decode_side(prep, d.augment) if d.jpeg_draft else None
        train = ImageDataset(split.train, split.classes, transform, min_side=train_side, **common)
        val = ImageDataset(split.val, split.classes, eval_transform(prep), min_side=eval_side, **common)
        if encoded:
            val.batch_transform = BatchTransform(eval_ops(prep), normalize_ops(prep))
            train.batch_transform = (
                val.batch_transform
                if cfg.finetune.cache_features
                else BatchTransform(
                    [*train_ops(prep, d.augment), *policy_ops(d.augment)],
                    normalize_ops(prep),
                    after_normalize=erasing_ops(d.augment),
                    batch_ops=self.collate(cfg, len(split.classes), train=True).mix,
                )
            )
        return train, val

    def collate(self, cfg, num_classes: int, train: bool) -> Collate:
        mix = batch_mix(cfg.data.augment, num_classes) if train and not cfg.data.multilabel else None
        return Collate(mix)

    def feature_head(self, cfg, built: BuiltModel) -> str | None:
        if not cfg.finetune.cache_features:
            return None
        if len(built.head) != 1:
            heads = ", ".join(built.head)
            raise ConfigError(
                f"finetune.cache_features: {built.name} has several heads ({heads}); turn it off"
            )
        return built.head[0]

    def build_model(self, cfg, num_classes: int) -> BuiltModel:
        m = cfg.model
        return create_model(
            m.name, num_classes, m.source, m.weights, m.drop_rate, m.drop_path_rate, cfg.data.img_size
        )

    def model_names(self, pattern: str | None = None) -> list[tuple[str, str]]:
        return [(name, ", ".join(model_sources(name))) for name in list_models(pattern)]

    def build_loss(self, cfg) -> OutputLoss:
        loss = cfg.loss
        return OutputLoss(create_loss(loss.name, cfg.data.multilabel, loss.label_smoothing, loss.focal_gamma))

    def balance_labels(self, cfg, train: ImageDataset) -> list[int] | None:
        return [t[0] for t in train.targets] if cfg.data.balanced_sampling else None

    def write_example_data(self, out, n_train: int, n_val: int, size: int, seed: int) -> dict[str, int]:
        return shapes_classification(out, n_train, n_val, size, seed)

    def create_metrics(self, meta: dict, device="cpu") -> ClassificationMetrics:
        return ClassificationMetrics(meta["num_classes"], meta["multilabel"], device)

    def meta_fields(self, cfg) -> dict:
        m = cfg.model
        return {
            "multilabel": cfg.data.multilabel,
            "model": {
                "drop_rate": m.drop_rate,
                "drop_path_rate": m.drop_path_rate,
                "img_size": cfg.data.img_size,
            },
        }

    def extra_val_metrics(self, cfg, model, loader, ctx: EvalContext) -> dict[str, float]:
        return {ROBUST_METRIC: robust_accuracy(model, loader, ctx)} if cfg.train.robust_val else {}

    def rebuild_model(self, meta: dict) -> torch.nn.Module:
        m = meta["model"]
        if m["source"] == "hf":
            return rebuild_hf(m, "classification", meta["classes"])
        return create_model(
            m["name"], meta["num_classes"], m["source"], "none", img_size=m.get("img_size")
        ).module

    def postprocess(self, outputs: torch.Tensor, meta: dict) -> torch.Tensor:
        """Class probabilities: softmax, or per-label sigmoid for multilabel logits."""
        return outputs.float().sigmoid() if meta["multilabel"] else outputs.float().softmax(-1)

    # -- export, serving, evaluation (called by serving/)
    export_spec = export.SPEC

    def graph_outputs(self, model, inputs: torch.Tensor) -> torch.Tensor:
        return export.graph_outputs(model, inputs)

    def metric_inputs(self, outputs) -> torch.Tensor:
        return export.metric_inputs(outputs)

    def onnx_graph(self, model, meta: dict) -> OnnxGraph:
        return export.onnx_graph(model, meta)

    def parity(self, reference: list, outputs: list) -> dict:
        return logits_parity(reference, outputs)

    def parity_failures(self, result: dict, exact: bool, thresholds: Thresholds) -> list[str]:
        return logits_failures(result, exact, thresholds)

    def serve_handler(self, meta: dict, top_k: int, score_threshold: float) -> ClassificationHandler:
        return ClassificationHandler(meta, top_k)

    def evaluation(self, meta: dict, n_bins: int) -> ClassificationEval:
        return ClassificationEval(self, meta, n_bins)
