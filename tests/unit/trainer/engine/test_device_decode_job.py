"""`data.decode: gpu` in a worker's job, without Ray. This machine has no GPU, so the device
path is asked for on the CPU device (the one seam: `resolve_decode`, which on a real worker
says 'device' only for a CUDA device): the loaders then hand undecoded JPEGs over and the job
decodes and transforms each batch itself. Validation must score exactly as the CPU path does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.components.device_decode import DeviceDecodeLoader
from trainer.config import load_config
from trainer.engine import assemble
from trainer.engine.assemble import resolve_decode, setup
from trainer.engine.loop import evaluate, seed_everything, set_stage, train_one_epoch
from trainer.engine.progress import WorkerProgress
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[4]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def jpeg_digits(digits_dir, tmp_path_factory) -> Path:
    """A fifth of the digits as 40x48 RGB JPEGs (one PNG left among them)."""
    out = tmp_path_factory.mktemp("jpeg_digits")
    for i, png in enumerate(sorted(digits_dir.glob("*/*/*.png"))[::5]):
        target = out / png.relative_to(digits_dir).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(png).convert("RGB").resize((40, 48))
        if i == 7:
            image.save(target.with_suffix(".png"))
        else:
            image.save(target, quality=90)
    return out


def make_job(data: Path, monkeypatch, decode: str, *overrides: str):
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            f"data.train={data}/train",
            f"data.val={data}/val",
            "data.num_workers=0",
            "data.jpeg_draft=false",
            "data.batch_size=16",
            *overrides,
        ],
    )
    monkeypatch.setattr(assemble, "resolve_decode", lambda mode, device: decode)
    seed_everything(0)
    return setup(cfg, rank=0, world=1, device=CPU)


def test_device_decoding_validates_exactly_as_the_cpu_path(jpeg_digits, monkeypatch):
    cpu = make_job(jpeg_digits, monkeypatch, "cpu")
    device = make_job(jpeg_digits, monkeypatch, "device")
    assert isinstance(device.val_loader, DeviceDecodeLoader)
    assert not isinstance(cpu.val_loader, DeviceDecodeLoader)
    device.model.load_state_dict(cpu.model.state_dict())
    for (a, ta, _), (b, tb, _) in zip(cpu.val_loader, device.val_loader, strict=True):
        assert torch.equal(ta, tb)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert evaluate(cpu)[0] == pytest.approx(evaluate(device)[0], abs=1e-6)


def test_device_decoding_trains_with_mixing_on_the_batch(jpeg_digits, monkeypatch):
    job = make_job(jpeg_digits, monkeypatch, "device", "data.augment.mixup_alpha=0.4")
    set_stage(job, 0)
    images, targets, skipped = next(iter(job.train_loader))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32 and skipped == 0
    assert targets.shape == (16, 10) and torch.allclose(targets.sum(1), torch.ones(16))  # mixed labels
    weights = job.model.fc.weight.detach().clone()
    record = train_one_epoch(job, 0, WorkerProgress(None))
    assert record["train/loss"] > 0 and record["data/skipped_images"] == 0
    assert not torch.equal(weights, job.model.fc.weight)


def test_a_bad_jpeg_is_skipped_and_counted_on_the_device_path(jpeg_digits, monkeypatch, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(jpeg_digits, data)
    victim = sorted((data / "train" / "4").glob("*.jpg"))[0]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) // 2])  # its header reads; its pixels do not
    job = make_job(data, monkeypatch, "device", "data.skip_bad_images=true")
    set_stage(job, 0)
    assert train_one_epoch(job, 0, WorkerProgress(None))["data/skipped_images"] == 1
    strict = make_job(data, monkeypatch, "device")
    set_stage(strict, 0)
    with pytest.raises(Exception, match=f"{victim.name}: cannot decode"):
        train_one_epoch(strict, 0, WorkerProgress(None))


def test_where_a_worker_decodes():
    cuda = torch.device("cuda", 0)  # a device object only: nothing runs on it
    assert resolve_decode("auto", cuda) == resolve_decode("gpu", cuda) == "device"
    assert resolve_decode("cpu", cuda) == resolve_decode("auto", CPU) == resolve_decode("cpu", CPU) == "cpu"
    with pytest.raises(ConfigError, match="data.decode: 'gpu', but this worker has no GPU"):
        resolve_decode("gpu", CPU)


def as_jpegs(root: Path) -> None:
    """Every image under images/ re-encoded as a JPEG under its own name (Pillow and the device
    decoder read the format from the bytes), so the annotations need no change."""
    for image in root.glob("*/images/*.png"):
        Image.open(image).convert("RGB").save(image, "JPEG", quality=92)


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_joint_datasets_decode_on_the_device_with_their_annotations(task, monkeypatch, tmp_path):
    """Boxes and masks go through the same joint transform on the device path: validation
    batches equal the CPU path's, and a training step runs on them."""
    if task == "detection":
        from trainer.tasks.detection.shapes import shapes_detection as write
    else:
        from trainer.tasks.segmentation.shapes import shapes_segmentation as write
    write(tmp_path, n_train=8, n_val=4, size=48, seed=2)
    as_jpegs(tmp_path)
    config = ROOT / f"configs/shapes_{task}.yaml"
    overrides = [f"data.train={tmp_path}/train", f"data.val={tmp_path}/val", "data.num_workers=0"]
    overrides += ["data.batch_size=4", "model.weights=none"] + (
        ["model.backbone_weights=none"] if task == "detection" else []
    )
    jobs = {}
    for decode in ("cpu", "device"):
        monkeypatch.setattr(assemble, "resolve_decode", lambda mode, device, d=decode: d)
        seed_everything(0)
        jobs[decode] = setup(load_config(config, overrides), rank=0, world=1, device=CPU)
    assert isinstance(jobs["device"].val_loader, DeviceDecodeLoader)
    for (a, ta, _), (b, tb, _) in zip(jobs["cpu"].val_loader, jobs["device"].val_loader, strict=True):
        if task == "detection":  # lists of images and of {boxes, labels}
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
            assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb, strict=True))
        else:
            assert torch.equal(a, b) and torch.equal(ta, tb)
    job = jobs["device"]
    set_stage(job, 0)
    assert train_one_epoch(job, 0, WorkerProgress(None))["train/loss"] > 0
