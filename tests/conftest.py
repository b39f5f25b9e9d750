"""Shared fixtures: one local Ray cluster for the whole session (real Ray, oversubscribed
logical CPUs so 2-worker runs fit on a 2-core machine), and generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from trainer.components.synthetic import digits

    out = tmp_path_factory.mktemp("digits")
    digits(out, size=32)
    return out


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    from trainer.components.synthetic import shapes_classification

    out = tmp_path_factory.mktemp("shapes")
    shapes_classification(out, n_train=2000, n_val=300, size=32, seed=1)
    return out


@pytest.fixture(scope="session")
def digits_run(ray_cluster, digits_dir, tmp_path_factory) -> Path:
    """configs/digits.yaml trained once (2 DDP workers, 6 epochs): shared by the training,
    export and serving tests. Tests may add to it (export/) but never change best/."""
    from typer.testing import CliRunner

    from trainer.cli import app

    storage = tmp_path_factory.mktemp("runs")
    args = [
        "train", str(ROOT / "configs/digits.yaml"), f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val", f"run.storage={storage}", "--name", "digits", "--quiet",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return storage / "digits"


@pytest.fixture(scope="session")
def exported_run(digits_run) -> tuple[Path, dict]:
    """`vft export --format onnx,int8 --check` of the digits run: (run dir, report)."""
    import json

    from typer.testing import CliRunner

    from trainer.cli import app

    result = CliRunner().invoke(app, ["export", str(digits_run), "--format", "onnx,int8", "--check"])
    assert result.exit_code == 0, result.output
    return digits_run, json.loads((digits_run / "export" / "report.json").read_text())


def _vft(*args):
    from typer.testing import CliRunner

    from trainer.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def seg_run(ray_cluster, tmp_path_factory) -> Path:
    """configs/shapes_segmentation.yaml trained once on generated shapes (2 DDP workers)."""
    from trainer.tasks.segmentation.shapes import shapes_segmentation

    data = tmp_path_factory.mktemp("shapes_seg")
    shapes_segmentation(data, n_train=400, n_val=80, size=64, seed=1)
    storage = tmp_path_factory.mktemp("runs")
    result = _vft(
        "train", ROOT / "configs/shapes_segmentation.yaml", f"data.train={data}/train",
        f"data.val={data}/val", f"run.storage={storage}", "--quiet", "--name", "seg",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return storage / "seg"


@pytest.fixture(scope="session")
def det_run(ray_cluster, tmp_path_factory) -> Path:
    """configs/shapes_detection.yaml trained once (2 DDP workers, 8 epochs) on shapes written
    by `vft data shapes --task detection` (COCO JSON)."""
    data = tmp_path_factory.mktemp("shapes_det")
    result = _vft(
        "data", "shapes", "--task", "detection", "--out", data, "--n-train", 240, "--n-val", 60, "--seed", 1
    )
    assert result.exit_code == 0, result.output
    storage = tmp_path_factory.mktemp("runs")
    result = _vft(
        "train", ROOT / "configs/shapes_detection.yaml", f"data.train={data}/train",
        f"data.val={data}/val", f"run.storage={storage}", "--quiet", "train.epochs=8", "--name", "det",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return storage / "det"
