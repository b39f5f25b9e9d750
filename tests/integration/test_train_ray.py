"""End-to-end training on a real local Ray cluster (2 DDP workers, gloo, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from local_ray import free_ports, metric_total, wait_for_metric
from train_tools import SMALL_MODEL
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.runlog import read_metrics_csv

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def vft(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def digits_args(digits_dir: Path, storage: Path, *extra: str) -> list[str]:
    return [
        "train",
        ROOT / "configs/digits.yaml",
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        f"run.storage={storage}",
        "--quiet",
        *extra,
    ]


def parity(digit: int) -> str:
    return "even" if digit % 2 == 0 else "odd"


def write_manifest(digits_dir: Path, name: str, label) -> None:
    """A CSV manifest over the digits' training images, `label(digit)` per row."""
    rows = [
        f"{image.relative_to(digits_dir)},{label(int(image.parent.name))}"
        for image in sorted((digits_dir / "train").glob("*/*.png"))
    ]
    (digits_dir / name).write_text("\n".join(["path,label", *rows]) + "\n")


def test_digits_reaches_90_percent_top1(digits_run):
    history = read_metrics_csv(str(digits_run / "metrics.csv"))
    assert [row["epoch"] for row in history] == list(range(1, 7))
    assert max(row["val/top1"] for row in history) >= 0.90


def test_run_dir_follows_the_contract(digits_run):
    for sub in ("best", "last"):
        for name in ("model.safetensors", "meta.json", "state.pt"):
            assert (digits_run / sub / name).is_file(), f"{sub}/{name}"
    assert (digits_run / "config.yaml").is_file()
    assert (digits_run / "plots" / "learning_curves.png").stat().st_size > 1000
    assert (digits_run / "plots" / "confusion_matrix.png").stat().st_size > 1000
    meta = json.loads((digits_run / "best" / "meta.json").read_text())
    assert meta["classes"] == [str(d) for d in range(10)]
    assert meta["model"] == {**meta["model"], "name": "resnet18", "source": "timm"}
    prep = meta["preprocessing"]
    assert prep["input_size"] == 32 and prep["crop_pct"] == 1.0
    assert prep["interpolation"] == "bicubic"  # from resnet18's pretrained config, not overridden
    assert len(prep["mean"]) == 3 and len(prep["std"]) == 3
    history = read_metrics_csv(str(digits_run / "metrics.csv"))
    best_row = max(history, key=lambda r: r["val/top1"])
    assert meta["monitor"]["metric"] == "val/top1"
    assert meta["monitor"]["value"] == pytest.approx(best_row["val/top1"], abs=1e-5)
    assert len(meta["metrics"]["confusion"]) == 10 and len(meta["metrics"]["per_class_acc"]) == 10
    # Ray Train keeps run.keep_checkpoints of its own checkpoints
    assert len(list(digits_run.glob("checkpoint_epoch_*"))) == 2


def test_weights_from_a_previous_run_continue_fine_tuning(digits_run, digits_dir, tmp_path, ray_metrics_url):
    """A cached linear probe (2 DDP workers, each caching its shard's features) on top of the
    previous run's backbone is accurate after two epochs, which a randomly initialised
    backbone cannot be. Its rank 0 exports the epoch's figures as Prometheus series."""
    result = vft(
        *digits_args(
            digits_dir,
            tmp_path,
            f"model.weights={digits_run}",
            "finetune.strategy=linear_probe",
            "finetune.cache_features=true",
            "data.augment.rotation=0",
            "train.epochs=2",
            "schedule.warmup_epochs=0",
            "--name",
            "probe",
        )
    )
    assert result.exit_code == 0, result.output
    history = read_metrics_csv(str(tmp_path / "probe" / "metrics.csv"))
    assert history[-1]["val/top1"] >= 0.9
    # rank 0 exported the last epoch through Ray's metrics agent (what the chart's PodMonitors scrape)
    last = history[-1]
    assert wait_for_metric(ray_metrics_url, "ray_vft_train_epoch", lambda v: v == 2, run="probe") == 2
    loss = metric_total(ray_metrics_url, "ray_vft_train_loss", run="probe")
    assert loss == pytest.approx(last["train/loss"], rel=1e-4)
    top1 = metric_total(ray_metrics_url, "ray_vft_val_monitored", run="probe", metric="val/top1")
    assert top1 == pytest.approx(last["val/top1"], rel=1e-4)
    assert metric_total(ray_metrics_url, "ray_vft_train_images_per_second", run="probe") > 0


def test_lora_ddp_run_adapts_an_earlier_model_to_new_classes(digits_run, digits_dir, tmp_path):
    """LoRA (peft) under DDP with 2 workers and EMA: the digits model's 3x3 convolutions get
    rank-8 adapters and a new head (even/odd) trains in full; best/ holds the merged model and
    state.pt the adapters alone."""
    write_manifest(digits_dir, "parity.csv", parity)
    result = vft(
        *digits_args(
            digits_dir,
            tmp_path,
            f"data.train={digits_dir}/parity.csv",
            "data.val=null",
            f"model.weights={digits_run}",
            "finetune.strategy=lora",
            "finetune.lora.rank=8",
            "train.ema.enabled=true",
            "train.ema.decay=0.9",
            "train.epochs=2",
            "--name",
            "lora",
        )
    )
    assert result.exit_code == 0, result.output
    history = read_metrics_csv(str(tmp_path / "lora" / "metrics.csv"))
    assert max(row["val/top1"] for row in history) >= 0.90
    best = tmp_path / "lora" / "best"
    meta = json.loads((best / "meta.json").read_text())
    assert meta["classes"] == ["even", "odd"]
    assert meta["training"]["strategy"] == "lora" and meta["training"]["lora"]["layers"] == 19
    # adapters, their EMA and AdamW moments: about 2.5% of the weights, four times over
    assert (best / "state.pt").stat().st_size < 0.25 * (best / "model.safetensors").stat().st_size
    exported = vft(
        "export", tmp_path / "lora", "--format", "onnx", "--check", "--no-register"
    )  # the merged model
    assert exported.exit_code == 0, exported.output
    report = json.loads((tmp_path / "lora" / "export" / "report.json").read_text())
    assert report["passed"] and report["formats"]["onnx"]["top1_agreement"] == 1.0


def test_ddp_gradual_unfreeze_with_ema_and_robust_val(ray_cluster, digits_dir, tmp_path):
    """configs/shapes.yaml's fine-tuning recipe on the digits (2 DDP workers): gradual
    unfreezing (the head, then 2 blocks at epoch 1, all at epoch 2: DDP re-wrapped per stage),
    EMA and label smoothing, from random weights in 6 epochs; `train.robust_val` adds
    val/robust_acc to every epoch, monitored for best/."""
    result = vft(
        "train",
        ROOT / "configs/shapes.yaml",
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        "data.augment.hflip=0",
        "train.epochs=6",
        SMALL_MODEL,
        "train.robust_val=true",
        "train.monitor=val/robust_acc",
        f"run.storage={tmp_path}",
        "--name",
        "gradual",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    history = read_metrics_csv(str(tmp_path / "gradual" / "metrics.csv"))
    assert len(history) == 6
    assert max(row["val/top1"] for row in history) >= 0.80  # 0.98 measured
    assert all(0.0 <= row["val/robust_acc"] <= row["val/top1"] + 0.05 for row in history)
    assert max(row["val/robust_acc"] for row in history) > 0.1  # corrupted digits are still read
    meta = json.loads((tmp_path / "gradual" / "best" / "meta.json").read_text())
    assert meta["monitor"]["metric"] == "val/robust_acc"
    best = max(history, key=lambda row: row["val/robust_acc"])
    assert meta["monitor"]["value"] == pytest.approx(best["val/robust_acc"], abs=1e-5)


def with_broken_image(digits_dir: Path, data: Path, every: int = 1) -> Path:
    """A copy of the digits (every `every`-th image) with one undecodable PNG among the 3s."""
    for image in sorted(digits_dir.glob("*/*/*.png"))[::every]:
        target = data / image.relative_to(digits_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    bad = data / "train" / "3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return data


def test_corrupt_image_is_an_error_naming_the_file(ray_cluster, digits_dir, tmp_path):
    data = with_broken_image(digits_dir, tmp_path / "data", every=4)  # a quarter: one epoch is enough
    result = vft(
        "train", ROOT / "configs/digits.yaml", f"data.train={data}/train", f"data.val={data}/val",
        f"run.storage={tmp_path}/runs", "train.epochs=1", SMALL_MODEL, "--quiet", "--name", "strict",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "broken.png" in result.output and "cannot decode" in result.output


def test_multilabel_csv_manifest_trains_with_bce(ray_cluster, digits_dir, tmp_path):
    """CSV manifest with several labels per image (`7;odd`): BCE, multilabel metrics, val/map.
    Its tracking server is down the whole time (a closed port): the run finishes all the same,
    with one warning and the epochs it could not log listed."""
    write_manifest(digits_dir, "multilabel.csv", lambda digit: f"{digit};{parity(digit)}")
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    result = vft(
        "train",
        ROOT / "configs/digits.yaml",
        f"data.train={digits_dir}/multilabel.csv",
        "data.val=null",
        "data.multilabel=true",
        "train.epochs=5",
        SMALL_MODEL,
        f"run.storage={tmp_path}",
        f"track.uri={dead}",
        "--name",
        "multi",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count(f"tracking: mlflow at {dead} failed") == 1, result.output
    assert "did not record epochs 1-5" in text and "metrics.csv" in text, result.output
    assert not (tmp_path / "multi" / "tracking.json").exists()
    meta = json.loads((tmp_path / "multi" / "best" / "meta.json").read_text())
    assert meta["multilabel"] is True and meta["monitor"]["metric"] == "val/map"
    assert sorted(meta["classes"]) == sorted([str(d) for d in range(10)] + ["even", "odd"])
    history = read_metrics_csv(str(tmp_path / "multi" / "metrics.csv"))
    assert max(row["val/map"] for row in history) >= 0.8  # 0.94 measured
