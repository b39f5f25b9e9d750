"""TensorBoard as a tracking backend (`track.backend: tensorboard`): event files under
RUN_DIR/tb/ with every epoch's figures as scalars (step = epoch) and, at the end, the run's
plots (learning curves, confusion matrix, predictions) as images. A resumed run opens a new event
file that purges steps from the first epoch on and writes every epoch again, TensorBoard's own
way to continue a run without a doubled step."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.components.tracking import TRACKERS, RunInfo, TrackOptions, numeric

TB_DIR = "tb"


@TRACKERS.register("tensorboard")
class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, options: TrackOptions):
        self.where = str(Path(options.run_dir, TB_DIR))
        self.writer = None

    def start(self, info: RunInfo) -> int:
        from torch.utils.tensorboard import SummaryWriter

        resumed = Path(self.where).is_dir() and any(Path(self.where).glob("events.out.tfevents.*"))
        self.writer = SummaryWriter(self.where, purge_step=1 if resumed else None)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(info.params.items())), 0)
        return 0

    def log_epoch(self, record: dict) -> None:
        step = int(record["epoch"])
        for key, value in numeric(record).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, status: str, files: dict[str, bytes]) -> None:
        for name, content in sorted(files.items()):
            if name.endswith(".png"):
                image = np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))
                self.writer.add_image(Path(name).stem, image, 0, dataformats="HWC")
        self.writer.add_text("status", status, 0)
        self.writer.close()
