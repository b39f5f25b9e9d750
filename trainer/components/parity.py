"""Parity of an exported model with PyTorch, and the gates it must pass: for logits
(classification, segmentation) the largest absolute logit difference and the argmax agreement
(per image, or per pixel); for per-image boxes (detection, instance segmentation) the images
whose box count agrees, their labels and the largest box difference."""

from __future__ import annotations

import numpy as np

from trainer.components.deploy import Thresholds

MIN_BOX_DIFF = 1e-2  # boxes are in pixels: the largest difference never gates below this


def logits_parity(reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    """`reference` and `outputs`: the logits of the same batches, from PyTorch and a format."""
    ref, out = np.concatenate(reference), np.concatenate(outputs)
    return {
        "max_abs_diff": float(np.abs(ref - out).max()),
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()),
    }


def logits_failures(result: dict, exact: bool, t: Thresholds) -> list[str]:
    """The thresholds `result` exceeds (empty when it passes): closeness for an exact format,
    the metric's drop for the others."""
    failed = []
    if exact:
        if result["max_abs_diff"] > t.max_abs_diff:
            failed.append(f"max abs diff {result['max_abs_diff']:.2e} > {t.max_abs_diff:.2e}")
        if result["top1_agreement"] < t.min_agreement:
            failed.append(f"top-1 agreement {result['top1_agreement']:.4f} < {t.min_agreement}")
    elif -result["metric_delta"] > t.max_metric_drop:
        failed.append(f"{result['metric']} drops {-result['metric_delta']:.4f} > {t.max_metric_drop}")
    return failed


def box_parity(reference: list[list], outputs: list[list]) -> dict:
    """`reference` and `outputs`: per backend call, per image (boxes, labels, ...)."""
    ref = [image for call in reference for image in call]
    out = [image for call in outputs for image in call]
    same = [(r, o) for r, o in zip(ref, out, strict=True) if len(r[0]) == len(o[0])]
    diffs = [float(np.abs(r[0] - o[0]).max()) for r, o in same if len(r[0])]
    labels = [bool((r[1] == o[1]).all()) for r, o in same]
    return {
        "count_agreement": len(same) / max(len(ref), 1),
        "label_agreement": sum(labels) / max(len(ref), 1),
        "max_abs_box_diff": max(diffs, default=0.0),
    }


def box_failures(result: dict, exact: bool, t: Thresholds) -> list[str]:
    failed = []
    if result["count_agreement"] < t.min_agreement:
        failed.append(f"box count agrees on {result['count_agreement']:.4f} of images < {t.min_agreement}")
    if result["max_abs_box_diff"] > max(t.max_abs_diff, MIN_BOX_DIFF):
        failed.append(f"max abs box diff {result['max_abs_box_diff']:.2e} px")
    if -result["metric_delta"] > t.max_metric_drop:
        failed.append(f"{result['metric']} drops {-result['metric_delta']:.4f} > {t.max_metric_drop}")
    return failed
