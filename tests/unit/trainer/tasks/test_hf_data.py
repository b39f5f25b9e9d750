"""Hugging Face datasets as classification data (`data.format: hf`), offline: the digits written
by the test with `datasets` as Parquet shards (the Hub's layout) and with save_to_disk. Class
names from the ClassLabel feature, named splits or the seeded stratified split, images read by
row (also after pickling, as loader processes get them), errors naming the split, the row or
the field."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from hf_tools import DIGIT_NAMES, digits_parquet, digits_saved, masks_saved
from PIL import Image

from trainer.components.hf_data import HfOptions, is_hf_dataset
from trainer.components.preprocess import resolve_preprocessing
from trainer.config import build_config
from trainer.errors import BadImageError, DataError
from trainer.tasks.base import get_task
from trainer.tasks.classification.data import ImageDataset, read_hf, read_samples, read_split
from trainer.tasks.segmentation.data import read_hf_masks, read_mask
from trainer.tasks.segmentation.shapes import shapes_segmentation

N = 100  # digits rows written: 80 train, 20 test


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    return digits_parquet(tmp_path_factory.mktemp("parquet"), n=N)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return digits_saved(tmp_path_factory.mktemp("saved"), n=N)


def test_both_layouts_are_recognised_and_an_imagefolder_is_not(parquet, saved, tmp_path):
    assert is_hf_dataset(str(parquet)) and is_hf_dataset(str(saved)) and is_hf_dataset("hf:cifar10")
    (tmp_path / "cat").mkdir()
    assert not is_hf_dataset(str(tmp_path))


@pytest.mark.parametrize("layout", ["parquet", "saved"])
def test_named_splits_and_class_names_from_the_label_feature(layout, request):
    source = str(request.getfixturevalue(layout))
    train, val, classes = read_split(source, None, "auto", 0.2, 0, False, HfOptions(), "test")
    assert (len(train), len(val)) == (80, 20)
    assert classes == sorted(set(DIGIT_NAMES))
    assert train.paths[3] == f"{source}[train]#3" and val.paths[0] == f"{source}[test]#0"
    from sklearn.datasets import load_digits

    assert [labels[0] for labels in train.labels[:5]] == [DIGIT_NAMES[t] for t in load_digits().target[:5]]


def test_eval_data_is_the_validation_or_test_split(parquet):
    samples = read_samples(parquet)  # a Path and no split, as `vft eval --data` reads it
    assert len(samples) == 20 and samples.paths[0] == f"{parquet}[test]#0"


def test_without_a_validation_split_the_training_split_is_split_stratified(parquet):
    train, val, _ = read_split(str(parquet), None, "hf", 0.25, 0, False, HfOptions())
    assert (len(train), len(val)) == (60, 20)
    assert not set(train.paths) & set(val.paths)
    assert all(path.startswith(f"{parquet}[train]#") for path in val.paths)


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.tensor(np.asarray(image))


def test_rows_decode_through_the_dataset_and_after_pickling(parquet):
    samples = read_hf(str(parquet), "test")
    dataset = ImageDataset(samples, sorted(DIGIT_NAMES), transform=to_tensor)
    pixels, target = dataset[7]
    assert pixels.shape == (32, 32, 3) and sorted(DIGIT_NAMES)[target] == samples.labels[7][0]
    copy = pickle.loads(pickle.dumps(dataset))  # what a DataLoader process gets: no open table
    assert copy.images._dataset is None
    assert torch.equal(copy[7][0], pixels)


def test_a_corrupt_row_names_the_split_and_row_or_is_skipped(tmp_path):
    import datasets

    good = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(good, "PNG")
    rows = {"image": [{"bytes": good.getvalue()}, {"bytes": b"not an image"}], "label": ["a", "b"]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "bad"))
    samples = read_hf(str(tmp_path / "bad"))
    assert samples.labels == [["a"], ["b"]]  # plain values are the labels
    dataset = ImageDataset(samples, ["a", "b"], transform=lambda img: img.size)
    assert dataset[0][0] == (8, 8)
    with pytest.raises(BadImageError, match=r"bad\[train\]#1: not a recognised image"):
        dataset[1]
    assert ImageDataset(samples, ["a", "b"], transform=lambda img: img, skip_bad=True)[1] is None


def test_a_multilabel_column_gives_several_labels(tmp_path):
    import datasets

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    features = datasets.Features(
        {"image": datasets.Image(), "tags": datasets.List(datasets.ClassLabel(names=["x", "y", "z"]))}
    )
    rows = {"image": [{"bytes": png.getvalue()}] * 2, "tags": [[0, 2], [1]]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "multi"))
    assert read_hf(str(tmp_path / "multi")).labels == [["x", "z"], ["y"]]


def test_wrong_splits_and_columns_are_errors_naming_them(parquet):
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: train, test\)"):
        read_hf(str(parquet), "validation")
    with pytest.raises(
        DataError, match=r"data.hf.image_column: .* has no column 'picture' \(columns: img, label\)"
    ):
        read_hf(str(parquet), "train", HfOptions(image_column="picture"))
    with pytest.raises(DataError, match="data.hf.image_column: 'label' .* is not an image column"):
        read_hf(str(parquet), "train", HfOptions(image_column="label"))
    with pytest.raises(DataError, match="hf:vft-tests/absent: cannot load it as a Hugging Face dataset"):
        read_hf("hf:vft-tests/absent")


def test_the_task_reads_the_config_section(parquet, tmp_path):
    cfg = build_config(
        {
            "task": "classification",
            "data": {"train": "hf:vft-tests/absent", "format": "hf", "hf": {"val_split": "test"}},
        }
    )
    assert cfg.data.train == "hf:vft-tests/absent"  # a Hub id is not a path: left as written
    with pytest.raises(DataError, match="cannot load it as a Hugging Face dataset"):
        get_task("classification").read_data(cfg)  # offline: the Hub id is not in the cache
    cfg = build_config(
        {"task": "classification", "data": {"train": str(parquet), "hf": {"val_split": "test"}}}
    )
    split = get_task("classification").check_data(cfg)
    assert (len(split.train), len(split.val), len(split.classes)) == (80, 20, 10)
    with pytest.raises(Exception, match="data.hf.splits"):
        build_config({"task": "classification", "data": {"train": str(parquet), "hf": {"splits": "x"}}})


# ----------------------------------------------------------------------------- segmentation


def test_a_segmentation_dataset_reads_image_and_mask_columns(tmp_path):
    shapes_segmentation(tmp_path / "folder", n_train=6, n_val=2, size=32, seed=0)
    source = masks_saved(tmp_path / "folder" / "train", tmp_path / "hf")
    cfg = build_config({"task": "segmentation", "data": {"train": str(source), "val_fraction": 0.34}})
    task = get_task("segmentation")
    split = task.check_data(cfg)
    assert (len(split.train), len(split.val)) == (4, 2)
    masks = sorted((tmp_path / "folder" / "train" / "masks").iterdir())
    top = max(int(values[values != 255].max()) for values in map(read_mask, masks))
    assert split.classes == [str(i) for i in range(top + 1)]  # indices of both splits: no classes.txt
    name = split.train.images[0]
    assert name.startswith(f"{source}[train]#")
    row = int(name.rsplit("#", 1)[1])
    assert np.array_equal(read_mask(split.train.mask_source(0), name), read_mask(masks[row]))
    prep = resolve_preprocessing(
        {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "crop_pct": 1.0}
    )
    train, _ = task.build_datasets(cfg, split, prep)
    image, mask = pickle.loads(pickle.dumps(train))[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


def test_a_mask_of_another_size_names_its_row(tmp_path):
    import datasets

    def png(size, mode):
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, "PNG")
        return {"bytes": buffer.getvalue()}

    rows = {"image": [png((8, 8), "RGB"), png((8, 8), "RGB")], "mask": [png((8, 8), "L"), png((4, 8), "L")]}
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "seg"))
    with pytest.raises(DataError, match=r"seg\[train\]#1: mask is 4x8 but its image is 8x8"):
        read_hf_masks(str(tmp_path / "seg"), "train", HfOptions())
    rows["image"][1] = {"bytes": b"not an image"}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad\[train\]#1: cannot read image"):
        read_hf_masks(str(tmp_path / "bad"), "train", HfOptions())
    with pytest.raises(DataError, match="data.hf.label_column: 'image_x' .* is not an image column"):
        read_hf_masks(str(tmp_path / "seg"), "train", HfOptions(label_column="image_x"))
