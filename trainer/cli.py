"""The `vft` console script: a command group whose subcommands come from the `vft.commands`
entry points (trainer's data, validate, ls, train and submit; tuner's tune; serving's export,
serve, predict and eval). Each is imported only when it runs (or `vft --help` lists it), so
`vft validate` loads neither Ray Serve nor ONNX Runtime, and `trainer` imports neither `tuner`
nor `serving`. Each subcommand parses its arguments and calls one function.

Exit codes: 0 success, 1 run failed, 2 bad usage or invalid config/input.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

import typer
from typer.core import TyperGroup


@cache
def commands() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group="vft.commands")}


class LazyCommands(TyperGroup):
    """Lists every registered subcommand; imports one when it is asked for."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(commands())

    def get_command(self, ctx, name: str):
        if name not in commands():
            return None
        loaded = commands()[name].load()
        if isinstance(loaded, typer.Typer):  # a group of its own (`vft data ...`)
            group = typer.main.get_group(loaded)
            group.name = name
            return group
        single = typer.Typer(add_completion=False)
        single.command(name)(loaded)
        return typer.main.get_command(single)


app = typer.Typer(
    cls=LazyCommands,
    add_completion=False,
    no_args_is_help=True,
    help="Fine-tune, sweep, export and serve vision models.",
)


@app.callback()
def main_callback() -> None:
    """Fine-tune, sweep, export and serve vision models."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
