"""`int8`: ONNX Runtime quantization of model.onnx to model.int8.onnx, static QDQ calibrated on
training images (per-channel int8 weights, uint8 activations, MinMax) or dynamic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from serving.export.base import EXPORTERS, Exporter, ExportOptions
from serving.runtime.rundir import INT8_FILE, ONNX_FILE, export_path
from trainer.components.deploy import Batches, OnnxGraph


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


class Int8Exporter(Exporter):
    requires = ("onnx",)
    calibrated = True

    def build(self, run_dir: Path, graph: OnnxGraph, opts: ExportOptions, calibration: Batches) -> dict:
        batches = [inputs for inputs, _ in calibration]
        out = export_path(run_dir, INT8_FILE)
        return quantize_int8(export_path(run_dir, ONNX_FILE), out, batches, opts.int8_mode, graph.inputs[0])


EXPORTERS.register("int8")(Int8Exporter())
