"""LoRA (low-rank adapters) through Hugging Face's `peft`: which layers get adapters (per
family by default: attention projections for ViTs, 1x1 convolutions for CNNs, the blocks'
Linear layers otherwise), injecting them into a built model in place, the small adapter state
a checkpoint keeps, and the merged weights `model.safetensors` holds (so export and serving see
a plain model).

`peft` (which imports transformers, seconds) is imported only when a run uses LoRA.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace

import torch
from torch import nn

from trainer.components.models import BuiltModel, create_model

ADAPTER = "default"
_MARK = ".lora_"  # every adapter tensor's name holds it (lora_A, lora_B)
_BASE = ".base_layer."  # peft moves an adapted layer's own tensors under this name


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None  # module names, suffixes or globs; None: per family


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _adaptable(model: nn.Module, head: tuple[str, ...]) -> dict[str, nn.Module]:
    """Linear and Conv2d layers outside the head that compute their own forward (the
    projections inside nn.MultiheadAttention are read as raw tensors, so LoRA there would
    do nothing)."""
    inside_mha = {
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        for child, _ in module.named_children()
    }
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d) and not _in(name, head) and name not in inside_mha
    }


def default_targets(model: nn.Module, head: tuple[str, ...]) -> list[str]:
    """Per family: attention projections (qkv/proj of ViT, Swin, EVA, DINOv2, CLIP), else 1x1
    convolutions (ResNet bottlenecks, ConvNeXt and EfficientNet/MobileNet expansions), else a
    CNN's dense convolutions but the stem, else every Linear layer outside the head
    (torchvision's ViT, MLP-Mixers)."""
    layers = _adaptable(model, head)
    attention = [
        n
        for n, m in layers.items()
        if isinstance(m, nn.Linear) and any(p.startswith("attn") or "attention" in p for p in n.split("."))
    ]
    if attention:
        return attention
    dense = {n: m for n, m in layers.items() if isinstance(m, nn.Conv2d) and m.groups == 1}
    pointwise = [n for n, m in dense.items() if m.kernel_size == (1, 1)]
    if len(pointwise) >= 4:
        return pointwise
    if dense:  # ResNet-18/34's basic blocks: their 3x3 convolutions (not the stem)
        return [n for n in dense if n != next(iter(dense))]
    return [n for n, m in layers.items() if isinstance(m, nn.Linear)]


def resolve_targets(model: nn.Module, head: tuple[str, ...], targets: tuple[str, ...] | None) -> list[str]:
    """The module names that get adapters. A configured target matches a layer by full name,
    by name suffix (`qkv` matches `blocks.0.attn.qkv`) or by glob; each must match at least
    one Linear or Conv2d layer outside the head (ValueError naming finetune.lora.targets)."""
    if targets is None:
        names = default_targets(model, head)
        if not names:
            raise ValueError(
                f"finetune.lora.targets: {type(model).__name__} has no Linear or Conv2d layer "
                "outside its head to adapt"
            )
        return names
    layers = _adaptable(model, head)
    names: list[str] = []
    for target in targets:
        hits = [
            n for n in layers if n == target or n.endswith("." + target) or fnmatch.fnmatchcase(n, target)
        ]
        if not hits:
            examples = ", ".join(list(layers)[:4])
            raise ValueError(
                f"finetune.lora.targets: '{target}' matches no Linear or Conv2d layer outside the "
                f"head of {type(model).__name__} (layers are named like {examples})"
            )
        names += [n for n in hits if n not in names]
    return names


def check_targets(name: str, source: str, img_size: int | None, targets: tuple[str, ...]) -> None:
    """Config validation: the classifier `name` is built on the meta device (no memory, no
    weights) and the targets resolved against it (ValueError naming finetune.lora.targets)."""
    with torch.device("meta"):
        built = create_model(name, 2, source, "none", img_size=img_size)
    resolve_targets(built.module, built.head, targets)


def apply_lora(built: BuiltModel, settings: LoraSettings) -> BuiltModel:
    """Inject adapters into `built.module` in place. Every other parameter outside the head is
    frozen for good (`frozen`), so the head and the adapters are all that train."""
    from peft import LoraConfig, inject_adapter_in_model  # late: peft loads transformers (seconds)

    targets = resolve_targets(built.module, built.head, settings.targets)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
    )
    inject_adapter_in_model(config, built.module, adapter_name=ADAPTER)
    base = tuple(n for n, _ in built.module.named_parameters() if _MARK not in n and not _in(n, built.head))
    return replace(built, frozen=tuple(dict.fromkeys((*built.frozen, *base))))


def has_adapters(model: nn.Module) -> bool:
    return any(_MARK in name for name, _ in model.named_parameters())


def adapter_keys(model: nn.Module, head: tuple[str, ...]) -> set[str]:
    """State-dict keys a LoRA checkpoint keeps: the adapters and the head."""
    return {k for k in model.state_dict() if _MARK in k or _in(k, head)}


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights with every adapter folded into its layer (W + scale * B @ A), under the
    layer's own names: what a plain model of the same architecture loads. A model without
    adapters returns its state dict."""
    state = model.state_dict()
    if not has_adapters(model):
        return state
    from peft.tuners.lora import LoraLayer  # late: only a model with adapters gets here

    merged = {k.replace(_BASE, "."): v for k, v in state.items() if _MARK not in k}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            weight = merged[f"{name}.weight"]
            merged[f"{name}.weight"] = weight + module.get_delta_weight(ADAPTER).to(weight.dtype)
    return merged


@torch.no_grad()
def base_fingerprint(model: nn.Module, head: tuple[str, ...]) -> float:
    """A sum over the frozen base tensors: a resumed LoRA run checks it rebuilt the same base
    model its adapters were trained on."""
    keep = adapter_keys(model, head)
    tensors = [v for k, v in model.state_dict().items() if k not in keep and v.is_floating_point()]
    return float(sum(t.double().sum() for t in tensors)) if tensors else 0.0
