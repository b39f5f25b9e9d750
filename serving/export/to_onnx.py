"""`onnx`: the task's ONNX graph (`Task.onnx_graph`) through torch.onnx, opset >= 17. Through the
dynamo exporter the model is also simplified with onnxslim; both are checked with onnx.checker."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import onnxslim
import torch

from serving.export.base import EXPORTERS, Exporter, ExportError, ExportOptions
from serving.runtime.rundir import ONNX_FILE, export_path
from trainer.components.deploy import Batches, OnnxGraph

MIN_OPSET = 17
MAX_DIM = 4096  # the largest size of a dynamic axis (the dynamo exporter needs a bound)


def export_onnx(graph: OnnxGraph, path: Path, opset: int, slim: bool = True) -> dict:
    """`slim`: simplify with onnxslim (dynamo graphs); off for a QDQ graph, whose int8 weights
    constant folding would turn back into floats."""
    if opset < MIN_OPSET:
        raise ExportError(f"--opset: {opset} is below {MIN_OPSET}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not graph.dynamo:
        return {"path": str(path), **_torchscript(graph, path, opset)}
    return {"path": str(path), **_dynamo(graph, path, opset, slim)}


def _dynamo(graph: OnnxGraph, path: Path, opset: int, slim: bool) -> dict:
    shapes = tuple(
        {
            axis: torch.export.Dim(name, min=1, max=MAX_DIM)
            for axis, name in graph.dynamic_axes.get(i, {}).items()
        }
        for i in graph.inputs
    )
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            graph.module, graph.example, dynamo=True, opset_version=opset, dynamic_shapes=shapes,
            input_names=list(graph.inputs), output_names=list(graph.outputs), optimize=True,
        )  # fmt: skip
    raw = program.model_proto
    proto = onnxslim.slim(raw) if slim else raw
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return {
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "nodes": len(proto.graph.node),
        **({"nodes_before_slim": len(raw.graph.node)} if slim else {}),
        "bytes": path.stat().st_size,
        "dynamic_batch": proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param or None,
    }


def _torchscript(graph: OnnxGraph, path: Path, opset: int) -> dict:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.module, graph.example, str(path), dynamo=False, opset_version=opset,
            input_names=list(graph.inputs), output_names=list(graph.outputs), dynamic_axes=graph.dynamic_axes,
        )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return {
        "opset": opset,
        "nodes": len(proto.graph.node),
        "bytes": path.stat().st_size,
        "dynamic_axes": list(graph.dynamic_axes[graph.inputs[0]].values()),
    }


class OnnxExporter(Exporter):
    exact = True

    def build(self, run_dir: Path, graph: OnnxGraph, opts: ExportOptions, calibration: Batches) -> dict:
        return export_onnx(graph, export_path(run_dir, ONNX_FILE), opts.opset)


EXPORTERS.register("onnx")(OnnxExporter())
