"""`int8`: model.int8.onnx, a QDQ model. A quantization-aware run (best/qat.safetensors) gives
its learned scales: the QAT graph is rebuilt, converted and exported as it is, no calibration.
Otherwise ONNX Runtime quantizes model.onnx: static QDQ calibrated on training images
(per-channel int8 weights, uint8 activations, MinMax) or dynamic."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

from serving.export.base import EXPORTERS, Exporter, ExportError, ExportOptions
from serving.export.to_onnx import export_onnx
from serving.runtime.base import NO_ONNXRUNTIME
from serving.runtime.rundir import INT8_FILE, ONNX_FILE, checkpoint_dir, export_path, read_run_meta
from trainer.components import checkpoint as ckpt
from trainer.components.deploy import Batches, OnnxGraph
from trainer.components.qat import QatSettings, convert, load_qparams, prepare

try:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
except ImportError as exc:
    raise ImportError(NO_ONNXRUNTIME) from exc


class Calibration:
    """onnxruntime.quantization's CalibrationDataReader over preprocessed batches."""

    def __init__(self, batches: list[np.ndarray], input_name: str):
        self.batches: Iterator[np.ndarray] = iter(batches)
        self.input_name = input_name

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # pragma: no cover - called by some calibrators only
        pass


def quantize_int8(
    onnx_path: Path, out_path: Path, calibration: list[np.ndarray], mode: str, input_name: str
) -> dict:
    """`calibration`: preprocessed batches for the graph's input `input_name` (static mode)."""
    prepared = out_path.with_name("model.int8-prep.onnx")
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    try:
        if mode == "dynamic":
            quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
        else:
            quantize_static(
                str(prepared), str(out_path), Calibration(calibration, input_name),
                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip
    finally:
        prepared.unlink(missing_ok=True)
    return {"path": str(out_path), "mode": mode, "calibration_images": sum(len(b) for b in calibration),
            "bytes": out_path.stat().st_size}  # fmt: skip


def export_qat_int8(graph: OnnxGraph, qat: dict, qparams_file: Path, out_path: Path, opset: int) -> dict:
    """The QAT graph of `graph.module` (the float model) with the saved quantization state,
    converted and written as QDQ ONNX. `qat`: meta.json's training.qat."""
    model = copy.deepcopy(graph.module)  # conversion folds BatchNorm into the weights it holds
    try:
        prepared = prepare(model, graph.example[0], QatSettings(per_channel=qat["per_channel"]))
        load_qparams(prepared, load_file(str(qparams_file)), str(qparams_file))
    except ValueError as exc:  # QatPrepareError or a state that does not fit
        raise ExportError(str(exc)) from exc
    result = export_onnx(replace(graph, module=convert(prepared)), out_path, opset, slim=False)
    return {**result, "mode": "qat", "calibration_images": 0}


class Int8Exporter(Exporter):
    requires = ("onnx",)
    calibrated = True

    def build(self, run_dir: Path, graph: OnnxGraph, opts: ExportOptions, calibration: Batches) -> dict:
        out = export_path(run_dir, INT8_FILE)
        qparams_file = checkpoint_dir(run_dir) / ckpt.QAT_FILE
        if qparams_file.is_file():
            qat = read_run_meta(run_dir)["training"]["qat"]
            return export_qat_int8(graph, qat, qparams_file, out, opts.opset)
        batches = [inputs for inputs, _ in calibration]
        return quantize_int8(export_path(run_dir, ONNX_FILE), out, batches, opts.int8_mode, graph.inputs[0])


EXPORTERS.register("int8")(Int8Exporter())
