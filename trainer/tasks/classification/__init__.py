"""The classification task (registered as `classification`)."""

from trainer.tasks.base import register_task
from trainer.tasks.classification.task import Classification

register_task(Classification())
