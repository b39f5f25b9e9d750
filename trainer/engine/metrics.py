"""Prometheus series from the rank-0 Train worker, exported by Ray's metrics agent beside Ray's
own (`ray_` prefixed, on every node's metrics port, which the chart's PodMonitors scrape): after
each epoch, the epochs done, the training loss and throughput (all workers) and the monitored
validation metric, tagged by run. The serving series are in serving/app.py."""

from __future__ import annotations

from ray.util.metrics import Gauge

RUN = ("run",)


class TrainMetrics:
    def __init__(self, run: str, monitor: str):
        self.tags, self.monitor = {"run": run}, monitor
        self.epoch = Gauge("vft_train_epoch", "Epochs completed", tag_keys=RUN)
        self.loss = Gauge("vft_train_loss", "Mean training loss of the last epoch", tag_keys=RUN)
        self.throughput = Gauge(
            "vft_train_images_per_second",
            "Training images per second of the last epoch, all workers",
            tag_keys=RUN,
        )
        self.monitored = Gauge(
            "vft_val_monitored", "The monitored validation metric (train.monitor) after the last epoch",
            tag_keys=("run", "metric"),
        )  # fmt: skip

    def record(self, record: dict) -> None:
        self.epoch.set(record["epoch"], tags=self.tags)
        self.loss.set(record["train/loss"], tags=self.tags)
        self.throughput.set(record["train/img_s"], tags=self.tags)
        if self.monitor in record:
            self.monitored.set(record[self.monitor], tags={**self.tags, "metric": self.monitor})
