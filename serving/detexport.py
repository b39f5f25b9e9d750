"""`vft export` for detection runs: the detector, its own resize/normalise and box
post-processing included, to ONNX through torch.onnx's TorchScript exporter (the dynamo
exporter does not trace torchvision's detection heads): one image (3, H, W) of any size in,
`boxes` (x1, y1, x2, y2 in the image's pixels), `labels` (1-based, 0 = background) and
`scores` out. Parity on validation images against PyTorch: images whose box count agrees,
max abs box diff where it does, and the monitored metric (mAP) of both. INT8 and TensorRT are
reported unavailable for detectors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from serving import backends as B
from trainer.components import checkpoint as ckpt

DETECTION_FORMATS = ("onnx",)


class DetectorOutputs(torch.nn.Module):
    """One image in, (boxes, labels, scores) out: the detector's list-of-dicts interface as
    plain tensors for ONNX."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def export_detector_onnx(model: torch.nn.Module, path: Path, opset: int, size: int) -> dict:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(3, size, size)
    dynamic = {
        B.DETECTION_INPUT: {1: "height", 2: "width"},
        **{k: {0: "detections"} for k in B.DETECTION_OUTPUTS},
    }
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            DetectorOutputs(model).eval(), (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[B.DETECTION_INPUT], output_names=list(B.DETECTION_OUTPUTS), dynamic_axes=dynamic,
        )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return {"path": str(path), "opset": opset, "nodes": len(proto.graph.node), "bytes": path.stat().st_size,
            "dynamic_axes": ["height", "width"]}  # fmt: skip


def validation_images(run_dir: Path, meta: dict, opts) -> tuple[list[np.ndarray], list[dict]]:
    from serving.export import ExportError, run_config
    from trainer.tasks.base import get_task

    cfg = run_config(run_dir, opts.data)
    task = get_task("detection")
    split = task.read_data(cfg)
    if not len(split.val):
        raise ExportError(f"data.val: {cfg.data.val} holds no images")
    samples = split.val.subset(range(min(opts.max_images, len(split.val))))
    dataset = task.build_datasets(cfg, type(split)(samples, samples, meta["classes"]), None)[1]
    items = [dataset[i] for i in range(len(dataset))]
    return [x.numpy() for x, _ in items], [t for _, t in items]


def detection_metric(meta: dict, outputs: list, targets: list[dict]) -> float:
    from trainer.tasks.detection.metrics import DetectionMetrics

    metrics = DetectionMetrics(meta["num_classes"])
    preds = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(lab), "scores": torch.from_numpy(s)}
             for b, lab, s in outputs]  # fmt: skip
    metrics.update(preds, targets)
    scalars, _ = metrics.compute("val/")
    return scalars[meta["monitor"]["metric"]]


def box_parity(reference: list, outputs: list) -> dict:
    same = [(r, o) for r, o in zip(reference, outputs, strict=True) if len(r[0]) == len(o[0])]
    diffs = [float(np.abs(r[0] - o[0]).max()) for r, o in same if len(r[0])]
    labels = [bool((r[1] == o[1]).all()) for r, o in same]
    return {
        "count_agreement": len(same) / max(len(reference), 1),
        "label_agreement": sum(labels) / max(len(reference), 1),
        "max_abs_box_diff": max(diffs, default=0.0),
    }


def export_detection(run_dir: Path, best: Path, model: torch.nn.Module, meta: dict, opts) -> dict:
    from serving.export import images_per_second

    out = Path(run_dir, B.EXPORT_DIR)
    images, targets = validation_images(run_dir, meta, opts)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best / ckpt.META_FILE, out / ckpt.META_FILE)
    torch_backend = B.DetectionTorchBackend(run_dir)
    reference = torch_backend(images)
    metric, ref_value = meta["monitor"]["metric"], detection_metric(meta, reference, targets)
    torch_speed = images_per_second(torch_backend, images[:1])
    report: dict = {
        "run_dir": str(run_dir), "checkpoint": str(best), "epoch": meta["epoch"], "images": len(images),
        "thresholds": asdict(opts.thresholds),
        "torch": {"metric": metric, "value": ref_value, "img_s_batch1": torch_speed},
        "formats": {},
    }  # fmt: skip
    for fmt in opts.formats:
        if fmt not in DETECTION_FORMATS:
            report["formats"][fmt] = {"status": "unavailable", "reason": "detection exports ONNX (FP32) only"}
            continue
        size = meta["preprocessing"]["min_size"]
        result = export_detector_onnx(model, B.export_path(run_dir, B.ONNX_FILE), opts.opset, size)
        backend = B.DetectionOnnxBackend(run_dir)
        outputs = backend(images)
        value = detection_metric(meta, outputs, targets)
        result.update(
            box_parity(reference, outputs), metric=metric, value=value, metric_delta=value - ref_value
        )
        result["img_s_batch1"] = images_per_second(backend, images[:1])
        result["failed"] = detection_gate(result, opts.thresholds)
        result["status"] = "failed" if result["failed"] else "passed"
        report["formats"][fmt] = result
    report["passed"] = all(r["status"] != "failed" for r in report["formats"].values())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def detection_gate(result: dict, t) -> list[str]:
    failed = []
    if result["count_agreement"] < t.min_agreement:
        failed.append(f"box count agrees on {result['count_agreement']:.4f} of images < {t.min_agreement}")
    if result["max_abs_box_diff"] > max(t.max_abs_diff, 1e-2):  # boxes are in pixels
        failed.append(f"max abs box diff {result['max_abs_box_diff']:.2e} px")
    if -result["metric_delta"] > t.max_metric_drop:
        failed.append(f"{result['metric']} drops {-result['metric_delta']:.4f} > {t.max_metric_drop}")
    return failed
