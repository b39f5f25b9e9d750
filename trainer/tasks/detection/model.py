"""Detection models by name: torchvision's Faster R-CNN, RetinaNet, FCOS and SSD/SSDlite (v2
variants where they exist), and `<detector>_timm_<encoder>`: the same detector over an FPN on
any timm encoder (`features_only`).

Labels follow torchvision: 0 is background, class k of the dataset is label k + 1, so every
detector is built with `len(classes) + 1` classes. Images go in as a list of float RGB tensors
in [0, 1] of any size; the model resizes (`min_size`, `max_size`) and normalises them itself
and returns boxes in the input's pixels.
"""

from __future__ import annotations

import math

import timm
import torchvision.models as tvm
from torch import nn
from torchvision.models import detection as tvd

from trainer.components.models import BuiltModel, load_weights, read_weights
from trainer.components.timm_fpn import timm_fpn, timm_normalization
from trainer.errors import WeightsError

TORCHVISION_DETECTORS = {
    "fasterrcnn_resnet50_fpn": "fasterrcnn",
    "fasterrcnn_resnet50_fpn_v2": "fasterrcnn",
    "fasterrcnn_mobilenet_v3_large_fpn": "fasterrcnn",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "fasterrcnn",
    "retinanet_resnet50_fpn": "retinanet",
    "retinanet_resnet50_fpn_v2": "retinanet",
    "fcos_resnet50_fpn": "fcos",
    "ssdlite320_mobilenet_v3_large": "ssd",
    "ssd300_vgg16": "ssd",
}
TIMM_FAMILIES = ("fasterrcnn", "retinanet", "fcos")
TIMM_MARK = "_timm_"

# the loss terms each family returns in training mode (weights in `loss.weights`)
LOSS_TERMS = {
    "fasterrcnn": ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"),
    "retinanet": ("classification", "bbox_regression"),
    "fcos": ("classification", "bbox_regression", "bbox_ctrness"),
    "ssd": ("classification", "bbox_regression"),
}
# the class predictor: replaced for the dataset's classes, the head for freezing strategies
CLASS_HEADS = {
    "fasterrcnn": ("roi_heads.box_predictor",),
    "retinanet": ("head.classification_head.cls_logits",),
    "fcos": ("head.classification_head.cls_logits",),
    "ssd": ("head.classification_head",),
}
# sizes a family resizes to when `data.img_size` is not set (torchvision's defaults)
DEFAULT_SIZES = {"ssdlite320_mobilenet_v3_large": 320, "ssd300_vgg16": 300}


def list_detectors() -> list[str]:
    return [
        *TORCHVISION_DETECTORS,
        *(f"{f}{TIMM_MARK}<timm model with features_only>" for f in TIMM_FAMILIES),
    ]


def detector_family(name: str, source: str = "auto") -> str | None:
    """'fasterrcnn', 'retinanet', 'fcos' or 'ssd' when `name` is a detector, else None."""
    if name in TORCHVISION_DETECTORS and source in ("auto", "torchvision"):
        return TORCHVISION_DETECTORS[name]
    family, mark, encoder = name.partition(TIMM_MARK)
    if mark and family in TIMM_FAMILIES and source in ("auto", "timm") and timm.is_model(encoder):
        return family
    return None


def detector_source(name: str) -> str:
    return "timm" if TIMM_MARK in name else "torchvision"


def fixed_size(name: str) -> int | None:
    """SSD models resize to one fixed square size."""
    return DEFAULT_SIZES.get(name)


def create_detector(
    name: str,
    num_classes: int,
    weights: str = "none",
    backbone_weights: str = "none",
    trainable_backbone_layers: int | None = None,
    img_size: int | None = None,
) -> BuiltModel:
    """`num_classes` counts the background (dataset classes + 1). `weights`: none | hub (the
    detector's COCO weights, class head replaced) | a file or previous RUN_DIR;
    `backbone_weights`: none | hub (ImageNet backbone). `trainable_backbone_layers` counts
    backbone stages from the top that train with pretrained weights (torchvision's meaning);
    the others are frozen and listed in `BuiltModel.frozen`. `img_size` is the longer side
    images are resized to (default: the detector's own min_size/max_size)."""
    family = detector_family(name)
    if family is None:
        raise ValueError(f"unknown detection model '{name}'; allowed: {', '.join(list_detectors())}")
    size = _size_kwargs(name, img_size)
    if TIMM_MARK in name:
        model = _build_timm(name, family, num_classes, backbone_weights == "hub" or weights == "hub", size)
    else:
        model = _build_torchvision(
            name, family, num_classes, weights, backbone_weights, trainable_backbone_layers, size
        )
    head = CLASS_HEADS[family]
    if weights not in ("none", "hub"):
        load_weights(model, read_weights(weights, expect_model=name), head)
    frozen = tuple(n for n, p in model.named_parameters() if not p.requires_grad)
    return BuiltModel(model, name, detector_source(name), head, _resize_rule(model), frozen)


def rebuild_detector(name: str, num_classes: int, img_size: int | None) -> nn.Module:
    """The architecture of a saved detector, without any weights (for model.safetensors)."""
    return create_detector(name, num_classes, "none", "none", None, img_size).module


def _resize_rule(model: nn.Module) -> dict:
    """How the detector's own transform resizes and normalises (for meta.json)."""
    t = model.transform
    return {
        "min_size": int(t.min_size[0]),
        "max_size": int(t.max_size),
        "fixed_size": list(t.fixed_size) if t.fixed_size else None,
        "mean": tuple(float(v) for v in t.image_mean),
        "std": tuple(float(v) for v in t.image_std),
    }


def _size_kwargs(name: str, img_size: int | None) -> dict:
    if name in DEFAULT_SIZES or img_size is None:
        return {}
    return {"min_size": img_size, "max_size": img_size}


# ----------------------------------------------------------------------------- torchvision


def _build_torchvision(
    name: str,
    family: str,
    num_classes: int,
    weights: str,
    backbone_weights: str,
    trainable: int | None,
    size: dict,
) -> nn.Module:
    builder = tvm.get_model_builder(name)
    if trainable is not None:
        size = {**size, "trainable_backbone_layers": trainable}
    try:
        if weights == "hub":
            model = builder(weights="DEFAULT", **size)
            _replace_class_head(model, family, num_classes, builder, size)
            return model
        backbone = "DEFAULT" if backbone_weights == "hub" else None
        return builder(weights=None, weights_backbone=backbone, num_classes=num_classes, **size)
    except (OSError, RuntimeError) as exc:  # no network, no cache, corrupt download
        which = "model.weights" if weights == "hub" else "model.backbone_weights"
        raise WeightsError(f"{which}: cannot load torchvision weights for '{name}' ({exc})") from exc


def _replace_class_head(model: nn.Module, family: str, num_classes: int, builder, size: dict) -> None:
    """A new class predictor for `num_classes`, as in torchvision's fine-tuning tutorial."""
    if family == "fasterrcnn":
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = tvd.faster_rcnn.FastRCNNPredictor(in_features, num_classes)
    elif family in ("retinanet", "fcos"):
        head = model.head.classification_head
        old = head.cls_logits
        head.cls_logits = nn.Conv2d(old.in_channels, head.num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(head.cls_logits.weight, std=0.01)
        nn.init.constant_(head.cls_logits.bias, -math.log((1 - 0.01) / 0.01))
        head.num_classes = num_classes
    else:  # SSD heads are built per feature map: take the new model's head, keep the rest
        size = {k: v for k, v in size.items() if k != "trainable_backbone_layers"}
        fresh = builder(weights=None, weights_backbone=None, num_classes=num_classes, **size)
        model.head.classification_head = fresh.head.classification_head


# ----------------------------------------------------------------------------- timm backbones


def _build_timm(name: str, family: str, num_classes: int, pretrained: bool, size: dict) -> nn.Module:
    # the top levels: Faster R-CNN 4 (strides 4..32 on a CNN) + max-pool level, RetinaNet/FCOS
    # 3 (8..32) + P6/P7; a ViT's are its last blocks
    encoder = name.partition(TIMM_MARK)[2]
    if family == "fasterrcnn":
        backbone = timm_fpn(encoder, pretrained, levels=4, channels=256, p6p7=False)
    else:
        backbone = timm_fpn(encoder, pretrained, levels=3, channels=128, p6p7=True)
    size = size or {"min_size": 800, "max_size": 1333}
    detector = {"fasterrcnn": tvd.FasterRCNN, "retinanet": tvd.RetinaNet, "fcos": tvd.FCOS}[family]
    return detector(backbone, num_classes=num_classes, **size, **timm_normalization(backbone))
