"""vft trainer: config schema, registries, models, data, fine-tuning loop, checkpoints, CLI."""

__version__ = "0.1.0"
