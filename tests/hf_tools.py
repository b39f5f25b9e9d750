"""Hugging Face sources made offline by the tests: tiny random `transformers` models written with
`save_pretrained` (with their image processors), and scikit-learn's digits written with
`datasets` as Parquet shards (the Hub's layout) and as a `save_to_disk` folder. Nothing is
downloaded: the tests run with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def tiny_vit(out: Path, size: int = 32, num_labels: int = 1000) -> Path:
    """A 2-layer ViT (patch 8) for `size` px, its processor resizing to `size` with mean/std 0.5."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(out)
    return out


def tiny_segformer(out: Path, size: int = 64, num_labels: int = 150) -> Path:
    """A 4-stage SegFormer with 8-32 channels, its processor at `size` px, ImageNet statistics."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        hidden_sizes=[8, 16, 24, 32],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32,
        num_labels=num_labels,
    )
    SegformerForSemanticSegmentation(config).save_pretrained(out)
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(out)
    return out


def pretrained_tiny_vit(out: Path, epochs: int = 6) -> Path:
    """`tiny_vit` trained for a few seconds on the digits (a stand-in for a pretrained
    checkpoint: its features know the digits), then saved with a fresh 1000-class head, as a
    Hub classifier comes: fine-tuning must load the body and replace the head to do well."""
    import torch
    import torch.nn.functional as F
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    digits = load_digits()
    x = F.interpolate(torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None], size=32)
    x, y = ((x - 0.5) / 0.5).repeat(1, 3, 1, 1), torch.tensor(digits.target)
    model = ViTForImageClassification.from_pretrained(tiny_vit(out, num_labels=10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(y)).split(32):
            loss = F.cross_entropy(model(pixel_values=x[batch]).logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.classifier = torch.nn.Linear(model.config.hidden_size, 1000)
    model.config.num_labels = 1000
    model.save_pretrained(out)
    return out


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def digits_dataset(n: int | None = None):
    """The digits as a `datasets.DatasetDict` (train: 80 %, test: 20 %), PNG bytes in an Image
    column `img` and a ClassLabel `label`, as CIFAR-10 is laid out on the Hub."""
    import datasets

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)[:n]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})
    rows = {"img": [{"bytes": _png(x), "path": None} for x in images], "label": digits.target[:n].tolist()}
    full = datasets.Dataset.from_dict(rows, features=features)
    cut = round(len(full) * 0.8)
    return datasets.DatasetDict(
        {"train": full.select(range(cut)), "test": full.select(range(cut, len(full)))}
    )


def digits_parquet(out: Path, n: int | None = None) -> Path:
    """`out/data/{train,test}-00000-of-00001.parquet`."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, dataset in digits_dataset(n).items():
        dataset.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


def digits_saved(out: Path, n: int | None = None) -> Path:
    digits_dataset(n).save_to_disk(str(out))
    return out


def hub_snapshot(repo_id: str, folder: Path, kind: str = "model") -> Path:
    """`folder` as the Hugging Face hub cache ($HF_HUB_CACHE) holds `repo_id` after a download:
    what `from_pretrained(repo_id)` reads with HF_HUB_OFFLINE=1."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = Path(os.environ["HF_HUB_CACHE"]) / f"{kind}s--{repo_id.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    return snapshot


def masks_saved(mask_folder: Path, out: Path) -> Path:
    """A mask folder (images/ + masks/) as a `datasets` save_to_disk folder with an `image` and
    an `annotation` Image column, as scene_parse_150 is laid out."""
    import datasets

    images = sorted((mask_folder / "images").iterdir())
    rows = {
        "image": [{"bytes": path.read_bytes()} for path in images],
        "annotation": [
            {"bytes": (mask_folder / "masks" / f"{path.stem}.png").read_bytes()} for path in images
        ],
    }
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(out))
    return out
