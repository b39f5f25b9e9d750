"""Live progress from the rank-0 worker to the driver's rich display.

Ray Train reports once per epoch; for a step-level bar (epoch, step, loss, img/s, ETA) the
rank-0 worker posts a small dict to a named actor at most every `interval` seconds
(fire-and-forget), and the driver polls it.
"""

from __future__ import annotations

import time

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self):
        self.latest: dict = {}
        self.epochs: list[dict] = []

    def post(self, update: dict) -> None:
        self.latest = update

    def post_epoch(self, record: dict) -> None:
        self.epochs.append(record)

    def read(self, seen_epochs: int) -> tuple[dict, list[dict]]:
        return self.latest, self.epochs[seen_epochs:]


class WorkerProgress:
    """Rank 0 posts; other ranks hold a None board and do nothing."""

    def __init__(self, board, interval: float = 0.5):
        self.board, self.interval, self.last = board, interval, 0.0

    def due(self) -> bool:
        """True (on rank 0) once `interval` seconds have passed since the last post."""
        return self.board is not None and time.monotonic() - self.last >= self.interval

    def step(self, **update) -> None:
        self.last = time.monotonic()
        self.board.post.remote(update)

    def epoch(self, record: dict) -> None:
        if self.board is not None:
            self.board.post_epoch.remote(record)
