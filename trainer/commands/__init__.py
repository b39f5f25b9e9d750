"""`vft`'s own subcommands, one module each, loaded by `trainer.cli` when invoked."""
