"""Image loading per CPU core: vft's classification dataset (bounded decode, JPEG draft mode)
against plain torchvision `ImageFolder` with the same transforms.v2 pipeline, on JPEGs made
from scikit-learn's two sample photos at web size (500x375) and camera size (4000x3000), for the
training transform (RandomResizedCrop 224 + flip + normalize) and the validation one (resize 256,
centre crop 224). One thread, no DataLoader workers: what one decoding core delivers.

    python bench/data.py
    python bench/data.py --images 16 --sizes 4000x3000

The last line is one JSON object: `web_vs_plain` and `photo_vs_plain` are the training
transform's ratios at 500x375 and 4000x3000 (vft img/s / plain img/s, higher is better);
`prepared_vs_plain` and `cache_vs_plain` the same at 4000x3000 from a `vft data prepare` copy
and from `data.cache: ram` (an epoch after the first).

    python bench/data.py --device cuda

`data.decode: gpu` on a GPU: JPEGs decoded in batches of 256 on the device (nvJPEG) with the
training transform there, against one CPU core's vft path (`gpu_vs_core`); and the pixel check
of the device decoder against Pillow (`max_abs_diff`, `mean_abs_diff`), repeated to catch the
hardware decoder's stream race (`unstable_repeats`: batches whose pixels changed between runs).
`--device cpu` runs the same code on the CPU (libjpeg-turbo on both sides: diffs are 0).
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

from trainer.components.device_decode import BatchTransform, decode_batch, read_encoded  # noqa: E402
from trainer.components.images import open_image  # noqa: E402
from trainer.components.prepare import prepare_images  # noqa: E402
from trainer.components.preprocess import (  # noqa: E402
    Preprocessing,
    eval_decode_side,
    eval_transform,
    normalize_ops,
    train_decode_side,
    train_ops,
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
        train_side = train_decode_side(prep, aug)
        prepared = Path(tmp) / "prepared"
        prepare_images(root, prepared, short_side=448)
        copy = read_imagefolder(prepared)
        fast = rate(ImageDataset(copy, classes, train_transform(prep, aug), min_side=train_side), args.rounds)
        # data.cache: ram (an epoch after the first: decoded, downscaled pixels in memory)
        cached = ImageDataset(samples, classes, train_transform(prep, aug), min_side=train_side)
        cached.cache_images(list(range(len(samples))), threads=1)
        kept = rate(cached, args.rounds)
        plain = next(r["plain_img_s"] for r in rows if r["transform"] == "train")
        for name, value in (("train, prepared copy", fast), ("train, ram cache", kept)):
            rows.append(
                {"size": f"{size[0]}x{size[1]}", "transform": name, "plain_img_s": plain,
                 "vft_img_s": round(value, 1), "ratio": round(value / plain, 2)}
            )  # fmt: skip
        print(
            f"{size[0]}x{size[1]:<5} prepared copy (448 px): {fast:7.1f} img/s  ratio {fast / plain:.2f}; "
            f"ram cache ({cached.cache.nbytes / 2**20:.0f} MiB): {kept:7.1f} img/s  ratio {kept / plain:.2f}"
        )
    return rows


def bench_device(size: tuple[int, int], device: torch.device, args) -> dict:
    """Decode + training transform in batches on `device`, against one CPU core's vft path, and
    the decoded pixels against Pillow's."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    prep, aug = Preprocessing(224, MEAN, STD, "bilinear", 0.875), CropAugmentConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        write_photos(root, size, args.images // 2)
        samples = read_imagefolder(root)
        items = [read_encoded(path) for path in samples.paths]
        reference = [pil_to_tensor(open_image(path)) for path in samples.paths[:16]]
        classes = sorted({label for labels in samples.labels for label in labels})
        core = rate(
            ImageDataset(samples, classes, train_transform(prep, aug), min_side=train_decode_side(prep, aug)),
            1,
        )
    first, _ = decode_batch(items[:16], device)
    diffs = [(a.cpu().int() - b.int()).abs() for a, b in zip(first, reference, strict=True)]
    unstable = 0
    for _ in range(args.repeats):  # the same batch again: nvJPEG's output must not change
        again, _ = decode_batch(items[:16], device)
        unstable += any(not torch.equal(a, b) for a, b in zip(first, again, strict=True))
    transform = BatchTransform(train_ops(prep, aug), normalize_ops(prep))
    targets = torch.zeros(len(items), dtype=torch.long, device=device)
    batches = [range(i, min(i + 256, len(items))) for i in range(0, len(items), 256)]
    best = float("inf")
    for _ in range(args.rounds + 1):  # the first round warms the decoder up
        start = time.perf_counter()
        for batch in batches:
            images, kept = decode_batch([items[i] for i in batch], device)
            out, _ = transform(images, targets[kept])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    assert out.shape[1:] == (3, 224, 224)
    row = {
        "size": f"{size[0]}x{size[1]}",
        "device": str(device),
        "device_img_s": round(len(items) / best, 1),
        "core_img_s": round(core, 1),
        "gpu_vs_core": round(len(items) / best / core, 1),
        "max_abs_diff": int(max(d.max() for d in diffs)),
        "mean_abs_diff": round(float(sum(d.float().mean() for d in diffs) / len(diffs)), 3),
        "unstable_repeats": unstable,
    }
    print(
        f"{row['size']:>10} decode+train transform on {device}: {row['device_img_s']:8.1f} img/s; "
        f"one CPU core {core:6.1f} img/s (x{row['gpu_vs_core']}); pixels vs Pillow: max "
        f"{row['max_abs_diff']}, mean {row['mean_abs_diff']}; unstable repeats {unstable}/{args.repeats}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["500x375", "4000x3000"])
    parser.add_argument("--images", type=int, default=24, help="JPEGs per size (two photos)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", help="measure data.decode: gpu on this device instead (cuda)")
    parser.add_argument("--repeats", type=int, default=20, help="--device: decodes of one batch compared")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.device:
        rows = [
            bench_device(tuple(int(v) for v in text.split("x")), torch.device(args.device), args)
            for text in args.sizes
        ]
        worst = max(r["max_abs_diff"] for r in rows)
        print(
            json.dumps(
                {"bench": "data_device", "device": args.device, "max_abs_diff": worst, "results": rows}
            )
        )
        return
    rows = []
    for text in args.sizes:
        width, height = (int(v) for v in text.split("x"))
        rows += bench_size((width, height), args)
    train = {r["size"]: r["ratio"] for r in rows if r["transform"] == "train"}
    prepared = {r["size"]: r["ratio"] for r in rows if r["transform"] == "train, prepared copy"}
    cached = {r["size"]: r["ratio"] for r in rows if r["transform"] == "train, ram cache"}
    summary = {
        "web_vs_plain": train.get("500x375"),
        "photo_vs_plain": train.get("4000x3000"),
        "prepared_vs_plain": prepared.get("4000x3000"),
        "cache_vs_plain": cached.get("4000x3000"),
    }
    print(json.dumps({"bench": "data", "threads": 1, **summary, "results": rows}))


if __name__ == "__main__":
    main()
