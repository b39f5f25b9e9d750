"""Detection through `vft train`: bad annotations exit 2 naming the file and entry, and a
2-worker Ray run on generated shapes whose meta.json rebuilds model and preprocessing. Data,
transforms, metrics and models without Ray: tests/unit/trainer/tasks/test_detection.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.runlog import read_metrics_csv
from trainer.tasks.detection.task import detection_eval_transform

ROOT = Path(__file__).resolve().parents[2]
MAP50_THRESHOLD = 0.15  # an untrained detector scores ~0.00; 4 epochs from scratch reach ~0.2


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def det_args(data: Path, storage: Path, *extra: str) -> list:
    return [
        "train", ROOT / "configs/shapes_detection.yaml", f"data.train={data}/train",
        f"data.val={data}/val", f"run.storage={storage}", "--quiet", *extra,
    ]  # fmt: skip


def _copy_coco(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_annotations(root: Path, split: str, edit) -> None:
    file = root / split / "annotations.json"
    doc = json.loads(file.read_text())
    edit(doc)
    file.write_text(json.dumps(doc))


# ----------------------------------------------------------------------------- bad annotations


@pytest.mark.parametrize(
    "damage, expect",
    [
        ("outside", "train/annotations.json: annotation 2 (00000.png): box [40, 5, 70, 25] (x1, y1, x2, y2) "
                    "lies outside the 48x48 image"),
        ("category", "val/annotations.json: annotation 1: unknown category_id 42"),
        ("image", "train/annotations.json: annotation 3: image_id 999 is not in 'images'"),
    ],
)  # fmt: skip
def test_bad_coco_annotations_exit_2_naming_file_and_entry(small_coco, tmp_path, damage, expect):
    data = _copy_coco(small_coco, tmp_path / "data")
    if damage == "outside":
        _edit_annotations(
            data, "train", lambda d: d["annotations"][1].update(image_id=1, bbox=[40, 5, 30, 20])
        )
    elif damage == "category":
        _edit_annotations(data, "val", lambda d: d["annotations"][0].update(category_id=42))
    else:
        _edit_annotations(data, "train", lambda d: d["annotations"][2].update(image_id=999))
    result = vft(*det_args(data, tmp_path / "runs"))
    assert result.exit_code == 2, result.output
    assert expect in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- training on Ray


def test_two_workers_reach_the_map50_threshold(det_run):
    history = read_metrics_csv(str(det_run / "metrics.csv"))
    assert len(history) == 4
    assert max(row["val/map50"] for row in history) >= MAP50_THRESHOLD
    assert {"val/map", "val/map75", "val/mar100", "val/box_iou", "train/loss"} <= set(history[-1])
    assert (det_run / "plots" / "predictions.png").is_file()
    assert (det_run / "plots" / "learning_curves.png").is_file()


def test_meta_json_rebuilds_model_and_preprocessing(det_run):
    """A third party: meta.json names the architecture, the label offset and the resize rule;
    the rebuilt model gives the same boxes as the training code's model."""
    from safetensors.torch import load_file

    from trainer.tasks.base import model_from_checkpoint
    from trainer.tasks.detection.model import rebuild_detector

    meta = json.loads((det_run / "best" / "meta.json").read_text())
    assert meta["task"] == "detection" and meta["training"]["world_size"] == 2
    assert meta["classes"] == ["circle", "square", "triangle", "star", "cross"]
    assert len(meta["metrics"]["per_class_ap"]) == 5
    prep = meta["preprocessing"]
    assert prep["min_size"] == prep["max_size"] == 64 and len(prep["mean"]) == 3
    assert meta["detection"]["img_size"] == 64 and "label i + 1" in meta["detection"]["labels"]

    rebuilt = rebuild_detector(meta["model"]["name"], meta["num_classes"] + 1, meta["detection"]["img_size"])
    rebuilt.load_state_dict(load_file(str(det_run / "best" / "model.safetensors")))
    model, _ = model_from_checkpoint(det_run / "best")
    import yaml

    val = yaml.safe_load((det_run / "config.yaml").read_text())["data"]["val"]
    x = [detection_eval_transform()(Image.open(f"{val}/images/{i:05d}.png").convert("RGB")) for i in range(4)]
    with torch.no_grad():
        a, b = rebuilt.eval()(x), model(x)
    for mine, theirs in zip(a, b, strict=True):
        assert torch.equal(mine["boxes"], theirs["boxes"]) and torch.equal(mine["labels"], theirs["labels"])
    assert sum(int((o["scores"] > 0.3).sum()) for o in a) > 0  # it finds shapes
