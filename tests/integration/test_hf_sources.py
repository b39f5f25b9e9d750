"""Hugging Face sources end to end, offline. configs/hf_vit.yaml (the guideline's worked example:
google/vit-base-patch16-224 fine-tuned on CIFAR-10) trains as one `vft train` command on the
local Ray cluster: its Hub id resolves from the session's hub cache, where a tiny ViT of that
architecture, pretrained for seconds on the digits, stands in for the download, and the dataset
is the digits as Parquet shards laid out as on the Hub. The run exports to ONNX through the
parity gate, and a real Ray Serve app answers with the PyTorch checkpoint's predictions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from hf_tools import DIGIT_NAMES, digits_dataset, digits_parquet, hub_snapshot, pretrained_tiny_vit
from local_ray import free_ports
from typer.testing import CliRunner

from serving.app import build_app
from trainer.cli import app
from trainer.components.preprocess import Preprocessing, eval_transform
from trainer.tasks.base import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = "google/vit-base-patch16-224"  # what configs/hf_vit.yaml names


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def hf_run(ray_cluster, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hf")
    hub_snapshot(HUB_ID, pretrained_tiny_vit(tmp / "vit"))
    data = digits_parquet(tmp / "digits")
    storage = tmp / "runs"
    result = vft(
        "train", ROOT / "configs/hf_vit.yaml", f"data.train={data}", f"run.storage={storage}",
        # the config's rates and sizes are ViT-B/16's on a GPU; these suit a 2-layer ViT on a CPU
        "train.epochs=3", "optim.lr=0.003", "data.batch_size=32", "data.num_workers=1",
        "data.augment.hflip=0", "track.backend=none", "--name", "hf_vit", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return storage / "hf_vit"


def test_the_guidelines_example_fine_tunes_the_hub_model_on_the_hub_dataset(hf_run):
    meta = json.loads((hf_run / "best" / "meta.json").read_text())
    assert meta["model"]["source"] == "hf" and meta["model"]["name"] == HUB_ID
    assert meta["model"]["hf_config"]["model_type"] == "vit"
    assert meta["classes"] == sorted(DIGIT_NAMES)  # from the ClassLabel feature's names
    # the image processor's preprocessing (32 px, mean/std 0.5), not timm's or ImageNet's
    prep = meta["preprocessing"]
    assert (prep["input_size"], prep["mean"], prep["crop_pct"]) == (32, [0.5, 0.5, 0.5], 1.0)
    # the stand-in's pretrained body is loaded (from random weights it stays near 0.15 here)
    assert meta["metrics"]["val/top1"] > 0.25, meta["metrics"]
    assert "val/top1" in (hf_run / "metrics.csv").read_text().splitlines()[0]


def test_the_hf_run_exports_through_the_parity_gate(hf_run):
    result = vft("export", hf_run, "--format", "onnx", "--check", "--no-register")
    assert result.exit_code == 0, result.output
    onnx = json.loads((hf_run / "export" / "report.json").read_text())["formats"]["onnx"]
    assert onnx["status"] == "passed" and onnx["top1_agreement"] == 1.0, onnx


def test_a_served_hf_run_answers_what_the_checkpoint_predicts(hf_run):
    from ray import serve

    test = digits_dataset()["test"]
    images = [test[i]["img"].convert("RGB") for i in range(0, 60, 6)]
    model, meta = model_from_checkpoint(hf_run / "best")
    transform = eval_transform(Preprocessing.from_meta(meta["preprocessing"]))
    with torch.inference_mode():
        probs = model(torch.stack([transform(img) for img in images])).softmax(1).numpy()

    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"run_dir": str(hf_run), "backend": "onnx"}), name="hf", route_prefix="/")
        for image, expected in zip(images, probs, strict=True):
            body = io.BytesIO()
            image.save(body, "PNG")
            response = requests.post(
                f"http://127.0.0.1:{port}/v1/predict",
                data=body.getvalue(),
                headers={"content-type": "image/png"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            top = response.json()["predictions"][0]
            assert top["label"] == meta["classes"][int(np.argmax(expected))]
            assert top["score"] == pytest.approx(float(expected.max()), abs=1e-4)
    finally:
        serve.shutdown()
