"""Segmentation through `vft train`: bad annotations exit 2 naming the file, and a 2-worker Ray
run on generated shapes whose meta.json rebuilds the preprocessing. Transforms, metrics, losses
and models without Ray: tests/unit/trainer/tasks/test_segmentation.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.preprocess import Preprocessing, eval_transform
from trainer.components.runlog import read_metrics_csv
from trainer.tasks.segmentation.shapes import shapes_segmentation

ROOT = Path(__file__).resolve().parents[2]
# chance (all background) is about 0.8 / 6 classes = 0.13; 7 seeded epochs reach 0.33 in every run here
MIOU_THRESHOLD = 0.30


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def seg_args(data: Path, storage: Path, *extra: str) -> list:
    return [
        "train", ROOT / "configs/shapes_segmentation.yaml", f"data.train={data}/train",
        f"data.val={data}/val", f"run.storage={storage}", "--quiet", *extra,
    ]  # fmt: skip


def _small_maskfolder(root: Path) -> Path:
    shapes_segmentation(root, n_train=6, n_val=3, size=32, seed=0)
    return root


# ----------------------------------------------------------------------------- bad annotations


@pytest.mark.parametrize(
    "damage, expect",
    [
        ("size", "train/masks/00002.png: mask is 16x16 but its image 00002.png is 32x32"),
        ("missing", "train/images/00003.png: no mask"),
        ("index", "val/masks/00001.png: class index 9 is beyond the 6 classes"),
    ],
)
def test_bad_annotations_exit_2_naming_the_file(tmp_path, damage, expect):
    data = _small_maskfolder(tmp_path / "data")
    if damage == "size":
        Image.new("L", (16, 16), 1).save(data / "train/masks/00002.png")
    elif damage == "missing":
        (data / "train/masks/00003.png").unlink()
    else:
        Image.new("L", (32, 32), 9).save(data / "val/masks/00001.png")
    result = vft(*seg_args(data, tmp_path / "runs"))
    assert result.exit_code == 2, result.output
    assert expect in " ".join(result.output.split())


# ----------------------------------------------------------------------------- training on Ray


def test_two_workers_reach_the_miou_threshold(seg_run):
    history = read_metrics_csv(str(seg_run / "metrics.csv"))
    assert max(row["val/miou"] for row in history) >= MIOU_THRESHOLD
    assert {"val/dice", "val/pixel_acc", "val/loss", "train/loss"} <= set(history[-1])


def test_meta_json_rebuilds_the_preprocessing(seg_run):
    meta = json.loads((seg_run / "best" / "meta.json").read_text())
    assert meta["task"] == "segmentation" and meta["training"]["world_size"] == 2
    assert meta["classes"] == ["background", "circle", "square", "triangle", "star", "cross"]
    assert meta["segmentation"]["ignore_index"] == 255
    assert meta["segmentation"]["mask_interpolation"] == "nearest"
    assert len(meta["metrics"]["per_class_iou"]) == 6
    prep = Preprocessing.from_meta(meta["preprocessing"])
    assert prep.input_size == 64 and prep.crop_pct == 1.0
    # a third party: the rebuilt model and preprocessing give the logged validation mIoU's inputs
    from safetensors.torch import load_file

    from trainer.tasks.segmentation.model import create_segmenter

    model = create_segmenter(meta["model"]["name"], meta["num_classes"]).module.eval()
    model.load_state_dict(load_file(str(seg_run / "best" / "model.safetensors")))
    image = Image.new("RGB", (80, 60), (10, 200, 30))
    x = eval_transform(prep)(image).unsqueeze(0)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 6, 64, 64)
    assert (seg_run / "plots" / "learning_curves.png").is_file()
    assert (seg_run / "plots" / "predictions.png").is_file()  # overlays of truth and prediction
