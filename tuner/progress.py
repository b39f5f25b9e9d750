"""One line per trial event on the `vft.tune` logger (the CLI shows it unless --quiet).

The callback keeps no handles, so it pickles with the Tuner and works again on a resume.
"""

from __future__ import annotations

import logging
import re

from ray.tune import Callback

log = logging.getLogger("vft.tune")


ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Failed|Exit)\w*): (.*)$")


def error_line(text: str) -> str:
    """The most telling line of a trial's traceback: the last exception and its message (the
    trial's own TrialFailed wrapper left out)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for line in reversed(lines):
        match = ERROR_LINE.match(line)
        if match:
            name, message = match.groups()
            return (message if name == "TrialFailed" else f"{name}: {message}")[:300]
    return (lines[-1] if lines else "unknown error")[:300]


def describe(config: dict) -> str:
    return ", ".join(f"{key}={_short(value)}" for key, value in config.items())


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TrialLog(Callback):
    def __init__(self, metric: str):
        self.metric = metric

    def on_trial_start(self, iteration, trials, trial, **info):
        log.info("trial %s started: %s", trial.trial_id, describe(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is not None:
            log.info("trial %s epoch %s: %s %.4f", trial.trial_id, result.get("epoch"), self.metric, value)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        log.info("trial %s finished after epoch %s", trial.trial_id, result.get("epoch", "-"))

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = error_line(trial.get_error() or "")
        log.warning("trial %s failed, the sweep goes on: %s", trial.trial_id, reason)


class _DropTrialTracebacks(logging.Filter):
    """Tune logs each failed trial's whole traceback; vft logs one line (TrialLog), results.csv
    names the error, and Tune keeps the traceback in experiment/<trial_id>/error.txt."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("Trial task failed", "Trials did not complete"))


def drop_trial_tracebacks() -> None:
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTrialTracebacks) for f in logger.filters):
            logger.addFilter(_DropTrialTracebacks())
