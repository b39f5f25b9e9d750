"""Datasets, splits, samplers, bounded image decoding and the dataset generators."""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.components import synthetic as generate
from trainer.components.images import open_image
from trainer.components.loader import BalancedSampler, ShardSampler
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


# ----------------------------------------------------------------------------- samplers


def test_balanced_sampler_balances_an_imbalanced_label_list():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedSampler(labels, rank=0, world=1, seed=0)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    assert len(drawn) == 20 * 100
    minority = sum(labels[i] == 1 for i in drawn) / len(drawn)
    assert 0.45 < minority < 0.55  # 10% in the data


def test_balanced_sampler_ranks_take_disjoint_slices_of_one_draw():
    labels = [0] * 90 + [1] * 10
    whole = list(BalancedSampler(labels, rank=0, world=1, seed=7))
    r0 = list(BalancedSampler(labels, rank=0, world=2, seed=7))
    r1 = list(BalancedSampler(labels, rank=1, world=2, seed=7))
    assert len(r0) == len(r1) == 50
    interleaved = [i for pair in zip(r0, r1, strict=True) for i in pair]
    assert interleaved == whole


def test_balanced_sampler_set_epoch_changes_the_draw():
    labels = [0] * 90 + [1] * 10
    sampler = BalancedSampler(labels, rank=0, world=2, seed=0)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same draw
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize(("size", "world"), [(10, 3), (7, 2), (5, 8), (12, 4)])
def test_shard_sampler_partitions_without_padding(size, world):
    shards = [list(ShardSampler(size, rank, world)) for rank in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(size))
    assert len(flat) == size
    assert [len(ShardSampler(size, r, world)) for r in range(world)] == [len(s) for s in shards]


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


# ----------------------------------------------------------------------------- decoding


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG", quality=95))
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (20, 10)
    r, g, b = img.getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full: red


def test_16bit_png_decodes_to_rgb():
    arr = np.zeros((6, 9), dtype=np.uint16)
    arr[:, 3:6] = 32896  # ~ 128 in 8 bits
    arr[:, 6:] = 65535
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = open_image(data)
    assert img.mode == "RGB" and img.size == (9, 6)
    assert img.getpixel((0, 0)) == (0, 0, 0)
    assert img.getpixel((4, 2)) == (128, 128, 128)
    assert img.getpixel((8, 5)) == (255, 255, 255)


def test_rgba_png_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    out = open_image(encode(img, "PNG"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (8-bit grey) but carries almost no pixel data: only a
    header check can tell it is too large; decoding it would fail as truncated."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def test_image_over_max_pixels_is_refused_before_decoding(tmp_path):
    data = huge_png_header(5000, 5000)
    with pytest.raises(BadImageError) as truncated:  # allowed size: decoding fails
        open_image(data, max_pixels=100_000_000)
    assert not isinstance(truncated.value, ImageTooLargeError)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLargeError) as info:
        open_image(path, max_pixels=1_000_000)
    assert str(path) in str(info.value)
    assert "5000x5000" in str(info.value)


def test_real_large_png_is_refused():
    data = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageTooLargeError):
        open_image(data, max_pixels=1_000_000)
    assert open_image(data, max_pixels=25_000_000).size == (5000, 5000)


def test_truncated_jpeg_is_a_bad_image():
    data = encode(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")
    with pytest.raises(BadImageError, match="upload.jpg"):
        open_image(data[: len(data) // 2], name="upload.jpg")


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        open_image(tmp_path / "nope.png")
    text = tmp_path / "t.png"
    text.write_text("hello")
    with pytest.raises(BadImageError, match=str(text)):
        open_image(text)


# ----------------------------------------------------------------------------- generators


def count_images(root: Path) -> dict[str, int]:
    return {d.name: len(list(d.glob("*.png"))) for d in sorted(root.iterdir())}


def test_digits_generator_writes_imagefolder(tmp_path):
    counts = generate.digits(tmp_path, size=8)
    assert counts == {"train": 1437, "val": 360}
    for split in ("train", "val"):
        per_class = count_images(tmp_path / split)
        assert list(per_class) == [str(d) for d in range(10)]
        assert sum(per_class.values()) == counts[split]
        assert min(per_class.values()) >= (30 if split == "val" else 130)
    samples = read_imagefolder(tmp_path / "train")
    assert len(samples) == 1437
    img = open_image(samples.paths[0])
    assert img.size == (8, 8)


def test_shapes_generator_writes_imagefolder(tmp_path):
    counts = generate.shapes_classification(tmp_path, n_train=20, n_val=10, size=24, seed=1)
    assert counts == {"train": 20, "val": 10}
    assert count_images(tmp_path / "train") == dict.fromkeys(sorted(generate.SHAPES), 4)
    assert count_images(tmp_path / "val") == dict.fromkeys(sorted(generate.SHAPES), 2)
    img = open_image(next((tmp_path / "val" / "star").glob("*.png")))
    assert img.size == (24, 24)
    again = tmp_path / "again"
    generate.shapes_classification(again, n_train=20, n_val=10, size=24, seed=1)
    first = (tmp_path / "train" / "circle" / "00000.png").read_bytes()
    assert (again / "train" / "circle" / "00000.png").read_bytes() == first  # seeded
