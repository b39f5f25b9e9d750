"""Corruptions, attacks and calibration (`trainer.components.robustness`): the building blocks
of `vft eval` and `train.robust_val`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components import robustness as R

ROOT = Path(__file__).resolve().parents[4]


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_corruptions_are_imagenet_c_s_with_its_jpeg_qualities(monkeypatch):
    """The eight named corruptions, and JPEG re-encoded by Pillow at ImageNet-C's qualities
    (25, 18, 15, 10, 7 for severities 1-5)."""
    assert R.list_corruptions() == sorted([
        "brightness", "contrast", "gaussian_blur", "gaussian_noise", "jpeg_compression", "motion_blur",
        "pixelate", "shot_noise",
    ])  # fmt: skip
    from PIL import Image

    qualities, save = [], Image.Image.save

    def spy(self, fp, format=None, **params):
        qualities.append(params.get("quality"))
        return save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", spy)
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for severity in R.SEVERITIES:
        R.corrupt(images, "jpeg_compression", severity, seed=0)
    assert qualities == [25, 18, 15, 10, 7]


@pytest.mark.parametrize("name", R.list_corruptions())
def test_corruptions_keep_shape_and_range_are_seeded_and_grow_with_severity(name):
    images = torch.rand(4, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    changes = []
    for severity in R.SEVERITIES:
        out = R.corrupt(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(out, R.corrupt(images, name, severity, seed=3))
        changes.append(float((out - images).abs().mean()))
    assert changes[-1] > changes[0] > 0, changes


def test_unknown_corruption_and_severity_are_errors():
    with pytest.raises(KeyError, match="unknown corruption 'fog'"):
        R.corrupt(torch.rand(1, 3, 8, 8), "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        R.corrupt(torch.rand(1, 3, 8, 8), "contrast", 6)


def test_pgd_stays_in_the_eps_ball_and_fgsm_at_zero_changes_nothing():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    norm = R.Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    pixels, labels = torch.rand(6, 3, 8, 8), torch.randint(0, 4, (6,))
    adv = R.pgd(model, norm, pixels, labels, eps=4 / 255, steps=5)
    assert float((adv - pixels).abs().max()) <= 4 / 255 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert torch.equal(R.fgsm(model, norm, pixels, labels, 0.0), pixels)
    loss = torch.nn.functional.cross_entropy
    before = loss(model(norm.to_inputs(pixels)), labels)
    after = loss(model(norm.to_inputs(R.fgsm(model, norm, pixels, labels, 8 / 255))), labels)
    assert after > before


def test_ece_matches_a_hand_computed_example():
    # confidence, prediction, label: (0.9, 0, 0) right, (0.85, 0, 1) wrong, (0.65, 0, 0) right,
    # (0.7, 1, 1) right, (0.55, 1, 0) wrong. Five bins of width 0.2:
    # (0.8, 1]: acc 0.5, conf 0.875 -> 2/5 * 0.375 = 0.15
    # (0.6, 0.8]: acc 1, conf 0.675 -> 2/5 * 0.325 = 0.13
    # (0.4, 0.6]: acc 0, conf 0.55 -> 1/5 * 0.55 = 0.11            ECE = 0.39
    probs = torch.tensor([[0.9, 0.1], [0.85, 0.15], [0.65, 0.35], [0.3, 0.7], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 0, 1, 0])
    assert R.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.39, abs=1e-6)
    bins = R.reliability_bins(probs, labels, n_bins=5)
    assert [b["count"] for b in bins] == [0, 0, 1, 2, 2]
    assert sum(
        b["count"] / 5 * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]
    ) == pytest.approx(0.39, abs=1e-6)


def test_robust_acc_monitor_needs_robust_val(digits_dir):
    result = vft(
        "validate",
        ROOT / "configs/digits.yaml",
        f"data.train={digits_dir}/train",
        f"data.val={digits_dir}/val",
        "train.monitor=val/robust_acc",
    )
    assert result.exit_code == 2
    assert "val/robust_acc needs train.robust_val=true" in result.output
