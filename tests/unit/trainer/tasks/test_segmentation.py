"""Segmentation without Ray: joint transforms keep masks aligned, metrics by hand, losses leave
the ignore index out, torchvision segmenters get a head per class count, and `vft validate`
rejects settings segmentation cannot use. Bad annotations through `vft train` and the 2-worker
Ray run: tests/integration/test_segmentation_train.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.coco import annotation_mask
from trainer.components.preprocess import Preprocessing, eval_transform, train_transform
from trainer.config import CropAugmentConfig, load_config
from trainer.engine.assemble import setup
from trainer.errors import DataError
from trainer.tasks.base import get_task
from trainer.tasks.segmentation.data import (
    read_classes,
    read_coco_masks,
    read_mask,
    read_maskfolder,
    read_masks,
)
from trainer.tasks.segmentation.metrics import SegmentationMetrics
from trainer.tasks.segmentation.shapes import shapes_segmentation

ROOT = Path(__file__).resolve().parents[4]


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("seed", range(5))
def test_joint_transforms_keep_the_mask_aligned_with_the_image(seed):
    """The image's pixels encode the mask (value 40 x class); after the random crop, scale and
    flip (nearest for both) and the eval resize + crop, decoding the image gives the mask."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 6, (37, 53)).astype(np.uint8)
    image = Image.fromarray(np.repeat((classes * 40)[..., None], 3, axis=2))
    mask = tv_tensors.Mask(torch.from_numpy(classes))
    prep = Preprocessing(24, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest", crop_pct=0.8)
    torch.manual_seed(seed)
    aug = CropAugmentConfig(scale=(0.3, 1.0), hflip=0.5, vflip=0.5)
    for transform in (train_transform(prep, aug, mask_fill=255), eval_transform(prep)):
        x, y = transform(image, mask)
        assert x.shape[-2:] == y.shape == (24, 24) and isinstance(y, tv_tensors.Mask)
        decoded = torch.round(x[0] * 255 / 40).to(torch.uint8)
        assert torch.equal(decoded, y.as_subclass(torch.Tensor))


def test_rotation_fills_the_mask_with_the_ignore_index():
    mask = tv_tensors.Mask(torch.ones(32, 32, dtype=torch.uint8))
    image = Image.new("RGB", (32, 32), (255, 255, 255))
    prep = Preprocessing(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", crop_pct=1.0)
    aug = CropAugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, rotation=45)
    torch.manual_seed(3)
    _, y = train_transform(prep, aug, mask_fill=255)(image, mask)
    assert set(y.unique().tolist()) <= {1, 255} and (y == 255).any()


# ----------------------------------------------------------------------------- metrics


def test_metrics_match_a_hand_computed_example():
    # truth and prediction over 3 classes; 255 is ignored
    truth = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 1]]])
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    metrics = SegmentationMetrics(3, ignore_index=255)
    metrics.update(logits, truth, torch.tensor(0.5))
    scalars, tables = metrics.compute("val/")
    # 7 counted pixels (the 255 one is left out, whatever was predicted there)
    # class 0: TP 1, FP 1, FN 1 -> IoU 1/3, Dice 2/4
    # class 1: TP 3, FP 1, FN 0 -> IoU 3/4, Dice 6/7
    # class 2: TP 1, FP 0, FN 1 -> IoU 1/2, Dice 2/3
    assert tables["per_class_iou"] == pytest.approx([1 / 3, 3 / 4, 1 / 2])
    assert tables["per_class_dice"] == pytest.approx([1 / 2, 6 / 7, 2 / 3])
    assert scalars["val/miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert scalars["val/dice"] == pytest.approx((1 / 2 + 6 / 7 + 2 / 3) / 3)
    assert scalars["val/pixel_acc"] == pytest.approx(5 / 7)
    assert scalars["val/loss"] == pytest.approx(0.5)
    assert tables["confusion"] == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]


def test_losses_ignore_the_ignore_index():
    from trainer.components.losses import create_loss

    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    ignored = target.clone()
    ignored[:, 0] = 255
    for name in ("cross_entropy", "dice", "ce_dice"):
        loss = create_loss(name, False, ignore_index=255)
        changed = logits.clone()
        changed[:, :, 0] = torch.randn(2, 3, 4) * 10  # only ignored pixels change
        assert float(loss(logits, ignored)) == pytest.approx(float(loss(changed, ignored)), rel=1e-5)
    binary = create_loss("bce_dice", False, ignore_index=255)
    assert float(binary(logits[:, :2], (target % 2))) > 0


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "name, aux", [("lraspp_mobilenet_v3_large", False), ("deeplabv3_mobilenet_v3_large", True)]
)
def test_torchvision_segmenters_get_a_head_per_class_count(name, aux):
    from trainer.tasks.segmentation.model import create_segmenter

    built = create_segmenter(name, 4, aux_loss=aux)
    with torch.no_grad():
        out = built.module.eval()(torch.randn(1, 3, 48, 48))
    assert out["out"].shape == (1, 4, 48, 48) and ("aux" in out) == aux
    assert built.head and all(h.startswith(("classifier", "aux_classifier")) for h in built.head)


# ----------------------------------------------------------------------------- config


def _small_maskfolder(root: Path) -> Path:
    shapes_segmentation(root, n_train=6, n_val=3, size=32, seed=0)
    return root


def test_config_rejects_settings_segmentation_cannot_use(tmp_path):
    data = _small_maskfolder(tmp_path / "data")
    for override, field in [
        ("loss.name=focal", "loss.name"),
        ("model.name=resnet18", "model.name"),
        ("data.augment.mixup_alpha=0.2", "data.augment.mixup_alpha"),
        ("model.aux_loss=true", "model.aux_loss"),
    ]:
        paths = [f"data.train={data}/train", f"data.val={data}/val"]
        result = vft("validate", ROOT / "configs/shapes_segmentation.yaml", *paths, override)
        assert result.exit_code == 2 and field in result.output, (override, result.output)


# ----------------------------------------------------------------------------- COCO files


def test_a_coco_file_reads_as_the_same_class_masks_as_its_mask_folder(tmp_path):
    """The shapes mask folder re-annotated as COCO (one RLE per class and image, beside
    images/): the drawn masks equal the PNG masks, classes are background + the categories, and
    the task reads it by format detection and trains on it (a batch through the loader)."""
    shapes_segmentation(tmp_path / "seg", n_train=6, n_val=2, size=32, seed=1)
    root = tmp_path / "seg" / "train"
    names = (root / "classes.txt").read_text().split()
    images, annotations = [], []
    for image_id, png in enumerate(sorted((root / "images").glob("*.png")), start=1):
        mask = np.asarray(Image.open(root / "masks" / png.name))
        images.append({"id": image_id, "file_name": png.name, "width": 32, "height": 32})
        for value in sorted(set(np.unique(mask)) - {0}):
            rle = mask_utils.encode(np.asfortranarray((mask == value).astype(np.uint8)))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(value), "iscrowd": 0}
                | {"segmentation": segmentation}
            )
    categories = [{"id": k, "name": name} for k, name in enumerate(names) if k]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "coco.json").write_text(json.dumps(doc))

    folder, coco = read_maskfolder(root), read_coco_masks(root / "coco.json")
    assert coco.images == folder.images and coco.max_index == folder.max_index
    assert read_classes(coco) == names
    for i in range(len(folder)):
        assert np.array_equal(read_mask(coco.mask_source(i)), read_mask(folder.mask_source(i)))

    overrides = [
        f"data.train={root / 'coco.json'}",
        "data.val=null",
        "data.format=auto",
        "data.num_workers=0",
    ]
    cfg = load_config(ROOT / "configs/shapes_segmentation.yaml", overrides)
    split = get_task("segmentation").read_data(cfg)
    assert split.classes == names and len(split.train) + len(split.val) == 6
    job = setup(cfg, rank=0, world=1, device=torch.device("cpu"))
    images_batch, masks_batch, _ = next(iter(job.train_loader))
    assert images_batch.shape[1:] == (3, 64, 64) and masks_batch.shape[1:] == (64, 64)  # data.img_size
    assert set(masks_batch.unique().tolist()) <= set(range(len(names))) | {255}


def write_yolo_seg(root: Path, lines: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (40, 20)).save(root / "images" / "a.png")
    Image.new("RGB", (40, 20)).save(root / "images" / "b.png")  # no label file: background only
    (root / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("names: {0: ant, 1: cat}\n")
    return root


def test_yolo_segmentation_labels_draw_class_masks_as_coco_polygons_do(tmp_path):
    """Normalised polygons in pixels of a 40x20 image: the same pixels as the COCO polygon,
    class k drawn as k + 1 (background 0), the smaller object on top, found by `auto`."""
    big = "0 0.1 0.1 0.9 0.1 0.9 0.9 0.1 0.9"  # ant: 4..36 x 2..18
    small = "1 0.25 0.25 0.5 0.25 0.5 0.75"  # cat: a triangle inside it
    samples = read_masks(str(write_yolo_seg(tmp_path / "y", [small, big])))
    assert read_classes(samples) == ["background", "ant", "cat"] and samples.max_index == [2, 0]
    drawn = read_mask(samples.mask_source(0))
    ant = annotation_mask({"segmentation": [[4, 2, 36, 2, 36, 18, 4, 18]]}, 40, 20, "ant")
    cat = annotation_mask({"segmentation": [[10, 5, 20, 5, 20, 15]]}, 40, 20, "cat")
    assert np.array_equal(drawn == 2, cat) and np.array_equal(drawn == 1, ant & ~cat)
    assert not read_mask(samples.mask_source(1)).any()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2 0.1 0.1 0.5 0.1 0.5 0.5", "unknown class id 2"),
        ("0 0.1 0.1 0.5 0.1", "at least 3 points"),
        ("0 0.1 0.1 0.5 0.1 1.5 0.5", r"normalised to \[0, 1\]"),
        ("0 0.1 0.1 0.2 0.2 0.3 0.3", "degenerate polygon"),
        ("ant 0.1 0.1 0.5 0.1 0.5 0.5", "expected 'class x1 y1 x2 y2 ...'"),
    ],
)
def test_a_bad_yolo_segmentation_line_is_an_error_naming_file_and_line(tmp_path, line, message):
    root = write_yolo_seg(tmp_path / "y", ["1 0.2 0.2 0.6 0.2 0.6 0.6", line])
    with pytest.raises(DataError, match=rf"labels/a.txt:2: .*{message}"):
        read_masks(str(root), "yolo")
