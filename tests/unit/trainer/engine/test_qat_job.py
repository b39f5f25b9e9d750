"""Quantization-aware training in the worker's loop, without Ray: the job turns quantization-
aware at its QAT epoch, saves the plain weights and the quantization state apart, and a
restarted worker resumes inside the QAT epochs with the same model and EMA."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from trainer.components import checkpoint as ckpt
from trainer.components.qat import QPARAM_PREFIX, is_qat, set_mode
from trainer.config import load_config
from trainer.engine.assemble import setup
from trainer.engine.loop import evaluate, set_quantization, set_stage, train_one_epoch
from trainer.engine.progress import WorkerProgress
from trainer.engine.state import restore, save_epoch
from trainer.tasks.base import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[4]


class Batches(list):
    sampler = None


def _job(digits_dir, *overrides):
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [f"data.train={digits_dir}/train", f"data.val={digits_dir}/val", "data.num_workers=0",
         "model.name=test_resnet", "train.epochs=3", "qat.enabled=true", "qat.epochs=2", *overrides],
    )  # fmt: skip
    return setup(cfg, rank=0, world=1, device=torch.device("cpu"))


def _epoch(job, epoch: int) -> dict:
    set_quantization(job, epoch)
    set_stage(job, epoch)
    job.train_loader = Batches(b for _, b in zip(range(4), job.train_loader, strict=False))
    record = {"epoch": epoch + 1, **train_one_epoch(job, epoch, WorkerProgress(None))}
    scalars, tables = evaluate(job)
    job.history.append(record | scalars)
    job.best = {"value": scalars["val/top1"], "epoch": epoch + 1}
    return record | scalars, tables


def test_the_job_turns_quantization_aware_at_its_qat_epoch_and_resumes_there(digits_dir, tmp_path):
    job = _job(digits_dir, "train.ema.enabled=true", "train.ema.decay=0.5")
    params = [id(p) for g in job.step.optimizer.param_groups for p in g["params"]]
    _epoch(job, 0)
    assert not is_qat(job.model)
    record, tables = _epoch(job, 1)  # epochs 2 and 3 of 3 are the QAT epochs
    assert is_qat(job.model) and is_qat(job.step.ema.module)
    assert all(id(p) in params for p in job.model.parameters())  # the optimizer trains the graph
    assert 0.0 <= record["val/top1"] <= 1.0
    run_dir = tmp_path / "run"
    save_epoch(job, 2, record, tables, True, str(run_dir))

    best = run_dir / "best"
    weights, qparams = load_file(str(best / ckpt.MODEL_FILE)), load_file(str(best / ckpt.QAT_FILE))
    assert qparams and all(k.startswith(QPARAM_PREFIX) for k in qparams)
    assert not any(k.startswith(QPARAM_PREFIX) for k in weights)
    meta = ckpt.read_meta(best)
    assert meta["training"]["qat"] == {
        "flow": "torchao pt2e",
        "quantizer": "x86: uint8 activations per tensor, int8 symmetric weights",
        "per_channel": True,
        "start_epoch": 2,
        "epochs": 2,
    }
    plain, _ = model_from_checkpoint(best)  # what export and serving load: the plain model
    assert not is_qat(plain)

    again = _job(digits_dir, "train.ema.enabled=true", "train.ema.decay=0.5")
    restore(again, str(run_dir / "last"))
    assert again.start_epoch == 2 and is_qat(again.model) and is_qat(again.step.ema.module)
    x = torch.randn(4, 3, 32, 32)
    for a, b in ((job.model, again.model), (job.step.ema.module, again.step.ema.module)):
        set_mode(a, train=False)
        set_mode(b, train=False)
        with torch.no_grad():
            assert torch.equal(a(x), b(x))
    _epoch(again, 2)  # and it trains on from there
    assert len(again.history) == 3


def test_qat_settings_freeze_bn_statistics_and_observed_ranges(digits_dir):
    job = _job(digits_dir, "qat.freeze_bn_after=1", "qat.freeze_observers_after=1")
    _epoch(job, 0)
    _epoch(job, 1)  # the first QAT epoch: statistics and ranges still move
    frozen = {
        k: v.clone() for k, v in job.model.state_dict().items() if "running_" in k or k.endswith(".scale")
    }
    _epoch(job, 2)
    assert all(torch.equal(v, job.model.state_dict()[k]) for k, v in frozen.items())


def test_vft_train_refuses_a_model_qat_cannot_capture_before_any_cluster_starts(digits_dir, monkeypatch):
    """The driver captures the model on the meta device first: exit 2 naming the layer, no run."""
    from typer.testing import CliRunner

    from trainer.cli import app
    from trainer.components.models import BuiltModel
    from trainer.tasks.classification.task import Classification

    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow: torch.export refuses

    def build_model(self, cfg, num_classes):
        module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.ReLU(), Gate()), nn.Flatten())
        defaults = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        return BuiltModel(module, "gated", "timm", head=(), data_defaults=defaults)

    monkeypatch.setattr(Classification, "build_model", build_model)
    result = CliRunner().invoke(
        app,
        ["train", str(ROOT / "configs/digits.yaml"), f"data.train={digits_dir}/train",
         f"data.val={digits_dir}/val", "qat.enabled=true", "run.storage=/nonexistent/runs"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "qat.enabled: Sequential cannot be captured" in result.output and "layer '1.1'" in result.output
    assert "run dir:" not in result.output
