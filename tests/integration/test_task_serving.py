"""Export and serving for detection and segmentation runs: `vft export --check` passes its
parity gates (ONNX against PyTorch), and a real Ray Serve app answers over HTTP with boxes in
the image's own pixels (detection) or a PNG mask at the image's size with per-class fractions
(segmentation), equal to what the PyTorch checkpoint gives, while bad input gets a 4xx."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
import yaml
from hypothesis import given
from local_ray import free_ports
from PIL import Image
from request_bodies import PROPERTY_SETTINGS, check_answer, image_bodies, post_body
from typer.testing import CliRunner

from serving.app import build_app
from trainer.cli import app
from trainer.tasks.base import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def val_image(run_dir: Path, index: int = 0) -> Image.Image:
    val = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["val"]
    return Image.open(f"{val}/images/{index:05d}.png").convert("RGB")


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported_tasks(det_run, seg_run) -> dict[str, Path]:
    for run_dir, formats in ((det_run, "onnx"), (seg_run, "onnx,int8")):
        result = vft(
            "export", run_dir, "--format", formats, "--check", "--max-metric-drop", "0.05", "--no-register"
        )
        assert result.exit_code == 0, result.output
    return {"detection": det_run, "segmentation": seg_run}


def test_detection_export_matches_pytorch(exported_tasks):
    report = json.loads((exported_tasks["detection"] / "export" / "report.json").read_text())
    onnx = report["formats"]["onnx"]
    assert onnx["status"] == "passed" and onnx["count_agreement"] == 1.0
    assert onnx["max_abs_box_diff"] < 1e-2 and abs(onnx["metric_delta"]) < 1e-3
    assert onnx["dynamic_axes"] == ["height", "width"]
    assert (exported_tasks["detection"] / "export" / "meta.json").is_file()


def test_detection_refuses_int8_clearly(exported_tasks, tmp_path):
    """Export, serve and eval: INT8 is not built for detectors, and each says so (exit 2)."""
    result = vft("export", exported_tasks["detection"], "--format", "int8", "--no-register")
    assert result.exit_code == 2
    assert "int8: not built: detection exports ONNX (FP32) only" in " ".join(result.output.split())
    for command in ("serve", "eval"):
        args = [command, exported_tasks["detection"], "--backend", "int8"] + (
            ["--data", tmp_path] if command == "eval" else []
        )
        result = vft(*args)
        assert (
            result.exit_code == 2
            and "unknown detection backend 'int8'; allowed: onnx, torch" in result.output
        )


def test_segmentation_export_matches_pytorch(exported_tasks):
    report = json.loads((exported_tasks["segmentation"] / "export" / "report.json").read_text())
    onnx = report["formats"]["onnx"]
    assert onnx["status"] == "passed" and onnx["max_abs_diff"] < 1e-3 and onnx["top1_agreement"] > 0.999
    assert report["torch"]["metric"] == "val/miou"
    assert report["formats"]["int8"]["status"] == "passed"


# ----------------------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def servers(exported_tasks, ray_cluster):
    from ray import serve

    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for task, run_dir in exported_tasks.items():
        args = {"run_dir": str(run_dir), "backend": "onnx", "max_batch_size": 8, "score_threshold": 0.3}
        serve.run(build_app(args), name=task, route_prefix=f"/{task}")
    yield {task: f"http://127.0.0.1:{port}/{task}" for task in exported_tasks}
    serve.shutdown()


def post(url: str, data: bytes, content_type: str = "image/png") -> requests.Response:
    return requests.post(f"{url}/v1/predict", data=data, headers={"content-type": content_type}, timeout=60)


def test_detection_server_returns_boxes_in_the_images_pixels(servers, exported_tasks):
    run_dir = exported_tasks["detection"]
    model, meta = model_from_checkpoint(run_dir / "best")
    found = 0
    for index, size in ((0, None), (1, (96, 72)), (2, (40, 56))):
        image = val_image(run_dir, index)
        image = image.resize(size) if size else image
        response = post(servers["detection"], png_bytes(image))
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["width"], body["height"]) == image.size
        x = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
        with torch.no_grad():
            ref = model([x])[0]
        keep = ref["scores"] >= 0.3
        assert len(body["detections"]) == int(keep.sum())
        for det, box, label in zip(body["detections"], ref["boxes"][keep], ref["labels"][keep], strict=True):
            assert det["index"] == int(label) - 1 and det["label"] == meta["classes"][det["index"]]
            np.testing.assert_allclose(det["box"], box.numpy(), atol=1e-2)
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
        found += len(body["detections"])
    assert found > 0


def test_segmentation_server_returns_a_mask_at_the_images_size(servers, exported_tasks):
    run_dir = exported_tasks["segmentation"]
    model, meta = model_from_checkpoint(run_dir / "best")
    p = meta["preprocessing"]
    image = val_image(run_dir, 3).resize((80, 48))
    response = post(servers["segmentation"], png_bytes(image, "JPEG"), "image/jpeg")
    assert response.status_code == 200, response.text
    body = response.json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert mask.shape == (48, 80) and body["classes"] == meta["classes"]
    assert sum(body["fractions"].values()) == pytest.approx(1.0)
    assert body["fractions"]["background"] == pytest.approx(float((mask == 0).mean()))
    # the same computation by hand: resize to the input size, normalise, logits back to 80x48
    decoded = Image.open(io.BytesIO(png_bytes(image, "JPEG"))).convert("RGB")
    x = torch.from_numpy(np.asarray(decoded.resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255)
    x = (x.permute(2, 0, 1) - torch.tensor(p["mean"]).view(3, 1, 1)) / torch.tensor(p["std"]).view(3, 1, 1)
    with torch.no_grad():
        logits = model(x[None])
    expected = F.interpolate(logits, size=(48, 80), mode="bilinear", align_corners=False).argmax(1)[0].numpy()
    assert (mask == expected).mean() > 0.97
    assert len(np.unique(mask)) > 1  # shapes found, not only background


def test_bad_input_gets_4xx_and_the_servers_keep_serving(servers, exported_tasks):
    for task, url in servers.items():
        assert post(url, b"not an image").status_code == 400
        assert post(url, b"{}", "application/json").status_code == 415
        ok = post(url, png_bytes(val_image(exported_tasks[task])))
        assert ok.status_code == 200, ok.text
        info = requests.get(f"{url}/v1/model", timeout=30).json()
        assert info["task"] == task and info["backend"] == "onnx"


@pytest.mark.parametrize("size", [(4000, 3), (3, 4000), (1, 1)])
def test_every_task_answers_extremely_elongated_and_tiny_images(servers, exported_tasks, size):
    """Valid images a user may send: each server answers 200 at the image's own size (a
    detector would shrink 4000x3 to nothing; its boxes stay inside the image)."""
    image = val_image(exported_tasks["detection"]).resize(size)
    for task, url in servers.items():
        response = post(url, png_bytes(image))
        assert response.status_code == 200, f"{task}: {response.text}"
        body = response.json()
        if task == "detection":
            assert (body["width"], body["height"]) == size
            for det in body["detections"]:
                x1, y1, x2, y2 = det["box"]
                assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]
        else:
            mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
            assert mask.shape == (size[1], size[0])


@pytest.mark.parametrize("task", ["detection", "segmentation"])
@PROPERTY_SETTINGS
@given(body=image_bodies())
def test_no_image_makes_a_task_server_answer_5xx(servers, task, body):
    check_answer(post_body(servers[task], body), body, task)


# ----------------------------------------------------------------------------- eval


def dimmed_copy(src: Path, dst: Path) -> Path:
    """The same images and labels at a quarter of the contrast: another domain."""
    import shutil

    shutil.copytree(src, dst)
    for path in (dst / "images").glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("RGB"), np.float32)
        Image.fromarray((pixels * 0.25 + 96).astype(np.uint8)).save(path)
    return dst


@pytest.mark.parametrize("task, backend", [("detection", "onnx"), ("segmentation", "torch")])
def test_eval_reports_task_metrics_per_domain_and_under_corruption(exported_tasks, tmp_path, task, backend):
    run_dir = exported_tasks[task]
    val = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["val"])
    dim = dimmed_copy(val, tmp_path / "dim")
    result = vft("eval", run_dir, "--data", f"clean={val}", "--data", f"dim={dim}", "--backend", backend,
                 "--corruptions", "gaussian_noise,contrast", "--severities", "1,5", "--max-images", 40,
                 "--name", "check")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = run_dir / "eval" / "check"
    report = json.loads((out / "report.json").read_text())
    metric = report["metric"]
    assert metric == ("map50" if task == "detection" else "miou")
    clean = report["domains"]["clean"][metric]
    assert report["domains"]["clean"]["images"] == 40 and clean > 0.1
    assert report["worst_domain"] == "dim" and report["domains"]["dim"][metric] < clean
    table = report["corruptions"]["table"]
    assert set(table) == {"gaussian_noise", "contrast"} and report["corruptions"]["clean"] == clean
    assert table["contrast"]["5"] < clean  # severity 5 contrast hurts
    assert (out / "report.md").is_file() and (out / "corruptions.png").is_file()
    per_class = "per_class_ap" if task == "detection" else "per_class_iou"
    classes = json.loads((run_dir / "best" / "meta.json").read_text())["classes"]
    assert len(report["domains"]["clean"][per_class]) == len(classes)


# ----------------------------------------------------------------------------- the run's ignore index

IGNORED = 200  # data.ignore_index of the run below: neither a class nor the default 255


@pytest.fixture(scope="module")
def seg_ignore_run(ray_cluster, tmp_path_factory) -> Path:
    """A tiny segmentation run (1 epoch, 32 px) whose masks mark a band of unlabelled pixels with
    data.ignore_index=200. One worker: the validation metric is then the saved model's own (with
    two, each DDP worker validates with its own batch-norm statistics)."""
    data = tmp_path_factory.mktemp("seg_ignore")
    result = vft("data", "shapes", "--task", "segmentation", "--out", data, "--n-train", 24, "--n-val", 12,
                 "--size", 32, "--seed", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    for path in data.glob("*/masks/*.png"):
        mask = np.asarray(Image.open(path)).copy()
        mask[:6] = IGNORED
        Image.fromarray(mask, mode="L").save(path)
    storage = tmp_path_factory.mktemp("runs")
    result = vft(
        "train", ROOT / "configs/shapes_segmentation.yaml", f"data.train={data}/train",
        f"data.val={data}/val", f"run.storage={storage}", f"data.ignore_index={IGNORED}", "data.img_size=32",
        "data.batch_size=8", "train.epochs=1", "scaling.num_workers=1", "--quiet", "--name", "seg_ignore",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return storage / "seg_ignore"


def test_export_and_eval_score_with_the_runs_ignore_index(seg_ignore_run):
    """Export's parity metric and `vft eval`'s mIoU leave out the run's unlabelled pixels, as
    training did: both equal the best checkpoint's val/miou."""
    meta = json.loads((seg_ignore_run / "best" / "meta.json").read_text())
    assert meta["segmentation"]["ignore_index"] == IGNORED
    trained = meta["metrics"]["val/miou"]
    result = vft("export", seg_ignore_run, "--format", "onnx", "--no-register")
    assert result.exit_code == 0, result.output
    report = json.loads((seg_ignore_run / "export" / "report.json").read_text())
    assert report["torch"]["metric"] == "val/miou"
    assert report["torch"]["value"] == pytest.approx(trained, abs=1e-6)
    assert report["formats"]["onnx"]["value"] == pytest.approx(trained, abs=1e-3)
    val = yaml.safe_load((seg_ignore_run / "config.yaml").read_text())["data"]["val"]
    result = vft("eval", seg_ignore_run, "--data", val, "--backend", "torch", "--corruptions", "none",
                 "--name", "ignore")  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluated = json.loads((seg_ignore_run / "eval" / "ignore" / "report.json").read_text())
    assert evaluated["domains"][Path(val).name]["miou"] == pytest.approx(trained, abs=1e-6)
