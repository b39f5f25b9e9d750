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
