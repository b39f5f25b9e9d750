"""What every exporter is and what `vft export` takes: the exporters' registry, the options and
parity thresholds, the `--format` list."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainer.components.deploy import Batches, OnnxGraph, Thresholds
from trainer.errors import VftError
from trainer.registry import Registry

EXPORTERS = Registry("format", "serving.export")


class ExportError(VftError):
    """Export cannot start or go on: bad run directory, format, option or data (exit code 2)."""


@dataclass
class ExportOptions:
    formats: tuple[str, ...] | None = None  # None: the task's default
    thresholds: Thresholds = field(default_factory=Thresholds)
    opset: int = 18
    int8_mode: str = "static"  # static (QDQ, calibrated) | dynamic
    calibration_images: int = 256
    max_images: int = 2000  # validation images used for parity
    batch_size: int = 32
    trt_precision: str = "fp16"  # fp16 | int8 (from the calibrated QDQ model)
    trt_max_batch: int = 32
    data: Path | None = None  # validation images; default: the run's data.val


class Exporter:
    """Writes one format to RUN_DIR/export/; the pipeline then runs the backend of the same name
    against PyTorch."""

    requires: tuple[str, ...] = ()  # formats built before it (their files are its input)
    exact: bool = False  # FP32: must match PyTorch closely (else: may lose max_metric_drop)
    calibrated: bool = False  # takes calibration batches (training images)

    def unavailable(self) -> str | None:
        """Why this format cannot be built on this machine, or None when it can."""
        return None

    def build(self, run_dir: Path, graph: OnnxGraph, opts: ExportOptions, calibration: Batches) -> dict:
        """Write the format; what the report says of it."""
        raise NotImplementedError


def parse_formats(text: str) -> tuple[str, ...]:
    """A comma-separated `--format` list of registered exporters, in order, without repeats."""
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    allowed = EXPORTERS.names()
    unknown = [f for f in formats if f not in allowed]
    if unknown or not formats:
        raise ExportError(f"--format: unknown {', '.join(unknown) or 'empty'}; allowed: {', '.join(allowed)}")
    return formats


def with_requirements(formats: tuple[str, ...]) -> tuple[str, ...]:
    """`formats` after those they are built from (int8 and TensorRT from the ONNX model)."""
    return tuple(dict.fromkeys(f for name in formats for f in (*EXPORTERS.get(name).requires, name)))
