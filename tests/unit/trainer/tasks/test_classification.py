"""Classification data and metrics: ImageFolder and CSV manifests, seeded stratified splits, the
image dataset (bad images, pixel limits, unknown labels), and the metrics by hand."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainer.errors import BadImageError, DataError, ImageTooLargeError
from trainer.tasks.classification.data import (
    Collate,
    ImageDataset,
    Samples,
    class_names,
    read_csv_manifest,
    read_imagefolder,
    read_samples,
    split_samples,
)
from trainer.tasks.classification.metrics import ClassificationMetrics, metric_names


def write_png(path: Path, color=(10, 20, 30), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.as_tensor(np.array(img)).permute(2, 0, 1).float()


# ----------------------------------------------------------------------------- ImageFolder


def test_imagefolder_sorted_classes_and_image_files_only(tmp_path):
    for cls in ("zebra", "ant", "moose"):
        write_png(tmp_path / cls / "b.png")
        write_png(tmp_path / cls / "a.JPG")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / "README").write_text("no suffix")
    write_png(tmp_path / "ant" / "nested" / "c.png")
    write_png(tmp_path / "loose.png")  # not in a class folder
    write_png(tmp_path / ".hidden" / "x.png")
    samples = read_imagefolder(tmp_path)
    assert class_names(samples) == ["ant", "moose", "zebra"]
    names = [Path(p).relative_to(tmp_path).as_posix() for p in samples.paths]
    assert names == [
        "ant/a.JPG",
        "ant/b.png",
        "ant/nested/c.png",
        "moose/a.JPG",
        "moose/b.png",
        "zebra/a.JPG",
        "zebra/b.png",
    ]
    assert samples.labels[:3] == [["ant"]] * 3
    assert samples.labels[-1] == ["zebra"]
    assert read_samples(tmp_path).paths == samples.paths  # auto-detected format


def test_imagefolder_without_images_is_a_data_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("")
    with pytest.raises(DataError, match=str(tmp_path)):
        read_imagefolder(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        read_imagefolder(tmp_path / "missing")


# ----------------------------------------------------------------------------- CSV manifest


def test_csv_paths_resolve_against_the_csv_folder(tmp_path, monkeypatch):
    root = tmp_path / "set"
    write_png(root / "imgs" / "1.png")
    write_png(root / "imgs" / "2.png")
    absolute = write_png(tmp_path / "elsewhere" / "3.png")
    manifest = root / "train.csv"
    manifest.write_text(f"path,label,extra\nimgs/1.png,cat,x\nimgs/2.png, dog ,y\n{absolute},cat,z\n")
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    samples = read_samples(Path("set/train.csv"))
    assert [Path(p).resolve() for p in samples.paths] == [
        (root / "imgs" / "1.png").resolve(),
        (root / "imgs" / "2.png").resolve(),
        absolute.resolve(),
    ]
    assert samples.labels == [["cat"], ["dog"], ["cat"]]


def test_csv_without_label_column_names_the_file(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,class\na.png,cat\n")
    with pytest.raises(DataError) as info:
        read_csv_manifest(manifest)
    assert str(manifest) in str(info.value)
    assert "label" in str(info.value)


def test_csv_missing_image_names_file_and_line(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label\na.png,cat\na.png,cat\nmissing.png,dog\n")
    with pytest.raises(DataError) as info:
        read_csv_manifest(manifest)
    assert f"{manifest}:4" in str(info.value)
    assert "missing.png" in str(info.value)


def test_csv_empty_label_names_the_line(tmp_path):
    write_png(tmp_path / "a.png")
    manifest = tmp_path / "set.csv"
    manifest.write_text("path,label\na.png,\n")
    with pytest.raises(DataError, match=rf"{manifest}:2"):
        read_csv_manifest(manifest)


def test_csv_multilabel(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    manifest = tmp_path / "ml.csv"
    manifest.write_text("path,label\na.png,a;b\nb.png, c ; a ;\n")
    samples = read_csv_manifest(manifest)
    assert samples.labels == [["a", "b"], ["c", "a"]]
    assert class_names(samples) == ["a", "b", "c"]
    ds = ImageDataset(samples, class_names(samples), to_tensor, multilabel=True)
    _, target = ds[1]
    assert target.tolist() == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- split


def imbalanced_samples(counts: dict[str, int]) -> Samples:
    labels = [[c] for c, n in counts.items() for _ in range(n)]
    return Samples([f"img{i}.png" for i in range(len(labels))], labels)


def test_split_is_seeded_and_stratified():
    counts = {"a": 50, "b": 30, "c": 20}
    samples = imbalanced_samples(counts)
    train, val = split_samples(samples, 0.2, seed=3)
    again_train, again_val = split_samples(samples, 0.2, seed=3)
    assert val.paths == again_val.paths and train.paths == again_train.paths
    other_train, other_val = split_samples(samples, 0.2, seed=4)
    assert other_val.paths != val.paths
    assert len(val) == 20 and len(train) == 80
    assert sorted(train.paths + val.paths) == sorted(samples.paths)
    for split in (val, other_val):
        got = Counter(lab[0] for lab in split.labels)
        for cls, n in counts.items():
            assert abs(got[cls] - n * 0.2) <= 1, (cls, got)


def test_split_without_stratification_when_a_class_is_a_singleton():
    samples = imbalanced_samples({"a": 10, "b": 1})
    train, val = split_samples(samples, 0.3, seed=0)
    assert len(train) + len(val) == 11
    assert len(val) == 3


# ----------------------------------------------------------------------------- ImageDataset


@pytest.fixture
def folder_with_corrupt_file(tmp_path) -> Path:
    write_png(tmp_path / "a" / "good.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.png").write_bytes(np.random.default_rng(0).bytes(600))
    return tmp_path


def test_corrupt_image_raises_naming_the_file(folder_with_corrupt_file):
    samples = read_imagefolder(folder_with_corrupt_file)
    ds = ImageDataset(samples, class_names(samples), to_tensor)
    image, target = ds[0]
    assert image.shape == (3, 6, 8) and target == 0
    with pytest.raises(BadImageError) as info:
        ds[1]
    assert str(folder_with_corrupt_file / "b" / "x.png") in str(info.value)


def test_skip_bad_yields_none_and_collate_counts_it(folder_with_corrupt_file):
    samples = read_imagefolder(folder_with_corrupt_file)
    ds = ImageDataset(samples, class_names(samples), to_tensor, skip_bad=True)
    assert ds[1] is None
    images, targets, skipped = Collate()([ds[0], ds[1], ds[0]])
    assert images.shape == (2, 3, 6, 8)
    assert targets.tolist() == [0, 0]
    assert skipped == 1
    assert Collate()([ds[1]]) == (None, None, 1)


def test_image_over_the_pixel_limit_is_a_bad_image(folder_with_corrupt_file):
    samples = read_imagefolder(folder_with_corrupt_file).subset([0])
    ds = ImageDataset(samples, ["a", "b"], to_tensor, max_pixels=40)
    with pytest.raises(ImageTooLargeError, match="good.png"):
        ds[0]


def test_val_labels_outside_training_classes(tmp_path):
    write_png(tmp_path / "val" / "cat" / "1.png")
    write_png(tmp_path / "val" / "emu" / "1.png")
    with pytest.raises(DataError, match="emu"):
        ImageDataset(read_imagefolder(tmp_path / "val"), ["cat", "dog"], to_tensor)


# ----------------------------------------------------------------------------- metrics


def logits_for(preds: list[int], num_classes: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(preds), num_classes).float() * 5.0


def test_classification_metrics_hand_computed():
    # true: 0 0 1 1 2 2; predicted: 0 1 1 1 2 0
    target = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = logits_for([0, 1, 1, 1, 2, 0], 3)
    metrics = ClassificationMetrics(3)
    metrics.update(logits[:4], target[:4], loss=torch.tensor(1.0))
    metrics.update(logits[4:], target[4:], loss=torch.tensor(4.0))
    scalars, tables = metrics.compute("val/")
    assert scalars["val/top1"] == pytest.approx(4 / 6)
    assert scalars["val/top5"] == pytest.approx(1.0)  # top-3 of 3 classes
    assert scalars["val/recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert scalars["val/precision"] == pytest.approx((1 / 2 + 2 / 3 + 1.0) / 3)
    assert scalars["val/f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert scalars["val/loss"] == pytest.approx((4 * 1.0 + 2 * 4.0) / 6)  # weighted by batch size
    assert tables["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert tables["per_class_acc"] == pytest.approx([0.5, 1.0, 0.5])
    assert set(scalars) == {n for n in metric_names() if n.startswith("val/")}

    metrics.reset()
    metrics.update(logits_for([2, 2], 3), torch.tensor([2, 2]), loss=torch.tensor(0.5))
    scalars, tables = metrics.compute()
    assert scalars["val/top1"] == 1.0
    assert scalars["val/loss"] == pytest.approx(0.5)  # reset forgot the earlier batches
    assert tables["confusion"] == [[0, 0, 0], [0, 0, 0], [0, 0, 2]]


def test_multilabel_metrics():
    metrics = ClassificationMetrics(3, multilabel=True)
    target = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    logits = target.float() * 4 - 2  # perfect ranking and thresholds
    metrics.update(logits, target, loss=torch.tensor(0.2))
    scalars, tables = metrics.compute()
    assert scalars["val/map"] == pytest.approx(1.0)
    assert scalars["val/accuracy"] == pytest.approx(1.0)
    assert "confusion" not in tables
    assert tables["per_class_acc"] == pytest.approx([1.0, 1.0, 1.0])
    metrics.reset()
    metrics.update(-logits, target, loss=torch.tensor(3.0))  # everything wrong
    scalars, _ = metrics.compute()
    assert scalars["val/accuracy"] == pytest.approx(0.0)
    assert scalars["val/map"] < 1.0
    assert set(scalars) == {n for n in metric_names(multilabel=True) if n.startswith("val/")}


def test_datasets_decode_jpegs_at_the_side_their_transforms_need(digits_dir):
    """data.jpeg_draft (on by default) gives each split the decode side of its transform: the
    training crop's worst case, the validation resize; off, every JPEG decodes in full."""
    from trainer.config import load_config
    from trainer.tasks.base import get_task

    root = Path(__file__).resolve().parents[4]
    paths = [f"data.train={digits_dir}/train", f"data.val={digits_dir}/val", "data.img_size=224"]
    task = get_task("classification")
    # digits.yaml's crop: scale [0.7, 1.0], ratio [3/4, 4/3] -> 224 / sqrt(0.7 * 0.75) = 310
    for overrides, sides in (([], (310, 256)), (["data.jpeg_draft=false"], (None, None))):
        cfg = load_config(root / "configs/digits.yaml", [*paths, "data.crop_pct=0.875", *overrides])
        split = task.read_data(cfg)
        built = task.build_model(cfg, len(split.classes))
        train, val = task.build_datasets(cfg, split, task.build_preprocessing(cfg, built))
        assert (train.min_side, val.min_side) == sides


def test_cutmix_pastes_a_patch_and_weighs_the_labels_by_its_area():
    """Image 0 is black, image 1 white: after CutMix each image's share of white pixels is the
    weight of label 1 in its target."""
    from trainer.tasks.classification.augment import batch_mix
    from trainer.tasks.classification.config import ClassificationAugment

    mix = batch_mix(ClassificationAugment(cutmix_alpha=1.0), num_classes=2)
    batch = [(torch.zeros(3, 32, 32), 0), (torch.ones(3, 32, 32), 1)]
    torch.manual_seed(0)
    images, targets, skipped = Collate(mix)(batch)
    assert skipped == 0 and targets.shape == (2, 2) and 0 < float(targets[0, 1]) < 1
    for image, target in zip(images, targets, strict=True):
        assert float(image.mean()) == pytest.approx(float(target[1]), abs=1e-6)
