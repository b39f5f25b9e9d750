"""The instance segmentation task (registered as `instance_segmentation`)."""

from trainer.tasks.base import register_task
from trainer.tasks.instance_segmentation.task import InstanceSegmentation

register_task(InstanceSegmentation())
