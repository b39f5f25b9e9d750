"""Detection without Ray: COCO and YOLO data read the same boxes, joint transforms keep boxes on
their objects, metrics by hand, bad YOLO labels name the file and line, torchvision's detector
families build with replaced heads (and COCO weights from an offline cache), and `vft validate`
rejects settings detection cannot use. Bad COCO annotations through `vft train` and the 2-worker
Ray run: tests/integration/test_detection_train.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from trainer.cli import app
from trainer.components.finetune import apply_trainable, param_layout, trainable_names
from trainer.tasks.detection.config import DetectionAugment
from trainer.tasks.detection.data import BoxDataset, read_coco, read_detection, read_yolo
from trainer.tasks.detection.metrics import DetectionMetrics, match_boxes
from trainer.tasks.detection.model import LOSS_TERMS, create_detector
from trainer.tasks.detection.task import detection_eval_transform, detection_train_transform

ROOT = Path(__file__).resolve().parents[4]


def vft(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _copy_coco(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_annotations(root: Path, split: str, edit) -> None:
    file = root / split / "annotations.json"
    doc = json.loads(file.read_text())
    edit(doc)
    file.write_text(json.dumps(doc))


def _to_yolo(coco: Path, out: Path) -> Path:
    """The same dataset as YOLO txt labels (class cx cy w h, normalised)."""
    doc = json.loads((coco / "annotations.json").read_text())
    (out / "labels").mkdir(parents=True)
    (out / "images").symlink_to(coco / "images")
    (out / "classes.txt").write_text("\n".join(c["name"] for c in doc["categories"]) + "\n")
    images = {img["id"]: img for img in doc["images"]}
    lines: dict[str, list[str]] = {img["file_name"]: [] for img in doc["images"]}
    for ann in doc["annotations"]:
        img = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        W, H = img["width"], img["height"]
        row = f"{ann['category_id'] - 1} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}"
        lines[img["file_name"]].append(row)
    for name, rows in lines.items():
        (out / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(rows) + "\n")
    return out


# ----------------------------------------------------------------------------- data


def test_coco_and_yolo_read_the_same_boxes(small_coco, tmp_path):
    coco = read_detection(small_coco / "train")
    yolo = read_detection(_to_yolo(small_coco / "train", tmp_path / "yolo"))
    assert coco.classes == yolo.classes == ["circle", "square", "triangle", "star", "cross"]
    assert [Path(p).name for p in coco.images] == [Path(p).name for p in yolo.images]
    assert sum(len(b) for b in coco.boxes) > len(coco)  # several objects per image on average
    for a, b, la, lb in zip(coco.boxes, yolo.boxes, coco.labels, yolo.labels, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
        np.testing.assert_array_equal(la, lb)


def test_crowd_and_degenerate_boxes_are_left_out(small_coco, tmp_path):
    data = _copy_coco(small_coco, tmp_path / "data")

    def edit(doc):
        doc["annotations"][0]["iscrowd"] = 1
        doc["annotations"][1]["bbox"][2] = 0.0  # no width

    _edit_annotations(data, "train", edit)
    before, after = read_coco(small_coco / "train"), read_coco(data / "train")
    assert sum(map(len, after.boxes)) == sum(map(len, before.boxes)) - 2
    assert after.dropped == 1


def test_boxes_within_a_pixel_of_the_border_are_clamped(tmp_path):
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    doc = {
        "images": [{"id": 7, "file_name": "a.png", "width": 20, "height": 10}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [-0.5, 2, 20.4, 8.6]}],
        "categories": [{"id": 3, "name": "thing"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    samples = read_coco(tmp_path)
    np.testing.assert_allclose(samples.boxes[0], [[0, 2, 19.9, 10]], atol=1e-5)
    assert samples.labels[0].tolist() == [0] and samples.classes == ["thing"]


@pytest.mark.parametrize(
    "line, expect",
    [
        ("7 0.5 0.5 0.2 0.2", "labels/00001.txt:2: unknown class id 7 (5 classes: 0..4)"),
        (
            "1 0.9 0.5 0.4 0.2",
            "labels/00001.txt:2: box [33.6, 19.2, 52.8, 28.8] (x1, y1, x2, y2) lies outside",
        ),
        ("1 0.5 0.5", "labels/00001.txt:2: expected 'class cx cy w h'"),
    ],
)
def test_bad_yolo_labels_name_the_file_and_line(small_coco, tmp_path, line, expect):
    from trainer.errors import DataError

    yolo = _to_yolo(small_coco / "train", tmp_path / "yolo")
    label = yolo / "labels" / "00001.txt"
    label.write_text(label.read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(DataError) as err:
        read_yolo(yolo)
    assert expect in str(err.value)


# ----------------------------------------------------------------------------- transforms


def _painted(rng: np.random.Generator, size=(60, 80)):
    """An image with rectangles in distinct pure colours and their boxes (x1, y1, x2, y2)."""
    height, width = size
    image = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    boxes = []
    for colour in colours:
        x1, y1 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x2, y2 = x1 + int(rng.integers(8, 20)), y1 + int(rng.integers(8, 20))
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)  # PIL's x2/y2 are inclusive
        boxes.append([x1, y1, x2, y2])
    return image, np.array(boxes, np.float32), colours


@pytest.mark.parametrize("seed", range(6))
def test_joint_transforms_keep_boxes_on_their_objects(seed, tmp_path):
    """After flips, zoom-out and IoU crops, each surviving box is the tight box of its colour's
    visible pixels (a box can be cut by the crop, then it is clamped to the image)."""
    rng = np.random.default_rng(seed)
    image, boxes, colours = _painted(rng)
    image.save(tmp_path / "img.png")
    from trainer.tasks.detection.data import BoxSamples

    # drawn later over earlier ones: only non-overlapping draws give exact tight boxes
    samples = BoxSamples([str(tmp_path / "img.png")], [boxes], [np.arange(3)], ["r", "g", "b"])
    aug = DetectionAugment(hflip=0.5, vflip=0.5, zoom_out=2.0, iou_crop=True)
    torch.manual_seed(seed)
    for transform in (detection_train_transform(aug), detection_eval_transform()):
        for _ in range(4):
            x, target = BoxDataset(samples, transform)[0]
            assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
            for box, label in zip(target["boxes"], target["labels"], strict=True):
                colour = torch.tensor(colours[int(label) - 1], dtype=torch.float32).view(3, 1, 1) / 255
                visible = (x - colour).abs().sum(0) < 0.05
                ys, xs = torch.nonzero(visible, as_tuple=True)
                if not _overlaps_another(boxes, int(label) - 1):
                    tight = torch.tensor(
                        [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32
                    )
                    assert torch.allclose(box, tight, atol=1.01), (box, tight)
                assert box[2] > box[0] and box[3] > box[1]


def test_cached_images_give_the_same_boxes_and_pixels(small_coco, tmp_path):
    """`data.cache: ram` keeps detection images at full size: boxes and pixels as from disk."""
    import shutil

    data = tmp_path / "coco"
    shutil.copytree(small_coco, data)
    dataset = BoxDataset(read_detection(str(data / "train")), detection_eval_transform())
    expected = [dataset[i] for i in range(3)]
    dataset.cache_images([0, 1, 2], threads=2)
    images = sorted(data.glob("train/**/*.png"))
    for image in images:
        image.unlink()
    assert len(images) == 12
    for i, (x, target) in enumerate(expected):
        y, cached = dataset[i]
        assert torch.equal(x, y) and torch.equal(target["boxes"], cached["boxes"])


def _overlaps_another(boxes: np.ndarray, i: int) -> bool:
    a = boxes[i]
    return any(
        j != i and min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
        for j, b in enumerate(boxes)
    )


def test_degenerate_boxes_are_dropped_with_their_labels():
    from torchvision import tv_tensors

    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor([[2.0, 2, 8, 8], [25, 5, 30, 9], [4, 4, 4, 10]]), format="XYXY", canvas_size=(20, 20)
        ),
        "labels": torch.tensor([1, 2, 3]),
    }
    _, out = detection_eval_transform()(image, target)  # eval: no sanitising, the reader did it
    assert len(out["boxes"]) == 3
    _, out = detection_train_transform(DetectionAugment(hflip=0.0))(image, target)
    assert out["labels"].tolist() == [1] and out["boxes"].tolist() == [[2.0, 2, 8, 8]]


# ----------------------------------------------------------------------------- metrics


def _pred(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
            "scores": torch.tensor(scores)}  # fmt: skip


def _truth(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_metrics_match_a_hand_computed_example():
    """Image 1: class 1 found exactly (AP 1 at every IoU). Image 2: class 2 found at IoU 0.62
    (62 of 100 pixels), so it counts at IoU 0.50, 0.55, 0.60 of COCO's ten thresholds: AP 0.3.
    mAP = (1 + 0.3) / 2, mAP50 = 1, mAP75 = (1 + 0) / 2; matched IoU = (1 + 0.62) / 2. A
    low-score and a wrong-class prediction change neither AP nor matched IoU."""
    metrics = DetectionMetrics(num_classes=2)
    preds = [
        _pred([[0, 0, 10, 10], [30, 30, 40, 40]], [1, 2], [0.9, 0.2]),
        _pred([[0, 0, 10, 6.2]], [2], [0.8]),
    ]
    truths = [_truth([[0, 0, 10, 10]], [1]), _truth([[0, 0, 10, 10]], [2])]
    metrics.update(preds, truths)
    scalars, tables = metrics.compute()
    assert scalars["val/map"] == pytest.approx(0.65, abs=1e-6)
    assert scalars["val/map50"] == pytest.approx(1.0)
    assert scalars["val/map75"] == pytest.approx(0.5)
    assert scalars["val/box_iou"] == pytest.approx(0.81)
    assert tables["per_class_ap"] == pytest.approx([1.0, 0.3])


def test_matching_is_one_to_one_and_class_aware():
    truth = _truth([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
    pred = _pred([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]], [1, 1, 2], [0.9, 0.8, 0.95])
    ious = match_boxes(pred, truth)
    assert ious.tolist() == [1.0]  # the duplicate finds no free truth box; the class-2 box none


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
             "ssdlite320_mobilenet_v3_large"],
)  # fmt: skip
def test_torchvision_detectors_train_and_predict_with_the_dataset_classes(name):
    torch.manual_seed(0)
    built = create_detector(name, num_classes=4, img_size=None if name.startswith("ssd") else 64)
    model = built.module
    images = [torch.rand(3, 48, 64), torch.rand(3, 64, 40)]
    targets = [_truth([[4, 4, 30, 30]], [3]), _truth([[10, 12, 20, 40], [1, 1, 9, 9]], [1, 2])]
    model.train()
    losses = model(images, targets)
    family = name.split("_")[0].removesuffix("320").replace("ssdlite", "ssd")
    assert set(losses) == set(LOSS_TERMS[family])
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
    labels = torch.cat([o["labels"] for o in out])
    assert bool((labels <= 3).all())  # label 3 in the targets: the loss needs a 4-class head
    assert float(torch.cat([out[1]["boxes"][:, 2], torch.zeros(1)]).max()) <= 40 + 1e-3  # input pixels
    assert built.head and all(any(n.startswith(h) for n, _ in model.named_parameters()) for h in built.head)


@pytest.mark.parametrize(
    ("name", "levels"),
    [
        ("fcos_timm_vit_tiny_patch16_224", [192] * 3),
        ("fasterrcnn_timm_swin_tiny_patch4_window7_224", [96, 192, 384, 768]),
    ],
)
def test_size_dependent_encoders_detect_on_images_of_any_size(name, levels):
    """ViT and Swin encoders see the detector's resized, padded batches of any size: built with
    timm's dynamic sizes (position embeddings resampled per input, windows padded), the top
    levels (a ViT's last blocks) feed the FPN in NCHW."""
    torch.manual_seed(0)
    model = create_detector(name, num_classes=3, img_size=96).module
    assert model.backbone.body.feature_info.channels() == levels
    images = [torch.rand(3, 70, 96), torch.rand(3, 96, 50)]
    targets = [_truth([[4, 4, 30, 30]], [1]), _truth([[10, 12, 20, 40]], [2])]
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert next(model.backbone.body.parameters()).grad is not None
    with torch.no_grad():
        assert len(model.eval()(images)) == 2


def test_coco_weights_load_from_an_offline_cache_with_a_new_head(tmp_path, monkeypatch):
    """`model.weights: hub` reads torchvision's COCO checkpoint from the torch hub cache (here a
    file the test writes under the expected name; no network), replaces the class predictor
    and freezes the backbone below `trainable_backbone_layers`."""
    import torchvision.models as tvm
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    url = tvm.get_model_weights(name).DEFAULT.url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    coco = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        coco.backbone.fpn.inner_blocks[0][0].weight.fill_(0.125)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(coco.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)

    built = create_detector(name, num_classes=6, weights="hub", trainable_backbone_layers=2)
    model = built.module
    assert torch.all(model.backbone.fpn.inner_blocks[0][0].weight == 0.125)
    assert model.roi_heads.box_predictor.cls_score.out_features == 6
    assert built.frozen and all(n.startswith("backbone.body.") for n in built.frozen)
    layout = param_layout(built)
    names = trainable_names(layout, "full", [], 0)
    assert not names & set(built.frozen)
    apply_trainable(model, names)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in built.frozen)
    assert model.roi_heads.box_predictor.cls_score.weight.requires_grad


def test_config_rejects_settings_detection_cannot_use(small_coco):
    for override, field in [
        ("loss.name=focal", "loss.name"),
        ("loss.weights={bogus: 2.0}", "loss.weights"),
        ("model.name=resnet18", "model.name"),
        ("model.trainable_backbone_layers=2", "model.trainable_backbone_layers"),
        ("data.augment.mixup_alpha=0.2", "data.augment.mixup_alpha"),
        ("data.format=maskfolder", "data.format"),
    ]:
        paths = [f"data.train={small_coco}/train", f"data.val={small_coco}/val"]
        result = vft("validate", ROOT / "configs/shapes_detection.yaml", *paths, override)
        assert result.exit_code == 2 and field in result.output, (override, result.output)
    digits = ["validate", ROOT / "configs/digits.yaml", f"data.train={small_coco}/train", "data.val=null"]
    result = vft(*digits, "loss.weights={classification: 1.0}")
    assert result.exit_code == 2 and "loss.weights: unknown key for task classification" in result.output


def test_prediction_plots_draw_images_without_boxes_silently(tmp_path):
    import warnings

    from trainer.tasks.detection.plots import detection_predictions

    image = torch.rand(3, 40, 40)
    none = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
    some = {
        "boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]),
        "labels": torch.tensor([0]),
        "scores": torch.tensor([0.9]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detection_predictions([image, image], [none, some], [none, some], ["a"], tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
