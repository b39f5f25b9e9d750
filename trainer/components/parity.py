"""Parity of an exported model that outputs logits (classification, segmentation) with PyTorch:
the largest absolute logit difference and the argmax agreement (per image, or per pixel), and
the gates they must pass."""

from __future__ import annotations

import numpy as np

from trainer.components.deploy import Thresholds


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
