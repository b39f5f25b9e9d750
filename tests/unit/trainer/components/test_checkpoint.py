"""Checkpoint files: the run-directory layout, atomic publishing, resume-point choice, RNG."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from trainer.components import checkpoint as ckpt
from trainer.engine.state import latest_checkpoint


def write(directory, epoch: int) -> None:
    meta = {"epoch": epoch, "classes": ["a", "b"]}
    ckpt.write_checkpoint(directory, {"w": torch.full((2,), float(epoch))}, meta, {"epoch": epoch})


class Reported:
    """Stands in for ray.train.Checkpoint: only its as_directory() is used."""

    def __init__(self, path):
        self.path = path

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.path)


def test_write_and_read_back(tmp_path):
    write(tmp_path / "c", 3)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "meta.json",
        "model.safetensors",
        "state.pt",
    ]
    assert ckpt.read_meta(tmp_path / "c")["epoch"] == 3
    assert ckpt.read_state(tmp_path / "c") == {"epoch": 3}


def test_publish_replaces_the_folder_whole(tmp_path):
    write(tmp_path / "e1", 1)
    write(tmp_path / "e2", 2)
    (tmp_path / "e1" / "stale.txt").write_text("x")
    ckpt.publish(tmp_path / "e1", str(tmp_path / "last"))
    ckpt.publish(tmp_path / "e2", str(tmp_path / "last"))
    assert ckpt.read_meta(tmp_path / "last")["epoch"] == 2
    assert not (tmp_path / "last" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_takes_the_newer_of_ray_and_run_dir_last(tmp_path):
    write(tmp_path / "ray", 2)
    write(tmp_path / "last", 3)  # written just before a report the driver never saw
    with latest_checkpoint(Reported(tmp_path / "ray"), str(tmp_path / "last")) as directory:
        assert directory == str(tmp_path / "last")
    write(tmp_path / "ray", 4)
    with latest_checkpoint(Reported(tmp_path / "ray"), str(tmp_path / "last")) as directory:
        assert directory == str(tmp_path / "ray")
    with latest_checkpoint(None, str(tmp_path / "missing")) as directory:
        assert directory is None


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    state = ckpt.rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.save({"rng": state}, tmp_path / "s.pt")
    ckpt.set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]
