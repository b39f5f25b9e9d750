"""Instance segmentation models by name: torchvision's Mask R-CNN (`maskrcnn_resnet50_fpn`,
`maskrcnn_resnet50_fpn_v2`) and `maskrcnn_timm_<encoder>`: Mask R-CNN over an FPN on any timm
encoder (`features_only`).

Labels follow torchvision: 0 is background, class k of the dataset is label k + 1. Images go in
as a list of float RGB tensors in [0, 1] of any size; the model resizes and normalises them
itself and returns boxes, labels, scores and (N, 1, H, W) mask probabilities at the input's size.
"""

from __future__ import annotations

import timm
import torchvision.models as tvm
from torch import nn
from torchvision.models import detection as tvd

from trainer.components.models import BuiltModel, load_weights, read_weights
from trainer.components.timm_fpn import timm_fpn, timm_normalization
from trainer.errors import WeightsError

TORCHVISION_MODELS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
TIMM_MARK = "maskrcnn_timm_"
LOSS_TERMS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
# the class predictors: replaced for the dataset's classes, the head for freezing strategies
CLASS_HEADS = ("roi_heads.box_predictor", "roi_heads.mask_predictor")


def list_instance_models() -> list[str]:
    return [*TORCHVISION_MODELS, f"{TIMM_MARK}<timm model with features_only>"]


def model_source(name: str, source: str = "auto") -> str | None:
    """'torchvision' or 'timm' when `name` is an instance segmentation model, else None."""
    if name in TORCHVISION_MODELS and source in ("auto", "torchvision"):
        return "torchvision"
    encoder = name.removeprefix(TIMM_MARK)
    if name.startswith(TIMM_MARK) and source in ("auto", "timm") and timm.is_model(encoder):
        return "timm"
    return None


def create_instance_model(
    name: str,
    num_classes: int,
    weights: str = "none",
    backbone_weights: str = "none",
    trainable_backbone_layers: int | None = None,
    img_size: int | None = None,
    proposals: int = 2000,
    rois_per_image: int = 512,
    detections_per_image: int = 100,
) -> BuiltModel:
    """`num_classes` counts the background. `weights`: none | hub (COCO Mask R-CNN weights, both
    class predictors replaced) | a file or previous RUN_DIR; `backbone_weights`: none | hub.
    `trainable_backbone_layers`: torchvision's meaning (stages from the top that train);
    `img_size`: the longer side images are resized to (default torchvision's 800/1333).
    `proposals` and `rois_per_image` (torchvision's rpn_post_nms_top_n_train and
    box_batch_size_per_image) set what training samples; small images with few objects train
    several times faster with fewer. `detections_per_image` (box_detections_per_img) caps what
    inference returns: the mask head runs once per detection."""
    source = model_source(name)
    if source is None:
        raise ValueError(
            f"unknown instance segmentation model '{name}'; allowed: {', '.join(list_instance_models())}"
        )
    options = {"min_size": img_size, "max_size": img_size} if img_size else {}
    options |= {
        "rpn_post_nms_top_n_train": proposals,
        "box_batch_size_per_image": rois_per_image,
        "box_detections_per_img": detections_per_image,
    }
    if source == "timm":
        pretrained = "hub" in (weights, backbone_weights)
        backbone = timm_fpn(name.removeprefix(TIMM_MARK), pretrained, levels=4, channels=256, p6p7=False)
        model = tvd.MaskRCNN(backbone, num_classes=num_classes, **options, **timm_normalization(backbone))
    else:
        model = _build_torchvision(
            name, num_classes, weights, backbone_weights, trainable_backbone_layers, options
        )
    if weights not in ("none", "hub"):
        load_weights(model, read_weights(weights, expect_model=name), CLASS_HEADS)
    frozen = tuple(n for n, p in model.named_parameters() if not p.requires_grad)
    t = model.transform
    resize = {
        "min_size": int(t.min_size[0]),
        "max_size": int(t.max_size),
        "mean": tuple(float(v) for v in t.image_mean),
        "std": tuple(float(v) for v in t.image_std),
    }
    return BuiltModel(model, name, source, CLASS_HEADS, resize, frozen)


def rebuild_instance_model(
    name: str, num_classes: int, img_size: int | None, detections_per_image: int = 100
) -> nn.Module:
    """The architecture of a saved model, without any weights (for model.safetensors)."""
    built = create_instance_model(
        name, num_classes, img_size=img_size, detections_per_image=detections_per_image
    )
    return built.module


def _build_torchvision(
    name: str, num_classes: int, weights: str, backbone_weights: str, trainable: int | None, options: dict
) -> nn.Module:
    builder = tvm.get_model_builder(name)
    if trainable is not None:
        options = {**options, "trainable_backbone_layers": trainable}
    try:
        if weights == "hub":  # torchvision's fine-tuning tutorial: new box and mask predictors
            model = builder(weights="DEFAULT", **options)
            heads = model.roi_heads
            heads.box_predictor = tvd.faster_rcnn.FastRCNNPredictor(
                heads.box_predictor.cls_score.in_features, num_classes
            )
            heads.mask_predictor = tvd.mask_rcnn.MaskRCNNPredictor(
                heads.mask_predictor.conv5_mask.in_channels, 256, num_classes
            )
            return model
        backbone = "DEFAULT" if backbone_weights == "hub" else None
        return builder(weights=None, weights_backbone=backbone, num_classes=num_classes, **options)
    except (OSError, RuntimeError) as exc:  # no network, no cache, corrupt download
        which = "model.weights" if weights == "hub" else "model.backbone_weights"
        raise WeightsError(f"{which}: cannot load torchvision weights for '{name}' ({exc})") from exc
