"""Inference backends by registered name (`torch`, `onnx`, `int8`, `tensorrt`), built from a run
directory, and the run-directory helpers serving needs. Importing the package registers every
backend (`registry.BACKENDS`)."""

from serving.runtime import onnx_backends, tensorrt_backend, torch_backend  # noqa: F401 (they register)
