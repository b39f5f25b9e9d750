"""Run-directory files besides checkpoints: metrics.csv, config.yaml, small text writes to
local or object storage."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from trainer.components.checkpoint import is_remote

FIRST_COLUMNS = ["epoch", "train/loss"]
LAST_COLUMNS = ["lr", "time"]


def write_text(uri: str, text: str) -> None:
    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        with fs.open_output_stream(path) as out:
            out.write(text.encode())
        return
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    Path(uri).write_text(text)


def read_bytes(uri: str) -> bytes | None:
    if is_remote(uri):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(uri)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.read()
    return Path(uri).read_bytes() if Path(uri).is_file() else None


def read_text(uri: str) -> str | None:
    data = read_bytes(uri)
    return None if data is None else data.decode()


def metrics_columns(history: list[dict]) -> list[str]:
    keys = [k for row in history for k in row]
    middle = sorted({k for k in keys if k.startswith("val/")})
    rest = sorted({k for k in keys} - set(FIRST_COLUMNS) - set(LAST_COLUMNS) - set(middle))
    return FIRST_COLUMNS + middle + rest + LAST_COLUMNS


def write_metrics_csv(uri: str, history: list[dict]) -> None:
    """One row per epoch: epoch, train/loss, val/<metric>..., other figures, lr, time."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=metrics_columns(history), extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text(uri, buffer.getvalue())


def read_metrics_csv(uri: str) -> list[dict]:
    text = read_text(uri)
    if not text:
        return []
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: _number(v) for k, v in row.items()})
    return rows


def _number(value: str):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value else number
