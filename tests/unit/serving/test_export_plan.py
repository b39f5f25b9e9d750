"""Which formats `vft export` builds: the requested ones after what they are built from, less
those the task or the machine cannot build, for which nothing is built."""

from __future__ import annotations

from serving.export.pipeline import plan_formats
from trainer.components.deploy import ExportSpec

CLASSIFIER = ExportSpec(formats=("onnx", "int8", "tensorrt"), default_formats=("onnx", "int8"))
DETECTOR = ExportSpec(formats=("onnx", "tensorrt"), default_formats=("onnx",), unsupported="ONNX (FP32) only")


def no_tensorrt(fmt: str) -> str | None:
    return "no TensorRT here" if fmt == "tensorrt" else None


def test_int8_and_tensorrt_are_built_after_the_onnx_model_they_come_from():
    assert plan_formats(("tensorrt", "int8"), CLASSIFIER, lambda f: None) == (
        ("onnx", "tensorrt", "int8"),
        {},
    )


def test_an_unbuildable_format_gets_no_onnx_model_of_its_own():
    assert plan_formats(("tensorrt",), CLASSIFIER, no_tensorrt) == ((), {"tensorrt": "no TensorRT here"})
    assert plan_formats(("int8",), DETECTOR, no_tensorrt) == ((), {"int8": "ONNX (FP32) only"})


def test_requested_formats_are_built_beside_an_unbuildable_one():
    formats, blocked = plan_formats(("onnx", "tensorrt", "int8"), CLASSIFIER, no_tensorrt)
    assert formats == ("onnx", "int8") and blocked == {"tensorrt": "no TensorRT here"}
