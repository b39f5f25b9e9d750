"""LoRA through peft: default targets per family, exact trainable-parameter counts, configured
targets and their errors, and merged weights that a plain model of the same name loads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.components.lora import (
    LoraSettings,
    apply_lora,
    base_fingerprint,
    default_targets,
    merged_state_dict,
    resolve_targets,
)
from trainer.components.models import BuiltModel, create_model


def build(name: str, size: int = 32) -> BuiltModel:
    torch.manual_seed(0)
    return create_model(name, 3, "auto", "none", 0.0, 0.0, size)


def expected_adapter_params(model: nn.Module, targets: list[str], rank: int) -> int:
    """rank x (fan-in + fan-out) per adapted layer: A is rank x in(xkxk), B is out x rank."""
    total = 0
    for name in targets:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear):
            total += rank * (layer.in_features + layer.out_features)
        else:
            kh, kw = layer.kernel_size
            total += rank * (layer.in_channels * kh * kw + layer.out_channels)
    return total


@pytest.mark.parametrize(
    ("name", "size", "kind", "count"),
    [
        ("vit_tiny_patch16_224", 32, "qkv/proj", 24),  # 12 blocks x (attn.qkv, attn.proj)
        ("swin_tiny_patch4_window7_224", 224, "qkv/proj", 24),  # 2+2+6+2 blocks
        ("resnet50", 32, "1x1", 36),  # bottlenecks' conv1/conv3 and 4 downsamples
        ("resnet18", 32, "3x3", 19),  # basic blocks: every dense conv but the stem
        ("convnext_atto", 32, "1x1", 24),  # conv-MLP fc1/fc2 of 12 blocks
    ],
)
def test_default_targets_and_trainable_counts_per_family(name, size, kind, count):
    built = build(name, size)
    plain = {n: p.numel() for n, p in built.module.named_parameters()}
    targets = default_targets(built.module, built.head)
    assert len(targets) == count
    layers = [built.module.get_submodule(t) for t in targets]
    if kind == "qkv/proj":
        assert {t.rsplit(".", 1)[1] for t in targets} == {"qkv", "proj"}
    else:
        k = (1, 1) if kind == "1x1" else (3, 3)
        assert all(isinstance(m, nn.Conv2d) for m in layers) and {m.kernel_size for m in layers} >= {k}
    expected = expected_adapter_params(built.module, targets, rank=4)
    lora = apply_lora(built, LoraSettings(rank=4))
    frozen = set(lora.frozen)
    trainable = {n: p.numel() for n, p in lora.module.named_parameters() if n not in frozen}
    head = sum(v for n, v in plain.items() if n.startswith(built.head[0] + "."))
    assert sum(trainable.values()) == expected + head
    assert all(".lora_" in n or n.startswith(built.head[0] + ".") for n in trainable)
    assert sum(trainable.values()) < 0.2 * sum(plain.values())


def test_configured_targets_match_by_suffix_and_glob_and_must_match():
    model = build("vit_tiny_patch16_224").module
    assert resolve_targets(model, ("head",), ("qkv",)) == [f"blocks.{i}.attn.qkv" for i in range(12)]
    assert resolve_targets(model, ("head",), ("blocks.1*.mlp.fc2",)) == [
        "blocks.1.mlp.fc2",
        "blocks.10.mlp.fc2",
        "blocks.11.mlp.fc2",
    ]
    with pytest.raises(ValueError, match=r"finetune.lora.targets: 'q_proj' matches no Linear or Conv2d"):
        resolve_targets(model, ("head",), ("q_proj",))
    with pytest.raises(ValueError, match="'head' matches no"):  # the head trains in full, never adapted
        resolve_targets(model, ("head",), ("head",))


def test_multihead_attention_projections_are_not_targets():
    """nn.MultiheadAttention reads its out_proj weight directly: an adapter there would do
    nothing, so the family default falls through to the MLP's Linear layers."""
    model = nn.Sequential()
    model.add_module("attention", nn.MultiheadAttention(8, 2))
    model.add_module("mlp", nn.Linear(8, 8))
    model.add_module("head", nn.Linear(8, 2))
    assert default_targets(model, ("head",)) == ["mlp"]


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "resnet50"])
def test_merged_weights_load_into_the_plain_model_and_match_the_adapted_one(name):
    lora = apply_lora(build(name), LoraSettings(rank=4, alpha=8.0))
    base = base_fingerprint(lora.module, lora.head)
    with torch.no_grad():
        for n, p in lora.module.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.05)  # B starts at zero: make the adapters do something
    model = lora.module.eval()
    x = torch.randn(2, 3, 32, 32)
    plain = build(name).module.eval()
    before = plain(x)
    plain.load_state_dict(merged_state_dict(model))  # strict: the plain model's own names
    after = plain(x)
    torch.testing.assert_close(after, model(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-4)  # the adapters changed the function
    assert base_fingerprint(lora.module, lora.head) == base  # the base weights did not move
