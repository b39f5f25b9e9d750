"""The detection task (registered as `detection`)."""

from trainer.tasks.base import register_task
from trainer.tasks.detection.task import Detection

register_task(Detection())
