"""Which TensorRT engine a replica loads: pure functions of the run's export folder, the GPU
model and the TensorRT version, so they are tested without a GPU or TensorRT (building and
running engines is checked by bench/gpu_check.sh on a lent GPU)."""

from __future__ import annotations

import json
import os

import pytest

from serving.runtime.base import BackendError
from serving.runtime.tensorrt_backend import engine_plan, select_engine
from serving.runtime.tensorrt_build import engine_key, onnx_input

H100, H200 = "NVIDIA H100 80GB HBM3", "NVIDIA H200"


def write_engine(run_dir, name: str, age: int) -> None:
    path = run_dir / "export" / "tensorrt" / f"{name}.plan"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"engine")
    os.utime(path, (1_000_000 + age, 1_000_000 + age))


def write_plan(run_dir, gpu: str, version: str, precision: str, profile=(1, 16, 32)) -> None:
    (run_dir / "export").mkdir(parents=True, exist_ok=True)
    (run_dir / "export" / "model.plan").write_bytes(b"engine")
    info = {"gpu": gpu, "tensorrt": version, "precision": precision,
            "profile": dict(zip(("min", "opt", "max"), profile, strict=True))}  # fmt: skip
    (run_dir / "export" / "model.plan.json").write_text(json.dumps(info))


def test_the_key_names_gpu_version_precision_and_profile_in_a_file_name():
    key = engine_key(H100, "10.9.0", "fp16", 1, 16, 32)
    assert key == "NVIDIA_H100_80GB_HBM3-trt10.9.0-fp16-b1-16-32"
    assert engine_key("A/B", "10.9.0", "int8", 1, 1, 1) == "A_B-trt10.9.0-int8-b1-1-1"
    others = [
        (H100, "10.10.0", "fp16", 1, 16, 32),
        (H100, "10.9.0", "int8", 1, 16, 32),
        (H100, "10.9.0", "fp16", 1, 8, 16),
        (H200, "10.9.0", "fp16", 1, 16, 32),
    ]
    assert len({key, *(engine_key(*args) for args in others)}) == 5


def test_model_plan_is_used_on_the_gpu_and_version_that_built_it(tmp_path):
    write_plan(tmp_path, H100, "10.9.0", "int8")
    write_engine(tmp_path, engine_key(H100, "10.9.0", "fp16", 1, 16, 32), age=100)  # newer, but not chosen
    assert select_engine(tmp_path, H100, "10.9.0") == tmp_path / "export" / "model.plan"


def test_elsewhere_the_cache_gives_the_engine_of_the_exported_precision_and_profile(tmp_path):
    write_plan(tmp_path, H100, "10.9.0", "int8", profile=(1, 16, 32))
    wanted = engine_key(H200, "10.9.0", "int8", 1, 16, 32)
    write_engine(tmp_path, wanted, age=1)
    write_engine(tmp_path, engine_key(H200, "10.9.0", "fp16", 1, 16, 32), age=50)  # newer, other precision
    write_engine(tmp_path, engine_key(H200, "10.9.0", "int8", 1, 4, 8), age=60)  # newer, other profile
    assert select_engine(tmp_path, H200, "10.9.0").name == f"{wanted}.plan"
    (tmp_path / "export" / "tensorrt" / f"{wanted}.plan").unlink()  # without it: the newest for this GPU
    assert (
        select_engine(tmp_path, H200, "10.9.0").name == f"{engine_key(H200, '10.9.0', 'int8', 1, 4, 8)}.plan"
    )


def test_no_engine_for_this_gpu_and_version_is_an_error_saying_how_to_build_one(tmp_path):
    write_plan(tmp_path, H100, "10.9.0", "fp16")
    write_engine(tmp_path, engine_key(H100, "10.9.0", "fp16", 1, 16, 32), age=1)
    write_engine(tmp_path, engine_key(H200, "10.8.0", "fp16", 1, 16, 32), age=2)  # other TensorRT version
    with pytest.raises(
        BackendError, match=r"no TensorRT engine for NVIDIA H200 with TensorRT 10.9.0; run `vft export"
    ):
        select_engine(tmp_path, H200, "10.9.0")


def test_a_gpu_without_an_engine_builds_one_as_the_run_was_exported(tmp_path):
    """A replica on an H200 serving a run exported (INT8, batches 1..32) on an H100: it builds,
    from the QDQ model, the engine the export asked for; never loads the H100's."""
    write_plan(tmp_path, H100, "10.9.0", "int8")
    assert engine_plan(tmp_path, H100, "10.9.0") == ("load", tmp_path / "export" / "model.plan")
    with pytest.raises(BackendError, match="no model.int8.onnx in it to build one from"):
        engine_plan(tmp_path, H200, "10.9.0")
    (tmp_path / "export" / "model.int8.onnx").write_bytes(b"onnx")
    assert engine_plan(tmp_path, H200, "10.9.0") == ("build", ("int8", 16, 32))
    assert engine_plan(tmp_path, H100, "10.10.0") == ("build", ("int8", 16, 32))  # another TensorRT


def test_a_run_never_exported_for_tensorrt_builds_fp16_for_batches_up_to_32(tmp_path):
    (tmp_path / "export").mkdir()
    with pytest.raises(BackendError, match="no model.onnx in it"):
        engine_plan(tmp_path, H200, "10.9.0")
    (tmp_path / "export" / "model.onnx").write_bytes(b"onnx")
    assert engine_plan(tmp_path, H200, "10.9.0") == ("build", ("fp16", 16, 32))
    write_engine(tmp_path, engine_key(H200, "10.9.0", "fp16", 1, 16, 32), age=1)
    assert engine_plan(tmp_path, H200, "10.9.0")[0] == "load"  # what a first replica built


def test_the_engine_profile_comes_from_the_onnx_models_input(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def model(dims):
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)
        y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)
        graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g", [x], [y])
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(helper.make_model(graph), path)
        return path

    assert onnx_input(model(["batch", 3, 224, 160])) == ("input", (3, 224, 160))
    with pytest.raises(BackendError, match="dynamic size besides the batch"):
        onnx_input(model(["batch", 3, "height", "width"]))
