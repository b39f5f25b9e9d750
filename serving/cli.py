"""`vft export`, `vft serve`, `vft predict` (registered through the `vft.commands` entry points)."""

from __future__ import annotations

from pathlib import Path


def export(run_dir: Path) -> None:
    """Export the best checkpoint to ONNX / INT8 / TensorRT, with a parity report."""
    raise NotImplementedError


def serve(run_dir: Path) -> None:
    """Serve RUN_DIR with Ray Serve on a local cluster."""
    raise NotImplementedError


def predict(url: str, images: list[Path]) -> None:
    """POST images to a running server; print the JSON answers."""
    raise NotImplementedError
