"""Shared fixtures: one local Ray cluster for the whole session (real Ray, oversubscribed
logical CPUs so 2-worker runs fit on a 2-core machine), and generated datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from trainer.generate import digits

    out = tmp_path_factory.mktemp("digits")
    digits(out, size=32)
    return out


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    from trainer.generate import shapes_classification

    out = tmp_path_factory.mktemp("shapes")
    shapes_classification(out, n_train=2000, n_val=300, size=32, seed=1)
    return out
