"""The consoles every `vft` subcommand prints to, and how a command fails: `error: <message>` on
stderr and the exit code (2 bad usage or input, 1 a failed run)."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    # the message verbatim: paths, configs and hints such as `vft[gpu]` hold brackets
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
