"""The worker's building blocks without Ray: build a job on real data, guard DDP invariants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import load_config
from trainer.engine.assemble import setup
from trainer.engine.loop import evaluate, set_stage, train_one_epoch
from trainer.engine.progress import WorkerProgress
from trainer.errors import DataError

ROOT = Path(__file__).resolve().parents[4]


class Batches(list):
    """A fixed list of collated batches standing in for the DataLoader."""

    sampler = None


@pytest.fixture
def job(digits_dir):
    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [
            f"data.train={digits_dir}/train",
            f"data.val={digits_dir}/val",
            "data.num_workers=0",
            "finetune.strategy=linear_probe",
        ],
    )
    job = setup(cfg, rank=0, world=1, device=torch.device("cpu"))
    set_stage(job, 0)
    return job


def test_one_worker_epoch_trains_only_the_head_and_evaluates(job):
    backbone = job.model.conv1.weight.clone()
    job.train_loader = Batches(batch for _, batch in zip(range(3), job.train_loader, strict=False))
    record = train_one_epoch(job, 0, WorkerProgress(None))
    assert record["train/loss"] > 0 and record["data/skipped_images"] == 0
    assert torch.equal(backbone, job.model.conv1.weight)  # linear probe: frozen backbone
    scalars, tables = evaluate(job)
    assert 0.0 <= scalars["val/top1"] <= 1.0 and len(tables["confusion"]) == 10


def test_an_unreadable_batch_cannot_be_skipped_under_ddp(job):
    job.train_loader = Batches([(None, None, 4)])
    assert train_one_epoch(job, 0, WorkerProgress(None))["data/skipped_images"] == 4  # one worker: skipped
    job.world = 2
    with pytest.raises(DataError, match="cannot be skipped"):
        train_one_epoch(job, 0, WorkerProgress(None))


def test_early_stopping_stops_after_patience_epochs_without_a_min_delta_gain(digits_dir):
    """Best by any gain; `patience` epochs in a row without a gain of `min_delta` stop the run."""
    from types import SimpleNamespace

    from trainer.engine.loop import track_best

    cfg = load_config(
        ROOT / "configs/digits.yaml",
        [f"data.train={digits_dir}/train", "data.val=null"]
        + [
            "train.early_stopping.enabled=true",
            "train.early_stopping.patience=2",
            "train.early_stopping.min_delta=0.01",
        ],
    )
    seen = []
    job = SimpleNamespace(
        cfg=cfg,
        step=SimpleNamespace(schedule=SimpleNamespace(step_epoch=seen.append)),
        best={},
        bad_epochs=0,
        history=[],
    )
    outcomes = [
        track_best(job, {"epoch": e + 1, "val/top1": v}) for e, v in enumerate([0.5, 0.6, 0.605, 0.61])
    ]
    assert outcomes == [(True, False), (True, False), (True, False), (True, True)]
    assert job.best == {"value": 0.61, "epoch": 4} and seen == [0.5, 0.6, 0.605, 0.61]
    job.cfg = load_config(ROOT / "configs/digits.yaml", [f"data.train={digits_dir}/train", "data.val=null"])
    job.best, job.bad_epochs = {}, 0
    assert not any(track_best(job, {"epoch": e, "val/top1": 0.5})[1] for e in range(1, 10))  # off by default
