"""The Train workers' entry point, in a module that imports nothing heavy.

Ray pickles `train_worker` by reference, so every process that unpickles the trainer imports
this module: the Train controller and, under `vft tune`, each trial's process, besides the
workers. Only the workers need the training loop (torch's compiler stack through torchvision,
timm's model zoo: seconds of CPU per process), so it is imported here, on the worker.
"""

from __future__ import annotations


def train_worker(loop_config: dict) -> None:
    """TorchTrainer's train_loop_per_worker: `trainer.engine.loop.train_worker`."""
    from trainer.engine.loop import train_worker as run

    run(loop_config)
