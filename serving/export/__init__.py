"""`vft export`: one pipeline (`pipeline.export_run`) that builds the formats asked for, checks
each against PyTorch on the validation images and writes RUN_DIR/export/report.json. Exporters
by registered name, one module each: `onnx`, `int8`, `tensorrt`; importing the package registers
them (`base.EXPORTERS`)."""

from serving.export import to_int8, to_onnx, to_tensorrt  # noqa: F401 (they register)
