"""Losses: the registry, the task's default, soft targets, label smoothing, BCE and focal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.components.losses import FocalLoss, SmoothedBCE, create_loss
from trainer.config import build_config
from trainer.errors import ConfigError
from trainer.registry import list_losses


def test_losses_are_registered():
    assert set(list_losses()) >= {"cross_entropy", "bce", "focal"}


def test_auto_loss_picks_by_task():
    assert isinstance(create_loss("auto", multilabel=False), nn.CrossEntropyLoss)
    assert isinstance(create_loss("auto", multilabel=True), SmoothedBCE)
    assert isinstance(create_loss("focal", multilabel=False, focal_gamma=1.5), FocalLoss)


def test_cross_entropy_accepts_soft_targets():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    hard = torch.tensor([0, 1, 2, 3, 0, 1])
    loss = create_loss("cross_entropy", multilabel=False)
    assert loss(logits, F.one_hot(hard, 4).float()) == pytest.approx(float(loss(logits, hard)))
    soft = torch.softmax(torch.randn(6, 4), dim=1)
    expected = -(soft * torch.log_softmax(logits, dim=1)).sum(1).mean()
    assert float(loss(logits, soft)) == pytest.approx(float(expected), rel=1e-5)


def test_cross_entropy_label_smoothing():
    logits = torch.tensor([[4.0, 0.0, 0.0]])
    target = torch.tensor([0])
    plain = create_loss("cross_entropy", False)(logits, target)
    smooth = create_loss("cross_entropy", False, label_smoothing=0.3)(logits, target)
    mixed = 0.7 * torch.tensor([1.0, 0, 0]) + 0.1  # 0.3 spread over 3 classes
    expected = -(mixed * torch.log_softmax(logits, 1)[0]).sum()
    assert float(smooth) == pytest.approx(float(expected), rel=1e-5)
    assert smooth > plain


def test_bce_requires_multilabel(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match=r"loss\.name: 'bce' needs data\.multilabel=true"):
        build_config({"data": {"train": str(tmp_path)}, "loss": {"name": "bce"}})
    cfg = build_config({"data": {"train": str(tmp_path), "multilabel": True}, "loss": {"name": "bce"}})
    assert cfg.loss.name == "bce"


def test_bce_is_multilabel_binary_cross_entropy_with_smoothing():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([[1, 0, 1]])
    loss = create_loss("bce", multilabel=True)
    expected = F.binary_cross_entropy_with_logits(logits, target.float())
    assert float(loss(logits, target)) == pytest.approx(float(expected))
    smooth = create_loss("bce", multilabel=True, label_smoothing=0.2)
    soft = torch.tensor([[0.9, 0.1, 0.9]])
    assert float(smooth(logits, target)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, soft))
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_focal_equals_cross_entropy_when_gamma_is_zero(smoothing):
    torch.manual_seed(1)
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    focal = create_loss("focal", multilabel=False, label_smoothing=smoothing, focal_gamma=0.0)
    ce = create_loss("cross_entropy", multilabel=False, label_smoothing=smoothing)
    assert float(focal(logits, target)) == pytest.approx(float(ce(logits, target)), rel=1e-6)


def test_focal_down_weights_easy_examples():
    target = torch.tensor([0])
    easy, hard = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    focal = create_loss("focal", multilabel=False, focal_gamma=2.0)
    ce = create_loss("cross_entropy", multilabel=False)
    assert float(focal(easy, target)) / float(ce(easy, target)) < 1e-3
    assert float(focal(hard, target)) / float(ce(hard, target)) > 0.5
    pt = torch.softmax(hard, 1)[0, 0]
    assert float(focal(hard, target)) == pytest.approx(float((1 - pt) ** 2 * -torch.log(pt)), rel=1e-5)
