"""Instance segmentation end to end on a real local Ray cluster: `vft data shapes --task
instance_segmentation` (touching and overlapping shapes), a 2-DDP-worker Mask R-CNN run above a
stated mask mAP50, its ONNX export passing the parity gates on boxes and masks, a real Ray Serve
app answering over HTTP with one RLE mask per object equal to the PyTorch checkpoint's (and 4xx
for bad input while it keeps serving), and `vft eval` scoring another domain. Data, transforms,
metrics, models and the serving answer without Ray: tests/unit/trainer/tasks/test_instance_segmentation.py;
a sweep: tests/integration/test_tune.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from local_ray import free_ports
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from serving.app import build_app
from trainer.cli import app
from trainer.components.runlog import read_metrics_csv
from trainer.tasks.base import model_from_checkpoint
from trainer.tasks.instance_segmentation.task import instance_eval_transform

ROOT = Path(__file__).resolve().parents[2]
MASK_MAP50_THRESHOLD = 0.02  # chance: 0.0000 after epoch 1; 4 epochs from scratch reach about 0.037
SCORE = 0.1  # a briefly trained model: its objects score 0.1-0.2


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def inst_run(ray_cluster, tmp_path_factory) -> Path:
    """configs/shapes_instances.yaml trained once (2 DDP workers, 4 epochs of the config's 12) on
    shapes written by `vft data shapes --task instance_segmentation` (COCO JSON with RLE masks)."""
    data = tmp_path_factory.mktemp("shapes_inst")
    result = vft("data", "shapes", "--task", "instance_segmentation", "--out", data, "--n-train", 160,
                 "--n-val", 40, "--seed", 1)  # fmt: skip
    assert result.exit_code == 0, result.output
    storage = tmp_path_factory.mktemp("runs")
    result = vft(
        "train", ROOT / "configs/shapes_instances.yaml", f"data.train={data}/train", f"data.val={data}/val",
        f"run.storage={storage}", "--quiet", "train.epochs=4", "--name", "inst",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return storage / "inst"


def val_image(run_dir: Path, index: int) -> Image.Image:
    val = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["val"]
    return Image.open(f"{val}/images/{index:05d}.png").convert("RGB")


def test_two_workers_reach_the_mask_map50_threshold(inst_run):
    history = read_metrics_csv(str(inst_run / "metrics.csv"))
    assert len(history) == 4
    assert max(row["val/mask_map50"] for row in history) >= MASK_MAP50_THRESHOLD
    assert {"val/mask_map", "val/mask_map75", "val/box_map", "val/box_map50", "train/loss"} <= set(
        history[-1]
    )
    meta = json.loads((inst_run / "best" / "meta.json").read_text())
    assert meta["task"] == "instance_segmentation" and meta["training"]["world_size"] == 2
    assert meta["monitor"]["metric"] == "val/mask_map50" and len(meta["metrics"]["per_class_ap"]) == 5
    assert (inst_run / "plots" / "predictions.png").is_file()


@pytest.fixture(scope="module")
def exported(inst_run) -> Path:
    result = vft(
        "export", inst_run, "--format", "onnx", "--check", "--max-metric-drop", "0.02", "--no-register"
    )
    assert result.exit_code == 0, result.output
    return inst_run


def test_onnx_export_matches_pytorch_on_boxes_and_masks(exported):
    report = json.loads((exported / "export" / "report.json").read_text())
    onnx = report["formats"]["onnx"]
    assert onnx["status"] == "passed" and onnx["count_agreement"] == 1.0
    assert onnx["max_abs_box_diff"] < 1e-2 and onnx["min_mask_iou"] > 0.99
    assert report["torch"]["metric"] == "val/mask_map50" and abs(onnx["metric_delta"]) < 1e-3


@pytest.fixture(scope="module")
def server(exported, ray_cluster):
    from ray import serve

    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"run_dir": str(exported), "backend": "onnx", "max_batch_size": 4, "score_threshold": SCORE}
    serve.run(build_app(args), name="instances", route_prefix="/instances")
    yield f"http://127.0.0.1:{port}/instances"
    serve.shutdown()


def post(url: str, data: bytes, content_type: str = "image/png") -> requests.Response:
    return requests.post(f"{url}/v1/predict", data=data, headers={"content-type": content_type}, timeout=60)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_server_answers_each_object_with_the_checkpoints_mask(server, exported):
    model, meta = model_from_checkpoint(exported / "best")
    found = 0
    for index, size in ((0, None), (1, (96, 72))):
        image = val_image(exported, index)
        image = image.resize(size) if size else image
        response = post(server, png(image))
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == image.size
        with torch.no_grad():
            ref = model([instance_eval_transform()(image)])[0]
        keep = ref["scores"] >= SCORE
        assert len(body["instances"]) == int(keep.sum())
        for instance, label, box, mask in zip(
            body["instances"], ref["labels"][keep], ref["boxes"][keep], ref["masks"][keep], strict=True
        ):
            assert (
                instance["index"] == int(label) - 1
                and instance["label"] == meta["classes"][instance["index"]]
            )
            np.testing.assert_allclose(instance["box"], box.numpy(), atol=1e-2)
            served = mask_utils.decode(
                {"size": instance["mask"]["size"], "counts": instance["mask"]["counts"]}
            )
            expected = (mask[0] >= 0.5).numpy()
            assert served.shape == (image.height, image.width) and instance["area"] == int(served.sum())
            assert (served.astype(bool) == expected).mean() > 0.999
        found += len(body["instances"])
    assert found > 0


def test_bad_input_gets_4xx_and_the_server_keeps_serving(server, exported):
    assert post(server, b"not an image").status_code == 400
    assert post(server, b"{}", "application/json").status_code == 415
    for size in ((4000, 3), (1, 1)):  # valid images a user may send: answered at their own size
        response = post(server, png(val_image(exported, 2).resize(size)))
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == size
        assert all(o["mask"]["size"] == [size[1], size[0]] for o in body["instances"])
    info = requests.get(f"{server}/v1/model", timeout=30).json()
    assert info["task"] == "instance_segmentation" and info["backend"] == "onnx"


def test_eval_scores_mask_map_per_domain(exported, tmp_path):
    """Another domain (the same images at a quarter of the contrast) scores below the clean one."""
    import shutil

    val = Path(yaml.safe_load((exported / "config.yaml").read_text())["data"]["val"])
    dim = tmp_path / "dim"
    shutil.copytree(val, dim)
    for path in (dim / "images").glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        Image.fromarray((pixels * 0.25 + 96).astype(np.uint8)).save(path)
    result = vft("eval", exported, "--data", f"clean={val}", "--data", f"dim={dim}", "--backend", "onnx",
                 "--corruptions", "none", "--name", "check")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((exported / "eval" / "check" / "report.json").read_text())
    assert report["metric"] == "mask_map50"
    clean = report["domains"]["clean"]
    assert clean["images"] == 40 and clean["mask_map50"] > 0.01
    assert report["domains"]["dim"]["mask_map50"] < clean["mask_map50"]
    assert len(clean["per_class_ap"]) == 5
