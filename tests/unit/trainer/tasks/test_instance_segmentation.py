"""Instance segmentation without Ray: COCO polygons, COCO RLE and YOLO segmentation labels read
the same objects; bad annotations name the file and the annotation id or line; joint transforms
keep masks on their objects and boxes around the masks; crowd regions stay out of training and
are ignored by the metrics; mask mAP by hand; Mask R-CNN builds by name with the dataset's
classes; the serving answer's RLE is the model's mask; export parity gates on masks; `vft
validate` rejects settings Mask R-CNN cannot use. The 2-worker Ray run, export, serving and eval:
tests/integration/test_instance_segmentation.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.deploy import Thresholds
from trainer.errors import DataError
from trainer.tasks.instance_segmentation.config import InstanceAugment
from trainer.tasks.instance_segmentation.data import InstanceDataset, decode_masks, read_instances
from trainer.tasks.instance_segmentation.export import instance_failures, instance_parity
from trainer.tasks.instance_segmentation.metrics import InstanceMetrics
from trainer.tasks.instance_segmentation.model import CLASS_HEADS, create_instance_model
from trainer.tasks.instance_segmentation.serve import InstanceHandler
from trainer.tasks.instance_segmentation.shapes import shapes_instances
from trainer.tasks.instance_segmentation.task import instance_eval_transform, instance_train_transform

ROOT = Path(__file__).resolve().parents[4]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
# three objects of a 40x30 image: a square, a triangle overlapping it (drawn on top), a pentagon
POLYGONS = [
    [4, 4, 16, 4, 16, 16, 4, 16],
    [12, 10, 26, 10, 19, 24],
    [28, 4, 36, 6, 38, 14, 32, 20, 27, 12],
]


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _painted(folder: Path) -> Path:
    """images/a.png: each polygon's pixels (as COCO rasterises it) in its colour, later ones on top."""
    (folder / "images").mkdir(parents=True)
    pixels = np.zeros((30, 40, 3), np.uint8)
    for polygon, colour in zip(POLYGONS, COLOURS, strict=True):
        pixels[mask_utils.decode(mask_utils.frPyObjects([list(map(float, polygon))], 30, 40))[..., 0] > 0] = (
            colour
        )
    Image.fromarray(pixels).save(folder / "images" / "a.png")
    return folder


def _coco(folder: Path, rle: bool = False, extra: list[dict] | None = None) -> Path:
    anns = []
    for n, polygon in enumerate(POLYGONS):
        seg: object = [list(map(float, polygon))]
        if rle:  # compressed RLE of the same polygon, counts as a string (as CVAT writes it)
            encoded = mask_utils.merge(mask_utils.frPyObjects(seg, 30, 40))
            seg = {"size": encoded["size"], "counts": encoded["counts"].decode()}
        anns.append({"id": 10 + n, "image_id": 1, "category_id": n + 1, "segmentation": seg, "iscrowd": 0})
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": anns + (extra or []),
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(("red", "green", "blue"))],
    }
    (folder / "annotations.json").write_text(json.dumps(doc))
    return folder


def _yolo(folder: Path) -> Path:
    (folder / "labels").mkdir()
    (folder / "classes.txt").write_text("red\ngreen\nblue\n")
    rows = [
        f"{k} " + " ".join(f"{v / (40 if i % 2 == 0 else 30):.6f}" for i, v in enumerate(polygon))
        for k, polygon in enumerate(POLYGONS)
    ]
    (folder / "labels" / "a.txt").write_text("\n".join(rows) + "\n")
    return folder


# ----------------------------------------------------------------------------- data


def test_coco_polygons_coco_rle_and_yolo_polygons_read_the_same_objects(tmp_path):
    polygons = read_instances(_coco(_painted(tmp_path / "p")))
    rle = read_instances(_coco(_painted(tmp_path / "r"), rle=True))
    yolo = read_instances(_yolo(_painted(tmp_path / "y")))
    assert polygons.classes == rle.classes == yolo.classes == ["red", "green", "blue"]
    masks = [decode_masks(s.objects[0], 30, 40) for s in (polygons, rle, yolo)]
    assert masks[0].shape == (3, 30, 40) and masks[0].sum() > 300
    np.testing.assert_array_equal(masks[0], masks[1])
    assert (masks[0] != masks[2]).mean() < 0.01  # YOLO's 6-digit rounding moves a few edge pixels
    for samples in (polygons, rle, yolo):
        assert samples.labels[0].tolist() == [0, 1, 2] and not samples.crowd[0].any()


def test_crowd_regions_are_kept_as_crowd_and_empty_objects_dropped(tmp_path):
    crowd = {"id": 20, "image_id": 1, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": [0, 40 * 30]}}  # fmt: skip
    empty = {"id": 21, "image_id": 1, "category_id": 2, "iscrowd": 0,
             "segmentation": {"size": [30, 40], "counts": [40 * 30]}}  # fmt: skip
    samples = read_instances(_coco(_painted(tmp_path), extra=[crowd, empty]))
    assert samples.crowd[0].tolist() == [False, False, False, True] and samples.dropped == 1
    train = InstanceDataset(samples, instance_eval_transform(), crowd=False)[0][1]
    val = InstanceDataset(samples, instance_eval_transform())[0][1]
    assert len(train["labels"]) == 3 and len(val["labels"]) == 4
    assert val["iscrowd"].tolist() == [0, 0, 0, 1] and int(val["masks"][3].sum()) == 40 * 30


@pytest.mark.parametrize(
    "edit, expect",
    [
        ({"segmentation": [[2, 2, 12, 12, 12, 2, 2, 12]]},
         "annotation 11 (a.png): self-intersecting polygon (edge 0-1 crosses edge 2-3"),
        ({"segmentation": [[2, 2, 8, 8, 14, 14]]}, "annotation 11 (a.png): degenerate polygon (no area)"),
        ({"segmentation": [[2, 2, 50, 2, 20, 20]]},
         "annotation 11 (a.png): polygon point outside the 40x30 image"),
        ({"segmentation": {"size": [20, 20], "counts": [400]}},
         "annotation 11 (a.png): RLE size [20, 20] is not the image's [height, width] [30, 40]"),
        ({"category_id": 9}, "annotation 11: unknown category_id 9"),
    ],
)  # fmt: skip
def test_bad_coco_annotations_name_the_file_and_annotation(tmp_path, edit, expect):
    folder = _coco(_painted(tmp_path))
    doc = json.loads((folder / "annotations.json").read_text())
    doc["annotations"][1].update(edit)
    (folder / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        read_instances(folder)
    assert str(folder / "annotations.json") in str(err.value) and expect in str(err.value)


@pytest.mark.parametrize(
    "line, expect",
    [
        ("5 0.1 0.1 0.3 0.1 0.2 0.3", "labels/a.txt:4: unknown class id 5 (3 classes: 0..2)"),
        ("1 0.1 0.1 0.3 0.3", "labels/a.txt:4: a polygon needs at least 3 points"),
        ("1 0.1 0.1 0.5 0.5 0.5 0.1 0.1 0.5", "labels/a.txt:4: self-intersecting polygon"),
    ],
)
def test_bad_yolo_segmentation_lines_name_the_file_and_line(tmp_path, line, expect):
    folder = _yolo(_painted(tmp_path))
    label = folder / "labels" / "a.txt"
    label.write_text(label.read_text() + line + "\n")
    with pytest.raises(DataError) as err:
        read_instances(folder)
    assert expect in str(err.value)


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("seed", range(4))
def test_joint_transforms_keep_masks_on_their_objects_and_boxes_around_them(tmp_path, seed):
    """After flips, rotation and zoom-out, each object's mask is its colour's pixels (the
    triangle covers part of the square, so the square's visible part is what it owns) and its
    box is the tight box of its mask."""
    folder = tmp_path / "data"
    samples = read_instances(_coco(_painted(folder)))
    # the objects as painted: later ones on top (the COCO polygons overlap)
    owned = decode_masks(samples.objects[0], 30, 40).astype(bool)
    owned[0] &= ~owned[1]
    samples.objects[0] = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in owned]
    aug = InstanceAugment(hflip=0.5, vflip=0.5, rotation=30, zoom_out=1.5)
    torch.manual_seed(seed)
    dataset = InstanceDataset(samples, instance_train_transform(aug), crowd=False)
    for _ in range(3):
        x, target = dataset[0]
        assert x.dtype == torch.float32 and x.shape[0] == 3
        assert target["masks"].shape[1:] == x.shape[1:] and len(target["masks"]) == len(target["boxes"])
        for mask, box, label in zip(target["masks"], target["boxes"], target["labels"], strict=True):
            colour = torch.tensor(COLOURS[int(label) - 1], dtype=torch.float32).view(3, 1, 1) / 255
            pure = (x - colour).abs().sum(0) < 0.05  # the object's unblended pixels
            assert pure.sum() > 0 and torch.equal(mask.bool(), pure)  # nearest-neighbour rotation
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert torch.equal(box, tight)


def test_generated_shapes_touch_and_overlap_with_disjoint_visible_masks(tmp_path):
    shapes_instances(tmp_path, n_train=30, n_val=2, size=64, seed=0)
    samples = read_instances(tmp_path / "train")
    overlapping = 0
    for objects in samples.objects:
        masks = decode_masks(objects, 64, 64).astype(bool)
        assert (masks.sum(0) <= 1).all()  # each pixel belongs to one object at most
        boxes = [mask_utils.toBbox(o) for o in objects]
        overlapping += any(
            min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0])
            and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])
            for i, a in enumerate(boxes)
            for b in boxes[i + 1 :]
        )
    assert overlapping >= 5  # boxes overlap: instances, not a semantic map, tell the objects apart


# ----------------------------------------------------------------------------- metrics


def _truth(masks: torch.Tensor, labels: list[int], crowd: list[int]) -> dict:
    ys = [torch.nonzero(m, as_tuple=True) for m in masks]
    boxes = torch.tensor([[x.min(), y.min(), x.max() + 1, y.max() + 1] for y, x in ys], dtype=torch.float32)
    return {"masks": masks, "boxes": boxes, "labels": torch.tensor(labels), "iscrowd": torch.tensor(crowd)}


def test_mask_map_by_hand_and_crowd_regions_ignored():
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[0, 2:12, 2:12] = masks[1, 16:30, 16:30] = masks[2, 0:16, 16:32] = True
    truth = _truth(masks, [1, 2, 1], [0, 0, 1])  # the third is a crowd region
    exact = {"boxes": truth["boxes"], "labels": truth["labels"], "scores": torch.tensor([0.9, 0.8, 0.7]),
             "masks": masks[:, None].float()}  # fmt: skip
    metrics = InstanceMetrics(2)
    metrics.update([exact], [truth])
    scalars, extra = metrics.compute()
    assert scalars["val/mask_map"] == pytest.approx(1.0) and scalars["val/box_map50"] == pytest.approx(1.0)
    assert extra["per_class_ap"] == [pytest.approx(1.0), pytest.approx(1.0)]
    # the first object's mask only half right: IoU 0.5, a hit at AP50, a miss above 0.5
    half = exact["masks"].clone()
    half[0, 0, 2:12, 7:12] = 0
    metrics.reset()
    metrics.update([{**exact, "masks": half}], [truth])
    scalars, _ = metrics.compute()
    assert scalars["val/mask_map50"] == pytest.approx(1.0) and scalars["val/mask_map75"] < 0.8
    assert scalars["val/box_map"] == pytest.approx(1.0)  # boxes unchanged


# ----------------------------------------------------------------------------- models


def test_mask_rcnn_over_a_timm_encoder_returns_masks_at_the_images_size():
    built = create_instance_model("maskrcnn_timm_resnet10t", 4, img_size=64, proposals=50, rois_per_image=16)
    model = built.module
    assert built.head == CLASS_HEADS and built.source == "timm"
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert built.data_defaults["min_size"] == built.data_defaults["max_size"] == 64
    images = [torch.rand(3, 48, 80), torch.rand(3, 64, 40)]
    targets = []
    for x in images:
        masks = torch.zeros(1, *x.shape[1:], dtype=torch.bool)
        masks[0, 5:20, 5:20] = True
        targets.append(_truth(masks, [2], [0]))
    model.train()
    losses = model(images, targets)
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for out, x in zip(outputs, images, strict=True):
        assert out["masks"].shape[1:] == (1, *x.shape[1:])


def test_coco_mask_rcnn_weights_load_from_an_offline_cache_with_new_predictors(tmp_path, monkeypatch):
    """`model.weights: hub` reads torchvision's COCO Mask R-CNN from the torch hub cache (a file
    the test writes under the expected name; no network), replaces the box and mask predictors
    for the dataset's classes and freezes the backbone below `trainable_backbone_layers`."""
    import torchvision.models as tvm
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    url = tvm.get_model_weights("maskrcnn_resnet50_fpn").DEFAULT.url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    coco = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        coco.roi_heads.mask_head[0][0].weight.fill_(0.125)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(coco.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)

    built = create_instance_model(
        "maskrcnn_resnet50_fpn", 4, weights="hub", trainable_backbone_layers=2, img_size=128
    )
    model = built.module
    assert torch.all(model.roi_heads.mask_head[0][0].weight == 0.125)  # COCO's mask head kept
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert model.transform.min_size == (128,)
    assert built.frozen and all(n.startswith("backbone.body.") for n in built.frozen)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in built.frozen)
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.requires_grad


@pytest.mark.parametrize(
    "override, expect",
    [
        ("model.name=fcos_resnet50_fpn", "is not an instance segmentation model"),
        ("loss.weights={loss_ctrness: 1.0}", "['loss_ctrness'] not among Mask R-CNN's terms"),
        ("model.trainable_backbone_layers=2", "torchvision models only"),
    ],
)
def test_validate_rejects_what_mask_rcnn_cannot_use(tmp_path, override, expect):
    result = vft("validate", ROOT / "configs/shapes_instances.yaml", f"data.train={tmp_path}",
                 f"data.val={tmp_path}", override)  # fmt: skip
    assert result.exit_code == 2
    assert expect in " ".join(result.output.split())


# ----------------------------------------------------------------------------- export and serving


def _outputs(masks: np.ndarray) -> tuple[np.ndarray, ...]:
    n = len(masks)
    boxes = np.tile(np.array([[1.0, 2.0, 10.0, 12.0]], np.float32), (n, 1))
    return boxes, np.arange(1, n + 1), np.linspace(0.9, 0.6, n).astype(np.float32), masks


def test_export_parity_gates_on_the_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 20, 30)).astype(np.float32)
    same = instance_parity([[_outputs(masks)]], [[_outputs(masks + 1e-5)]])
    assert same["count_agreement"] == 1.0 and same["min_mask_iou"] == pytest.approx(1.0)
    flipped = masks.copy()
    flipped[1] = 1 - flipped[1]  # one object's mask inverted: its IoU with torch is 0
    result = {**instance_parity([[_outputs(masks)]], [[_outputs(flipped)]]), "metric": "val/mask_map",
              "metric_delta": 0.0}  # fmt: skip
    assert result["min_mask_iou"] == 0.0
    assert (
        instance_failures({**same, "metric": "val/mask_map", "metric_delta": 0.0}, True, Thresholds()) == []
    )
    assert "mask IoU with torch is 0.0000" in " ".join(instance_failures(result, True, Thresholds()))


def test_serving_answers_each_object_with_its_rle_mask_box_and_area():
    meta = {"classes": ["red", "green"], "preprocessing": {"min_size": 64, "max_size": 64}}
    handler = InstanceHandler(meta, 0.5, instance_eval_transform())
    pixels, size = handler.prepare(Image.new("RGB", (200, 4)))  # padded so it keeps pixels across
    assert size == (200, 4) and pixels.shape[1] > 4
    masks = np.zeros((2, pixels.shape[1], 200), np.float32)
    masks[0, 1:3, 10:50] = 0.9
    masks[0, 6:, :] = 0.9  # on the padding: not the image
    masks[1, :, :] = 0.8
    boxes = np.array([[10, 1, 50, 3], [0, 0, 200, 30]], np.float32)
    body = handler.answer((boxes, np.array([2, 1]), np.array([0.9, 0.4], np.float32), masks), size)
    assert (body["width"], body["height"]) == (200, 4) and len(body["instances"]) == 1
    instance = body["instances"][0]
    assert instance["label"] == "green" and instance["index"] == 1 and instance["box"] == [10, 1, 50, 3]
    rle = {"size": instance["mask"]["size"], "counts": instance["mask"]["counts"].encode()}
    decoded = mask_utils.decode(rle)
    assert decoded.shape == (4, 200) and instance["area"] == int(decoded.sum()) == 2 * 40
    assert decoded[1:3, 10:50].all()


def test_the_prediction_plot_draws_images_with_and_without_objects(tmp_path):
    """An untrained model finds nothing above the plot's score: the plot is drawn all the same."""
    from trainer.tasks.instance_segmentation.plots import instance_predictions

    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 2:12, 2:12] = masks[1, 16:30, 16:30] = True
    truth = {k: v for k, v in _truth(masks, [0, 1], [0, 0]).items() if k != "iscrowd"}
    found = {**truth, "scores": torch.tensor([0.9, 0.3])}
    nothing = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
               "scores": torch.zeros(0), "masks": torch.zeros(0, 32, 32, dtype=torch.bool)}  # fmt: skip
    empty_truth = {"masks": torch.zeros(0, 32, 32, dtype=torch.bool), "boxes": torch.zeros(0, 4)}
    path = tmp_path / "predictions.png"
    instance_predictions(
        [torch.rand(3, 32, 32)] * 2, [found, nothing], [truth, empty_truth], ["a", "b"], path
    )
    assert path.stat().st_size > 1000


def test_an_image_of_another_size_than_its_annotations_is_an_error_naming_it(tmp_path):
    folder = _coco(_painted(tmp_path))
    Image.new("RGB", (50, 30)).save(folder / "images" / "a.png")  # the JSON says 40x30
    with pytest.raises(DataError) as err:
        InstanceDataset(read_instances(folder), instance_eval_transform())[0]
    assert "a.png: the image is 50x30, its annotations' masks 40x30" in str(err.value)
