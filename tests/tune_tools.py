"""Helpers for the `vft tune` tests (unit and integration): space files, the command line of a
tiny digits sweep (16 px images, timm's test_resnet, one Train worker per trial) and the digits config."""

from __future__ import annotations

from pathlib import Path

import yaml

from trainer.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.img_size=16",
    "model.name=test_resnet",  # 0.37 M weights: the trials' epochs take seconds
    "data.batch_size=128",
    "data.num_workers=0",
    "scaling.num_workers=1",
]


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def tune_args(digits_dir: Path, storage: Path, space: Path, name: str, *extra: str) -> list:
    return [
        "tune",
        ROOT / "configs/digits.yaml",
        "--space",
        space,
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        f"run.storage={storage}",
        *TINY,
        "--name",
        name,
        *extra,
    ]


def digits_config(digits_dir: Path, *overrides: str):
    data = [f"data.train={digits_dir}/train", f"data.val={digits_dir}/val"]
    return load_config(ROOT / "configs/digits.yaml", [*data, *overrides])
