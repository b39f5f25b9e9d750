"""The segmentation task (registered as `segmentation`)."""

from trainer.tasks.base import register_task
from trainer.tasks.segmentation.task import Segmentation

register_task(Segmentation())
