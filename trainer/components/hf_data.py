"""Hugging Face datasets as a source (`data.format: hf`): a Hub id (`hf:cifar10`, downloaded
once into the `datasets` cache; `HF_HUB_OFFLINE=1` reads the cache only), a folder written by
`save_to_disk`, or a folder of Parquet/Arrow shards (split names from the file names, as the
Hub lays them out: `data/train-00000-of-00001.parquet`).

Rows stay in the memory-mapped Arrow files: the labels are read as one column, and each image's
encoded bytes are read from its row when a loader asks for it, in whichever process asks (the
dataset reopens there by reference), so no worker holds the whole set in memory. A row is named
`<source>[<split>]#<row>` wherever a file path would be (errors, the dataset's digest).

`datasets` is imported only when such a dataset is read: it takes a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainer.errors import BadImageError, DataError

PREFIX = "hf:"
_SAVED = ("dataset_dict.json", "state.json")  # what save_to_disk writes
_SHARDS = ("*.parquet", "*/*.parquet", "*.arrow", "*/*.arrow")


def is_hf_dataset(source: str) -> bool:
    """A Hub id with the `hf:` prefix, a save_to_disk folder, or a folder of Parquet/Arrow shards."""
    if source.startswith(PREFIX):
        return True
    path = Path(source)
    if not path.is_dir():
        return False
    return any((path / name).is_file() for name in _SAVED) or any(next(path.glob(g), None) for g in _SHARDS)


@dataclass(frozen=True)
class HfOptions:
    """Which configuration, split and columns to read (None: found from the features)."""

    config: str | None = None
    split: str | None = None
    image_column: str | None = None
    label_column: str | None = None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_split(source: str, split: str | None, config: str | None = None):
    """The `datasets.Dataset` of `split` in `source`, and the split's name. A source with one
    split takes any name; without a name, a source with several takes `validation`, else `test`."""
    import datasets

    try:
        if source.startswith(PREFIX):
            loaded = datasets.load_dataset(source[len(PREFIX) :], name=config)
        elif any((Path(source) / name).is_file() for name in _SAVED):
            loaded = datasets.load_from_disk(source)
        else:
            loaded = datasets.load_dataset(source, name=config)
    except Exception as exc:  # noqa: BLE001 - hub, cache and file errors all mean "cannot load"
        raise DataError(f"{source}: cannot load it as a Hugging Face dataset ({_first_line(exc)})") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded, split or "train"
    names = list(loaded)
    if split is None:
        split = next((name for name in ("validation", "test") if name in names), None)
        if split is None:
            raise DataError(
                f"{source}: no validation or test split (splits: {', '.join(names)}); set data.hf.val_split"
            )
    if split not in loaded:
        raise DataError(f"{source}: no split '{split}' (splits: {', '.join(names)})")
    return loaded[split], split


def _columns(dataset, options: HfOptions, where: str) -> tuple[str, str]:
    import datasets

    features = dataset.features
    image = options.image_column or next(
        (name for name, feature in features.items() if isinstance(feature, datasets.Image)), None
    )
    label = options.label_column or next(
        (name for name, feature in features.items() if _label_names(feature) is not None),
        "label" if "label" in features else None,
    )
    columns = ", ".join(features)
    for field, column, kind in (("image_column", image, "image"), ("label_column", label, "label")):
        if column is None:
            raise DataError(f"{where}: no {kind} column found (columns: {columns}); set data.hf.{field}")
        if column not in features:
            raise DataError(f"data.hf.{field}: {where} has no column '{column}' (columns: {columns})")
    if not isinstance(features[image], datasets.Image):
        raise DataError(f"data.hf.image_column: '{image}' in {where} is not an image column")
    return image, label


def _label_names(feature) -> list[str] | None:
    """A ClassLabel's names (also inside a list: multilabel), else None (values are labels)."""
    import datasets

    inner = getattr(feature, "feature", None)
    for candidate in (feature, inner):
        if isinstance(candidate, datasets.ClassLabel):
            return list(candidate.names)
    return None


def _as_labels(value, names: list[str] | None) -> list[str]:
    values = value if isinstance(value, list | tuple) else [value]
    return [names[v] if names is not None else str(v) for v in values if v is not None and v != -1]


class RowImages:
    """The encoded images of one split's image column, read by row. Pickles as the split's
    Arrow files (on this machine: the loaded dataset's cache files) and memory-maps them again in
    the process that reads, on first use: no Hub request, no copy."""

    def __init__(self, dataset, column: str):
        self.files = [entry["filename"] for entry in dataset.cache_files]
        self.column = column
        self._dataset = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_dataset": None}

    def _open(self):
        import datasets

        if self._dataset is None:
            parts = [datasets.Dataset.from_file(file) for file in self.files]
            dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
            self._dataset = dataset.select_columns([self.column]).cast_column(
                self.column, datasets.Image(decode=False)
            )
        return self._dataset

    def read(self, row: int, name: str) -> bytes:
        """The row's encoded image (its bytes, or the file its path names); BadImageError
        naming the row when it holds none."""
        value = self._open()[row][self.column] or {}
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            try:
                return Path(value["path"]).read_bytes()
            except OSError as exc:
                raise BadImageError(f"{name}: cannot read {value['path']} ({exc.strerror or exc})") from None
        raise BadImageError(f"{name}: the row holds no image")


def _open(source: str, split: str | None, options: HfOptions):
    """The split's dataset and its name prefix `<source>[<split>]`, checked to be rows read by
    reference (Arrow files, no index mapping) and not empty."""
    dataset, split = load_split(source, split, options.config)
    where = f"{source}[{split}]"
    if not len(dataset):
        raise DataError(f"{where}: no rows")
    if not dataset.cache_files or len(dataset.data) != len(dataset):
        raise DataError(f"{where}: not backed by Arrow files in one piece (save it with save_to_disk)")
    return dataset, where


def read_rows(
    source: str, split: str | None, options: HfOptions
) -> tuple[list[str], list[list[str]], RowImages]:
    """One split's rows: their names (`<source>[<split>]#<row>`), labels (class names) and
    the reader of their images. Only the label column is read here."""
    dataset, where = _open(source, split, options)
    image, label = _columns(dataset, options, where)
    names = _label_names(dataset.features[label])
    values = dataset.data.column(label).to_pylist()
    labels = [_as_labels(value, names) for value in values]
    empty = next((row for row, labs in enumerate(labels) if not labs), None)
    if empty is not None:
        raise DataError(f"{where}#{empty}: no label in column '{label}'")
    return [f"{where}#{row}" for row in range(len(labels))], labels, RowImages(dataset, image)


def read_image_pairs(
    source: str, split: str | None, options: HfOptions
) -> tuple[list[str], RowImages, RowImages]:
    """One split's rows of an image and a mask column (segmentation): their names and the
    readers of both. The mask column is `label_column`, else the first Image feature after the
    image's."""
    import datasets

    dataset, where = _open(source, split, options)
    images = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    image = options.image_column or next(iter(images), None)
    mask = options.label_column or next((name for name in images if name != image), None)
    columns = ", ".join(dataset.features)
    for field, column in (("image_column", image), ("label_column", mask)):
        if column is None:
            raise DataError(f"{where}: needs two image columns, an image and a mask (columns: {columns})")
        if not isinstance(dataset.features.get(column), datasets.Image):
            raise DataError(
                f"data.hf.{field}: '{column}' in {where} is not an image column (columns: {columns})"
            )
    names = [f"{where}#{row}" for row in range(len(dataset))]
    return names, RowImages(dataset, image), RowImages(dataset, mask)
