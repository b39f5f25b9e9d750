"""Cached-feature linear probes: the frozen backbone runs once over this worker's shard of the
training set; the head then trains on the kept features for every epoch (a probe's inputs do
not change when the backbone is frozen and the images are not augmented)."""

from __future__ import annotations

import torch
from torch import nn

from trainer.components.precision import autocast, to_device


class CachedFeatures:
    """The features and targets of one worker's shard, batched like its DataLoader and
    reshuffled each epoch (`set_epoch`); yields (features, targets, skipped images)."""

    def __init__(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        drop_last: bool,
        seed: int,
        skipped: int,
    ):
        self.features, self.targets = features, targets
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed
        self.skipped, self.epoch = skipped, 0

    def __len__(self) -> int:
        n = len(self.features)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(
            len(self.features), generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            skipped = self.skipped if i == 0 and self.epoch == 0 else 0  # counted once, as loaded
            yield self.features[index], self.targets[index], skipped


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    head: nn.Module,
    loader,
    device: torch.device,
    precision: str,
    memory_format: torch.memory_format,
    seed: int,
) -> CachedFeatures:
    """Run `model` in eval mode over `loader` once, keeping what flows into `head` (in float32,
    on the host: the cache may outgrow the accelerator)."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].float().cpu()))
    features, targets, skipped = [], [], 0
    was_training = model.training
    model.eval()
    try:
        for images, batch_targets, n_skipped in loader:
            skipped += n_skipped
            if images is None:
                continue
            with autocast(precision, device):
                model(to_device(images, device, memory_format))
            features.append(captured.pop())
            targets.append(batch_targets)
    finally:
        hook.remove()
        model.train(was_training)
    return CachedFeatures(
        torch.cat(features) if features else torch.empty(0),
        torch.cat(targets) if targets else torch.empty(0, dtype=torch.long),
        loader.batch_size,
        loader.drop_last,
        seed,
        skipped,
    )
