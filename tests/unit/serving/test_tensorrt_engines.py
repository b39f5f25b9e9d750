"""Which TensorRT engine a replica loads: pure functions of the run's export folder, the GPU
model and the TensorRT version, so they are tested without a GPU or TensorRT (building and
running engines is checked by bench/gpu_check.sh on a lent GPU)."""

from __future__ import annotations

import json
import os

import pytest

from serving.runtime.base import BackendError
from serving.runtime.tensorrt_backend import engine_key, select_engine

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
