"""Image loading per CPU core: vft's classification dataset (bounded decode, JPEG draft mode)
against plain torchvision `ImageFolder` with the same transforms.v2 pipeline, on JPEGs made
from scikit-learn's two sample photos at web size (500x375) and camera size (4000x3000), for the
training transform (RandomResizedCrop 224 + flip + normalize) and the validation one (resize 256,
centre crop 224). One thread, no DataLoader workers: what one decoding core delivers.

    python bench/data.py
    python bench/data.py --images 16 --sizes 4000x3000

The last line is one JSON object: `web_vs_plain` and `photo_vs_plain` are the training
transform's ratios at 500x375 and 4000x3000 (vft img/s / plain img/s, higher is better).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.components.prepare import prepare_images  # noqa: E402
from trainer.components.preprocess import (  # noqa: E402
    Preprocessing,
    eval_decode_side,
    eval_transform,
    train_decode_side,
    train_transform,
)
from trainer.config import CropAugmentConfig  # noqa: E402
from trainer.tasks.classification.data import ImageDataset, read_imagefolder  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_photos(root: Path, size: tuple[int, int], count: int) -> None:
    """`count` JPEGs (quality 90) per class, resized from the two real photos."""
    for i, photo in enumerate(load_sample_images().images):
        folder = root / f"class{i}"
        folder.mkdir(parents=True)
        img = Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC)
        for j in range(count):
            img.save(folder / f"{j}.jpg", quality=90 - j % 3)  # distinct files, same content


def rate(dataset, rounds: int) -> float:
    """Images per second over the whole dataset, best of `rounds`."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        best = min(best, time.perf_counter() - start)
    return len(dataset) / best


def bench_size(size: tuple[int, int], args) -> list[dict]:
    prep = Preprocessing(224, MEAN, STD, "bilinear", 0.875)
    aug = CropAugmentConfig()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        write_photos(root, size, args.images // 2)
        samples = read_imagefolder(root)
        classes = sorted({label for labels in samples.labels for label in labels})
        for split, vft_tf, side in (
            ("train", train_transform(prep, aug), train_decode_side(prep, aug)),
            ("eval", eval_transform(prep), eval_decode_side(prep)),
        ):
            plain = rate(datasets.ImageFolder(str(root), transform=vft_tf), args.rounds)  # same v2 ops
            full = rate(ImageDataset(samples, classes, vft_tf), args.rounds)
            draft = rate(ImageDataset(samples, classes, vft_tf, min_side=side), args.rounds)
            row = {
                "size": f"{size[0]}x{size[1]}",
                "transform": split,
                "plain_img_s": round(plain, 1),
                "vft_full_decode_img_s": round(full, 1),
                "vft_img_s": round(draft, 1),
                "ratio": round(draft / plain, 2),
            }
            rows.append(row)
            print(
                f"{row['size']:>10} {split:>5}  plain {plain:7.1f} img/s  vft (full decode) {full:7.1f}  "
                f"vft (draft, decode side {side}) {draft:7.1f}  ratio {row['ratio']:.2f}",
                flush=True,
            )
        # `vft data prepare` (shorter side 2 x 224), then the same training transform
        prepared = Path(tmp) / "prepared"
        prepare_images(root, prepared, short_side=448)
        copy = read_imagefolder(prepared)
        fast = rate(ImageDataset(copy, classes, train_transform(prep, aug), min_side=side), args.rounds)
        plain = next(r["plain_img_s"] for r in rows if r["transform"] == "train")
        rows.append(
            {"size": f"{size[0]}x{size[1]}", "transform": "train, prepared copy", "plain_img_s": plain,
             "vft_img_s": round(fast, 1), "ratio": round(fast / plain, 2)}
        )  # fmt: skip
        print(
            f"{size[0]}x{size[1]:<5} prepared copy (448 px): vft {fast:7.1f} img/s  ratio {fast / plain:.2f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["500x375", "4000x3000"])
    parser.add_argument("--images", type=int, default=24, help="JPEGs per size (two photos)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for text in args.sizes:
        width, height = (int(v) for v in text.split("x"))
        rows += bench_size((width, height), args)
    train = {r["size"]: r["ratio"] for r in rows if r["transform"] == "train"}
    prepared = {r["size"]: r["ratio"] for r in rows if r["transform"] == "train, prepared copy"}
    summary = {
        "web_vs_plain": train.get("500x375"),
        "photo_vs_plain": train.get("4000x3000"),
        "prepared_vs_plain": prepared.get("4000x3000"),
    }
    print(json.dumps({"bench": "data", "threads": 1, **summary, "results": rows}))


if __name__ == "__main__":
    main()
