"""Fine-tuning controls: trainable sets per strategy and epoch, BatchNorm kept in eval mode while
frozen, optimizer parameter groups (layer decay, head and stage multipliers, no-decay set).

Expected counts come from the models' own modules, never from the functions under test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainer.components.finetune import (
    Stage,
    apply_trainable,
    freeze_frozen_batchnorm,
    param_groups,
    param_layout,
    trainable_names,
)
from trainer.components.models import create_model
from trainer.components.optim import create_optimizer

NUM_CLASSES = 5
STAGES = [Stage(epoch=2, blocks=1, lr_mult=0.5), Stage(epoch=4, blocks="all", lr_mult=0.1)]
BASE_LR = 0.1
WD = 0.05

MODELS = {
    "timm-resnet18": ("resnet18", "timm", lambda m: m.fc),
    "timm-test_vit": ("test_vit", "timm", lambda m: m.head),
    "tv-resnet18": ("resnet18", "torchvision", lambda m: m.fc),
    "tv-mobilenet_v3_small": ("mobilenet_v3_small", "torchvision", lambda m: m.classifier[3]),
}


def build(key: str):
    name, source, _ = MODELS[key]
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES, source=source)


def head_module(key: str, model: nn.Module) -> nn.Module:
    return MODELS[key][2](model)


def numel(params) -> int:
    return sum(p.numel() for p in params)


def trainable_count(model: nn.Module) -> int:
    return numel(p for p in model.parameters() if p.requires_grad)


def names_of(model: nn.Module, module: nn.Module) -> set[str]:
    ids = {id(p) for p in module.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def set_epoch(built, strategy: str, stages: list[Stage], epoch: int) -> set[str]:
    names = trainable_names(param_layout(built), strategy, stages, epoch)
    apply_trainable(built.module, names)
    return names


def groups_for(built, strategy="full", stages=(), layer_decay=None, head_lr_mult=1.0, lr=BASE_LR, wd=WD):
    return param_groups(
        built.module, param_layout(built), strategy, list(stages), lr, wd, layer_decay, head_lr_mult
    )


def by_name(groups: list[dict]) -> dict[str, dict]:
    out = {}
    for group in groups:
        for name in group["names"]:
            assert name not in out, f"{name} is in two groups"
            out[name] = group
    return out


# ----------------------------------------------------------------------------- trainable sets


@pytest.mark.parametrize("key", MODELS)
def test_full_trains_everything(key):
    built = build(key)
    for p in built.module.parameters():
        p.requires_grad_(False)
    for epoch in (0, 3):
        set_epoch(built, "full", [], epoch)
        assert all(p.requires_grad for p in built.module.parameters())
        assert trainable_count(built.module) == numel(built.module.parameters())


@pytest.mark.parametrize("key", MODELS)
def test_linear_probe_trains_exactly_the_head(key):
    built = build(key)
    head = head_module(key, built.module)
    expected = head.in_features * NUM_CLASSES + NUM_CLASSES
    for epoch in (0, 5):
        names = set_epoch(built, "linear_probe", [], epoch)
        assert names == names_of(built.module, head)
        assert trainable_count(built.module) == expected
    if key.endswith("resnet18"):
        assert expected == 512 * 5 + 5


def test_gradual_timm_resnet18_unfreezes_top_block_then_all():
    built = build("timm-resnet18")
    model = built.module
    head = numel(model.fc.parameters())
    layer4 = numel(model.layer4.parameters())
    total = numel(model.parameters())
    expected = {0: head, 1: head, 2: head + layer4, 3: head + layer4, 4: total, 5: total, 9: total}
    for epoch, count in expected.items():
        names = set_epoch(built, "gradual", STAGES, epoch)
        assert trainable_count(model) == count, f"epoch {epoch}"
        if epoch in (2, 3):
            assert names == names_of(model, model.fc) | names_of(model, model.layer4)
    assert head == 512 * 5 + 5


def test_gradual_counts_blocks_from_the_top():
    built = build("timm-resnet18")
    model = built.module
    stages = [Stage(epoch=1, blocks=2), Stage(epoch=3, blocks=1), Stage(epoch=5, blocks="all")]
    names = set_epoch(built, "gradual", stages, 1)
    assert names == names_of(model, model.fc) | names_of(model, model.layer4) | names_of(model, model.layer3)
    names = set_epoch(built, "gradual", stages, 3)
    assert names == names_of(model, model.fc) | {
        n for layer in (model.layer2, model.layer3, model.layer4) for n in names_of(model, layer)
    }
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == names_of(model, model.layer1) | {"conv1.weight", "bn1.weight", "bn1.bias"}
    set_epoch(built, "gradual", stages, 5)
    assert trainable_count(model) == numel(model.parameters())


def test_gradual_more_blocks_than_exist_unfreezes_everything():
    built = build("timm-resnet18")
    set_epoch(built, "gradual", [Stage(epoch=1, blocks=50)], 1)
    assert trainable_count(built.module) == numel(built.module.parameters())


def test_gradual_test_vit_top_block_is_the_last_transformer_block():
    built = build("timm-test_vit")
    model = built.module
    head = numel(model.head.parameters())
    top = numel(model.blocks[-1].parameters()) + numel(model.norm.parameters())  # final norm joins it
    set_epoch(built, "gradual", STAGES, 1)
    assert trainable_count(model) == head
    set_epoch(built, "gradual", STAGES, 2)
    assert trainable_count(model) == head + top
    assert not model.blocks[-2].attn.qkv.weight.requires_grad
    set_epoch(built, "gradual", STAGES, 4)
    assert trainable_count(model) == numel(model.parameters())


def test_gradual_torchvision_resnet18_top_block_is_layer4():
    # a residual block is one unit: its convs and norms unfreeze together
    built = build("tv-resnet18")
    model = built.module
    head = numel(model.fc.parameters())
    set_epoch(built, "gradual", STAGES, 2)
    assert trainable_count(model) == head + numel(model.layer4.parameters())
    set_epoch(built, "gradual", STAGES, 4)
    assert trainable_count(model) == numel(model.parameters())


def test_gradual_torchvision_mobilenet_top_block():
    built = build("tv-mobilenet_v3_small")
    model = built.module
    set_epoch(built, "gradual", STAGES, 1)
    assert trainable_count(model) == numel(model.classifier[3].parameters())
    set_epoch(built, "gradual", STAGES, 2)
    # the top block below the head is the classifier's hidden Linear (576 -> 1024)
    top = numel(model.classifier[0].parameters())
    assert top == 576 * 1024 + 1024
    assert trainable_count(model) == numel(model.classifier[3].parameters()) + top
    set_epoch(built, "gradual", STAGES, 4)
    assert trainable_count(model) == numel(model.parameters())


# ----------------------------------------------------------------------------- batchnorm


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


def forward_train(model: nn.Module, key: str) -> None:
    model.train()
    freeze_frozen_batchnorm(model)
    size = 32 if "vit" not in key else 160
    with torch.no_grad():
        model(torch.randn(2, 3, size, size) * 3 + 1)


@pytest.mark.parametrize("key", ["timm-resnet18", "tv-resnet18", "tv-mobilenet_v3_small"])
def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics(key):
    built = build(key)
    model = built.module
    set_epoch(built, "linear_probe", [], 0)
    bns = batchnorms(model)
    assert bns
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    forward_train(model, key)
    assert model.training
    head = head_module(key, model)
    assert head.training
    for name, bn in bns.items():
        assert not bn.training, name
        assert torch.equal(bn.running_mean, before[name][0]), name
        assert torch.equal(bn.running_var, before[name][1]), name


def test_unfrozen_batchnorm_trains_and_frozen_ones_do_not():
    built = build("timm-resnet18")
    model = built.module
    set_epoch(built, "gradual", STAGES, 2)  # head + layer4
    bns = batchnorms(model)
    before = {n: m.running_mean.clone() for n, m in bns.items()}
    forward_train(model, "timm-resnet18")
    in_layer4 = {n for n in bns if n.startswith("layer4.")}
    assert in_layer4
    for name, bn in bns.items():
        if name in in_layer4:
            assert bn.training, name
            assert not torch.equal(bn.running_mean, before[name]), name
        else:
            assert not bn.training, name
            assert torch.equal(bn.running_mean, before[name]), name


def test_full_strategy_keeps_every_batchnorm_training():
    built = build("tv-resnet18")
    set_epoch(built, "full", [], 0)
    forward_train(built.module, "tv-resnet18")
    assert all(bn.training for bn in batchnorms(built.module).values())


# ----------------------------------------------------------------------------- parameter groups


def test_layer_decay_scales_timm_resnet18():
    built = build("timm-resnet18")
    groups = by_name(groups_for(built, layer_decay=0.5, head_lr_mult=10.0))
    # fine layers: stem, the 8 BasicBlocks (layer1.0 ... layer4.1), head -> 10
    num_layers = 1 + 8 + 1
    assert param_layout(built).num_layers == num_layers

    def lr_of(layer_id: int) -> float:
        return BASE_LR * 0.5 ** (num_layers - 1 - layer_id)

    assert groups["fc.weight"]["lr"] == pytest.approx(BASE_LR * 10.0)
    assert groups["fc.bias"]["lr"] == pytest.approx(BASE_LR * 10.0)
    for name in ("conv1.weight", "bn1.weight", "bn1.bias"):
        assert groups[name]["lr"] == pytest.approx(lr_of(0)), name
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    for layer_id, block in enumerate(blocks, start=1):
        assert groups[f"{block}.conv1.weight"]["lr"] == pytest.approx(lr_of(layer_id)), block
        assert groups[f"{block}.bn2.bias"]["lr"] == pytest.approx(lr_of(layer_id)), block
    assert groups["layer4.1.conv2.weight"]["lr"] == pytest.approx(BASE_LR * 0.5)


def test_layer_decay_scales_test_vit():
    built = build("timm-test_vit")
    model = built.module
    depth = len(model.blocks)
    num_layers = depth + 2  # embeddings, blocks, head
    groups = by_name(groups_for(built, layer_decay=0.5, head_lr_mult=2.0))
    assert groups["head.weight"]["lr"] == pytest.approx(BASE_LR * 2.0)
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        assert groups[name]["lr"] == pytest.approx(BASE_LR * 0.5 ** (num_layers - 1)), name
    top = f"blocks.{depth - 1}.attn.qkv.weight"
    assert groups[top]["lr"] == pytest.approx(BASE_LR * 0.5)
    assert groups["blocks.0.mlp.fc1.weight"]["lr"] == pytest.approx(BASE_LR * 0.5 ** (num_layers - 2))


def test_without_layer_decay_every_backbone_lr_is_the_base():
    built = build("tv-resnet18")
    groups = by_name(groups_for(built, head_lr_mult=3.0))
    for name, group in groups.items():
        expected = BASE_LR * 3.0 if name.startswith("fc.") else BASE_LR
        assert group["lr"] == pytest.approx(expected), name


@pytest.mark.parametrize("key", MODELS)
def test_no_decay_for_biases_norms_and_declared_names(key):
    built = build(key)
    model = built.module
    declared = {"cls_token", "pos_embed"} if key == "timm-test_vit" else set()
    groups = by_name(groups_for(built, layer_decay=0.7))
    expected_no_decay = {n for n, p in model.named_parameters() if p.ndim <= 1} | declared
    for name, param in model.named_parameters():
        if name in expected_no_decay:
            assert groups[name]["weight_decay"] == 0.0, name
        else:
            assert param.ndim > 1
            assert groups[name]["weight_decay"] == WD, name
    norm_weights = {
        f"{mod_name}.weight"
        for mod_name, mod in model.named_modules()
        if isinstance(mod, _BatchNorm | nn.LayerNorm) and mod.weight is not None
    }
    assert norm_weights
    assert norm_weights <= expected_no_decay
    for group in groups.values():  # a group never mixes decayed and non-decayed tensors
        assert {n in expected_no_decay for n in group["names"]} == {group["weight_decay"] == 0.0}


def test_test_vit_declares_its_token_and_position_embedding():
    built = build("timm-test_vit")
    groups = by_name(groups_for(built))
    assert groups["cls_token"]["weight_decay"] == 0.0
    assert groups["pos_embed"]["weight_decay"] == 0.0
    assert groups["patch_embed.proj.weight"]["weight_decay"] == WD
    assert groups["blocks.0.attn.qkv.weight"]["weight_decay"] == WD


def test_stage_lr_mult_multiplies_in_for_gradual_blocks():
    built = build("timm-resnet18")
    model = built.module
    groups = by_name(groups_for(built, "gradual", STAGES, head_lr_mult=4.0))
    layer4 = names_of(model, model.layer4)
    for name in (n for n, _ in model.named_parameters()):
        if name.startswith("fc."):
            expected = BASE_LR * 4.0
        elif name in layer4:
            expected = BASE_LR * 0.5  # stage 1
        else:
            expected = BASE_LR * 0.1  # stage 2 ("all")
        assert groups[name]["lr"] == pytest.approx(expected), name


def test_stage_lr_mult_and_layer_decay_combine():
    built = build("timm-resnet18")
    groups = by_name(groups_for(built, "gradual", STAGES, layer_decay=0.5))
    assert groups["layer4.1.conv1.weight"]["lr"] == pytest.approx(BASE_LR * 0.5 * 0.5)
    assert groups["layer4.0.conv1.weight"]["lr"] == pytest.approx(BASE_LR * 0.5**2 * 0.5)
    assert groups["conv1.weight"]["lr"] == pytest.approx(BASE_LR * 0.5**9 * 0.1)
    assert groups["fc.weight"]["lr"] == pytest.approx(BASE_LR)


@pytest.mark.parametrize("key", MODELS)
def test_linear_probe_groups_hold_only_the_head(key):
    built = build(key)
    model = built.module
    groups = groups_for(built, "linear_probe", layer_decay=0.5, head_lr_mult=10.0)
    head = names_of(model, head_module(key, model))
    assert set(by_name(groups)) == head
    held = {id(p) for g in groups for p in g["params"]}
    assert held == {id(p) for p in head_module(key, model).parameters()}
    assert all(g["lr"] == pytest.approx(BASE_LR * 10.0) for g in groups)


@pytest.mark.parametrize("key", MODELS)
@pytest.mark.parametrize("strategy", ["full", "gradual"])
def test_every_parameter_that_trains_is_in_exactly_one_group(key, strategy):
    built = build(key)
    model = built.module
    stages = STAGES if strategy == "gradual" else []
    groups = groups_for(built, strategy, stages, layer_decay=0.8, head_lr_mult=2.0)
    held = [id(p) for g in groups for p in g["params"]]
    assert len(held) == len(set(held))
    assert set(held) == {id(p) for p in model.parameters()}  # frozen-for-now blocks included
    for group in groups:
        assert len(group["params"]) == len(group["names"])
        assert group["lr"] == pytest.approx(BASE_LR * group["lr_scale"])


# ----------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_respects_nesterov_and_group_lrs(nesterov):
    built = build("timm-resnet18")
    groups = groups_for(built, layer_decay=0.5, head_lr_mult=10.0)
    expected = [g["lr"] for g in groups]
    decays = [g["weight_decay"] for g in groups]
    opt = create_optimizer(groups, "sgd", BASE_LR, WD, momentum=0.8, nesterov=nesterov)
    assert type(opt) is torch.optim.SGD
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected)
    assert [g["weight_decay"] for g in opt.param_groups] == decays
    assert len({g["lr"] for g in opt.param_groups}) > 2
    for group in opt.param_groups:
        assert group["nesterov"] is nesterov
        assert group["momentum"] == 0.8


def test_adamw_keeps_group_lrs_and_decays():
    built = build("timm-test_vit")
    groups = groups_for(built, layer_decay=0.5)
    opt = create_optimizer(groups, "adamw", BASE_LR, WD, betas=(0.8, 0.95), eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([g["lr"] for g in groups])
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, WD}
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in opt.param_groups)
    assert not math.isclose(min(g["lr"] for g in opt.param_groups), BASE_LR)
