"""`torch`: the checkpoint itself in PyTorch, bf16 autocast and channels_last on a GPU, fp32 on
the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.runtime.base import Backend
from serving.runtime.registry import BACKENDS
from serving.runtime.rundir import checkpoint_dir
from trainer.components.deploy import IMAGES
from trainer.tasks.base import Task, model_from_checkpoint


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Floating outputs as float32 (from bf16 too), others (labels) as they are."""
    return (tensor.float() if tensor.is_floating_point() else tensor).cpu().numpy()


@BACKENDS.register("torch")
class TorchBackend(Backend):
    def __init__(self, run_dir: Path, task: Task, threads: int | None = None, device: str | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.task = task
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.gpu = self.device.type == "cuda"
        model, _ = model_from_checkpoint(checkpoint_dir(run_dir))
        self.memory_format = torch.channels_last if self.gpu else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.name = f"torch ({self.device.type}{', bf16' if self.gpu else ''})"

    def on_gpu(self) -> bool:
        return self.gpu

    def __call__(self, inputs: Any) -> Any:
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=self.gpu):
            if self.task.input_kind == IMAGES:  # one call on the list: the model batches the images
                images = [torch.from_numpy(x).to(self.device) for x in inputs]
                return [tuple(map(to_numpy, out)) for out in self.task.graph_outputs(self.model, images)]
            # to the device first, then channels_last there (a CPU-side permute costs more)
            batch = torch.from_numpy(inputs).to(self.device).contiguous(memory_format=self.memory_format)
            return to_numpy(self.task.graph_outputs(self.model, batch))
