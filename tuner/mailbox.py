"""The channel between a trial's Train run and the trial's Tune driver: one small async actor.

The Ray Train controller (`ForwardReports`, a Train callback) posts each report and waits until
the trial's driver has handed it to Tune and acknowledged it, so Ray Train cannot rotate the
report's checkpoint away while Tune copies it. One actor carries both directions (an earlier
version used two `ray.util.queue.Queue`s: two actor processes per trial)."""

from __future__ import annotations

import asyncio
import contextlib

import ray
from ray.train import UserCallback

ACK_TIMEOUT_S = 600.0


@ray.remote(num_cpus=0)
class Mailbox:
    """Holds at most one report at a time; `post` returns once the report is acknowledged."""

    def __init__(self):
        self._reports: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._acks: asyncio.Queue = asyncio.Queue()

    async def post(self, report, timeout: float) -> None:
        """Called by the controller: queue `report`, then wait for its acknowledgement, at most
        `timeout` seconds (none comes when the driver is gone: its trial was stopped)."""
        await self._reports.put(report)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._acks.get(), timeout)

    async def take(self, timeout: float):
        """Called by the driver: the next report, or None after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self._reports.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def ack(self) -> None:
        self._acks.put_nowait(True)

    async def pending(self) -> bool:
        return not self._reports.empty()


class ForwardReports(UserCallback):
    """Runs in the Ray Train controller: posts each report (metrics, checkpoint and the
    controller's own handle, for aborting the run) and waits until the driver has taken it."""

    def __init__(self, mailbox):
        self.mailbox = mailbox

    def after_report(self, run_context, metrics, checkpoint):
        controller = ray.get_runtime_context().current_actor
        report = (dict(metrics[0]), checkpoint, controller)
        with contextlib.suppress(ray.exceptions.RayError):  # the driver and its mailbox are gone
            ray.get(self.mailbox.post.remote(report, ACK_TIMEOUT_S))
