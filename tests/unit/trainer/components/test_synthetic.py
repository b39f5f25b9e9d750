"""The dataset generators (`vft data`): digits and shapes written as ImageFolder."""

from __future__ import annotations

from pathlib import Path

from trainer.components import synthetic as generate
from trainer.components.images import open_image
from trainer.tasks.classification.data import read_imagefolder


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
