"""Experiment tracking of a training run (`track.backend`): the driver of `vft train` (and of
each `vft tune` trial) hands every epoch's record to a `Tracker`, which logs it to the chosen
backends (registered in TRACKERS: trainer/components/track_mlflow.py, track_tensorboard.py)
from a background thread.

A tracker never fails a run: the first error of a backend prints one warning, the epochs it
missed stay pending and are logged at the next epoch or at the end if it has come back; what is
still missing then is listed. Logging is keyed by epoch (step = epoch), so a resumed run
continues the same tracked run without logging an epoch twice, and epochs logged by a killed
driver's run are not repeated.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from trainer.console import err
from trainer.registry import Registry

TRACKERS = Registry(
    "tracking backend", ("trainer.components.track_mlflow", "trainer.components.track_tensorboard")
)
FINISH_TIMEOUT_S = 60.0


@dataclass
class RunInfo:
    """What a backend logs once, when its run starts: the resolved config (dotted keys), tags
    (vft version, git commit, system), the datasets' identity, the parent run of a sweep's
    trial."""

    name: str
    run_dir: str
    params: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)
    datasets: list[dict] = field(default_factory=list)
    parent: dict | None = None  # {"run_id": ...} of the sweep's run (mlflow)


class TrackBackend(Protocol):
    name: str
    where: str  # for messages: the tracking URI or folder

    def start(self, info: RunInfo) -> int:
        """Create or continue the run; returns the last epoch it has already logged (0: none)."""

    def log_epoch(self, record: dict) -> None: ...

    def finish(self, status: str, files: dict[str, bytes]) -> None:
        """Attach files (artifact path -> bytes) and end the run: FINISHED, FAILED or KILLED."""


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: a config as tracker params."""
    if isinstance(tree, dict):
        items: dict[str, str] = {}
        for key, value in tree.items():
            items |= flatten(value, f"{prefix}{key}.")
        return items
    return {prefix.rstrip("."): "null" if tree is None else str(tree)}


def numeric(record: dict) -> dict[str, float]:
    """The figures of an epoch record a tracker can plot."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"
    }


class Tracker:
    """Logs a run to its backends from one background thread; `epoch(record)` never blocks."""

    def __init__(self, backends: list[TrackBackend]):
        self.backends, self.info = backends, None
        self.state = {b.name: {"started": False, "logged": 0, "warned": False} for b in backends}
        self.records: dict[int, dict] = {}
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="vft-tracker", daemon=True)

    def begin(self, info: RunInfo) -> None:
        """Start the backends' runs (in the background) with what they log once."""
        self.info = info
        if self.enabled:
            self.thread.start()
            self.jobs.put(("flush",))

    @property
    def enabled(self) -> bool:
        return bool(self.backends)

    def epoch(self, record: dict) -> None:
        if self.enabled:
            self.jobs.put(("epoch", dict(record)))

    def sync(self, history: list[dict]) -> None:
        """Every epoch of `history` (metrics.csv) not logged yet."""
        for record in history:
            self.epoch(record)

    def finish(self, status: str = "FINISHED", files: dict[str, bytes] | None = None) -> None:
        """Log what is pending, attach `files`, end the runs; waits up to FINISH_TIMEOUT_S."""
        if not self.enabled or not self.thread.is_alive():
            return
        done = threading.Event()
        self.jobs.put(("finish", status, files or {}, done))
        if not done.wait(FINISH_TIMEOUT_S):
            err.print(f"[yellow]tracking: still busy after {FINISH_TIMEOUT_S:.0f} s; not waiting longer")

    # the background thread --------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job[0] == "epoch":
                self.records[int(job[1]["epoch"])] = job[1]
            if self.jobs.qsize():  # catch up in one flush
                continue
            for backend in self.backends:
                self._flush(backend)
            if job[0] == "finish":
                _, status, files, done = job
                for backend in self.backends:
                    self._end(backend, status, files)
                done.set()
                return

    def _flush(self, backend: TrackBackend) -> None:
        state = self.state[backend.name]
        try:
            if not state["started"]:
                state["logged"] = backend.start(self.info)
                state["started"] = True
            for epoch in sorted(e for e in self.records if e > state["logged"]):
                backend.log_epoch(self.records[epoch])
                state["logged"] = epoch
        except Exception as exc:  # noqa: BLE001 - a tracker never fails the run
            if not state["warned"]:
                err.print(
                    f"[yellow]tracking: {backend.name} at {backend.where} failed ({type(exc).__name__}: "
                    f"{first_line(exc)}); training goes on, missed epochs are logged when it is back",
                    soft_wrap=True,
                )
                state["warned"] = True

    def _end(self, backend: TrackBackend, status: str, files: dict[str, bytes]) -> None:
        state = self.state[backend.name]
        missed = sorted(e for e in self.records if e > state["logged"])
        reason = "it did not answer"
        if state["started"] and not missed:
            try:
                backend.finish(status, files)
                return
            except Exception as exc:  # noqa: BLE001 - a tracker never fails the run
                reason = first_line(exc)
        what = f"epochs {missed[0]}-{missed[-1]}" if missed else "the end of the run"
        err.print(
            f"[yellow]tracking: {backend.name} at {backend.where} did not record {what} ({reason}); "
            f"the run's figures are in {self.info.run_dir}/metrics.csv",
            soft_wrap=True,
        )


def first_line(exc: BaseException) -> str:
    """An error's first line (MLflow's carry a whole HTTP trace), for one-line warnings."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


@dataclass
class TrackOptions:
    """`track.*` and where the run lives, as the backends take them."""

    backends: list[str]
    uri: str | None
    experiment: str
    storage: str  # run.storage
    run_dir: str


def open_tracker(options: TrackOptions) -> Tracker:
    """The run's tracker over its backends (none: a tracker that logs nothing); `begin` starts
    it. A backend that cannot work with these options (say, MLflow's embedded store with object
    storage) raises a ConfigError here, before any cluster starts."""
    return Tracker([TRACKERS.get(name)(options) for name in options.backends])
