"""The identity of a run's datasets, as a tracker records it: per split the source, the number
of images, images per class (when the labels tell without decoding), and a SHA-256 of the
manifest (paths relative to the dataset's folder, with their labels), which changes when a file
is added, removed, renamed or relabelled."""

from __future__ import annotations

import hashlib
import os
from collections import Counter

from trainer.components.remote_data import localize
from trainer.config import VftConfig
from trainer.tasks.base import DataSplit, get_task


def datasets(cfg: VftConfig, split: DataSplit | None = None) -> list[dict]:
    """The train and val splits as the workers read them: source, images, images per class
    (when the labels tell without decoding), a SHA-256 of the manifest (paths relative to the
    dataset's folder, with their labels). `split`: the data as the task read it already (the
    commands' check_data), else read here."""
    task, d = get_task(cfg.task), cfg.data
    local = cfg.with_data_paths(localize)
    split = split or task.read_data(local)
    found = []
    for name, samples, source, root in (
        ("train", split.train, d.train, local.data.train),
        ("val", split.val, d.val or d.train, local.data.val or local.data.train),
    ):
        lines = task.manifest(samples, split.classes)
        digest = hashlib.sha256()
        per_class: Counter = Counter()
        known = True
        for line, classes in lines:
            digest.update(relative(line, root).encode() + b"\n")
            if classes is None:
                known = False
            else:
                per_class.update(classes)
        profile = {"images": len(lines), "classes": len(split.classes)}
        profile["images_per_class"] = {c: per_class[c] for c in split.classes} if known else None
        val_split = getattr(getattr(d, "hf", None), "val_split", None)  # a named split of a dataset
        if not d.val and not val_split:
            profile["split"] = f"val_fraction {d.val_fraction}, seed {d.split_seed}"
        kind = "hugging_face" if source.startswith("hf:") else "local"
        kind = source.split("://", 1)[0] if "://" in source else kind
        found.append(
            {
                "name": name,
                "source": source,
                "source_type": kind,
                "digest": digest.hexdigest()[:16],
                "profile": profile,
            }
        )
    return found


def relative(line: str, root: str) -> str:
    prefix = os.path.abspath(root).rstrip("/") + "/"
    return line.replace(prefix, "")
