"""Fine-tuning controls: which parameters train when (full, linear_probe, gradual unfreezing,
LoRA adapters at once or by stage), their learning-rate scales (layer-wise decay, head
multiplier, per-stage multiplier), the no-weight-decay set, and BatchNorm kept in eval mode
while its block is frozen.

A model is seen as a head (the classifier) and blocks ordered bottom (stem) to top. timm
models use their own `group_matcher` (coarse stages for freezing, fine layers for layer
decay); `transformers` models (source hf) by their largest layer list (a ViT's encoder layers,
a Swin's or ConvNeXt's stages, SegFormer's blocks); torchvision models are split structurally
along their trunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from trainer.components.models import BuiltModel


@dataclass
class Stage:
    epoch: int
    blocks: int | str  # count, or "all"
    lr_mult: float = 1.0


@dataclass
class ParamLayout:
    head: list[str]
    blocks: list[list[str]]  # freezing units, bottom -> top, head excluded
    layers: dict[str, int]  # fine layer id per parameter for layer decay; head = num_layers - 1
    num_layers: int
    no_decay: set[str] = field(default_factory=set)
    frozen: set[str] = field(default_factory=set)  # frozen by the model builder: never train


def _in_any(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def param_layout(built: BuiltModel) -> ParamLayout:
    model = built.module
    frozen = set(built.frozen)
    names = [n for n, _ in model.named_parameters() if n not in frozen]
    head = [n for n in names if _in_any(n, built.head)]
    if built.source == "timm" and hasattr(model, "group_matcher"):
        blocks = _timm_groups(model, coarse=True)
        fine = _timm_groups(model, coarse=False)
    elif built.source == "hf":
        blocks = fine = _layer_list_groups(model)
    else:
        blocks = fine = _structural_groups(model)
    out = set(head) | frozen
    blocks = [group for group in ([n for n in g if n not in out] for g in blocks) if group]
    fine = [group for group in ([n for n in g if n not in out] for g in fine) if group]
    layers = {n: i for i, group in enumerate(fine) for n in group}
    layers.update({n: len(fine) for n in head})
    return ParamLayout(head, blocks, layers, len(fine) + 1, _no_decay_names(model), frozen)


def _timm_groups(model: nn.Module, coarse: bool) -> list[list[str]]:
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=coarse))
    return [groups[k] for k in sorted(groups)]


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _single_layers(module: nn.Module) -> bool:
    """True when the parts of `module` are single layers (conv, norm, linear): one block."""
    return all(next(c.children(), None) is None for c in module.children() if _has_params(c))


def _trunk_prefixes(module: nn.Module, prefix: str = "") -> list[str]:
    """Module prefixes in order; a child holding most of the parameters is opened up when it
    splits into at least four parts (e.g. torchvision's `features`, ViT's encoder layers). A
    block made of single layers (a residual block's convs and norms) is never split."""
    total = _count(module)
    out: list[str] = []
    for name, child in module.named_children():
        if not _has_params(child):
            continue
        full = prefix + name
        dominant = _count(child) > total / 2 and not _single_layers(child)
        inner = _trunk_prefixes(child, full + ".") if dominant else []
        out += inner if len(inner) >= 4 else [full]
    return out


def _layer_list_groups(model: nn.Module) -> list[list[str]]:
    """The stem (what comes before), each entry of the model's largest ModuleList, then what
    follows (a final norm, a decoder): how `transformers` models hold their layers or stages."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) >= 2]
    if not lists:
        return _structural_groups(model)
    prefix, layers = max(lists, key=lambda item: _count(item[1]))
    starts = [f"{prefix}.{i}" for i in range(len(layers))]
    groups: list[list[str]] = [[] for _ in range(len(starts) + 2)]
    after = False
    for name, _ in model.named_parameters():
        index = next((i for i, start in enumerate(starts) if _in_any(name, [start])), None)
        after = after or index is not None
        groups[index + 1 if index is not None else (-1 if after else 0)].append(name)
    return [group for group in groups if group]


def _structural_groups(model: nn.Module) -> list[list[str]]:
    prefixes = _trunk_prefixes(model)
    groups: list[list[str]] = [[] for _ in prefixes] or [[]]
    for name, _ in model.named_parameters():
        owner = next((i for i, p in enumerate(prefixes) if _in_any(name, [p])), 0)
        groups[owner].append(name)  # direct parameters (class token, position embedding) join the stem
    return groups


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases, norm weights (every 1-d tensor) and what the model declares (timm's
    `no_weight_decay`: position embeddings, class tokens)."""
    declared = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters() if p.ndim <= 1 or n in declared}


# ----------------------------------------------------------------------------- strategies


def stage_of_block(layout: ParamLayout, strategy: str, stages: list[Stage]) -> list[int | None]:
    """For each block (bottom -> top): the stage index that unfreezes it (0 = from the start,
    1.. = `stages[i-1]`), or None when it never trains."""
    n = len(layout.blocks)
    if strategy == "full" or (strategy == "lora" and not stages):
        return [0] * n  # LoRA: the blocks hold only their adapters (the base weights are frozen)
    owner: list[int | None] = [None] * n
    if strategy in ("gradual", "lora"):
        top = n
        for i, stage in enumerate(stages, start=1):
            count = top if stage.blocks == "all" else min(int(stage.blocks), top)
            for b in range(top - count, top):
                owner[b] = i
            top -= count
    return owner


def trainable_names(layout: ParamLayout, strategy: str, stages: list[Stage], epoch: int) -> set[str]:
    """Parameters that train during `epoch` (0-based): the head always; blocks by strategy."""
    owner = stage_of_block(layout, strategy, stages)
    names = set(layout.head)
    for block, stage in zip(layout.blocks, owner, strict=True):
        if stage is not None and (stage == 0 or stages[stage - 1].epoch <= epoch):
            names.update(block)
    return names


def apply_trainable(model: nn.Module, names: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)


def freeze_frozen_batchnorm(model: nn.Module) -> None:
    """Call after `model.train()`: BatchNorm layers whose parameters are all frozen stay in
    eval mode, so their running statistics keep the pretrained values."""
    for module in model.modules():
        frozen = _has_params(module) and not any(p.requires_grad for p in module.parameters())
        if isinstance(module, _BatchNorm) and frozen:
            module.eval()


def param_groups(
    model: nn.Module,
    layout: ParamLayout,
    strategy: str,
    stages: list[Stage],
    lr: float,
    weight_decay: float,
    layer_decay: float | None,
    head_lr_mult: float,
) -> list[dict]:
    """Optimizer parameter groups for every parameter that will ever train. Each group's lr is
    lr x layer-decay scale x (head multiplier | stage multiplier); norms and biases get no
    weight decay. Frozen parameters are in their groups from the start, so unfreezing later
    needs no new optimizer and resume restores one state."""
    owner = stage_of_block(layout, strategy, stages)
    stage_mult = {}
    for block, stage in zip(layout.blocks, owner, strict=True):
        for name in block:
            stage_mult[name] = None if stage is None else (1.0 if stage == 0 else stages[stage - 1].lr_mult)
    head = set(layout.head)
    top = layout.num_layers - 1
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        mult = head_lr_mult if name in head else stage_mult.get(name, 1.0)
        if mult is None or name in layout.frozen:
            continue
        layer = layout.layers.get(name, 0)
        scale = (layer_decay ** (top - layer) if layer_decay else 1.0) * mult
        decay = 0.0 if name in layout.no_decay else weight_decay
        key = (layer, scale, decay)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": decay,
                "layer": layer,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())
