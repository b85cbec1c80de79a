"""The ``adapterhub`` command line: click commands only (parse, call the API, print).

This package assembles the CLI: the root group and what commands build on live in :mod:`.app` (plugins'
commands import them from there); each ``*_cmds`` module adds its commands to the group; :func:`main` is the
console script.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from ..errors import AdapterhubError
from . import (  # noqa: F401  (each adds its commands to the group)
    combine_cmds,
    data_cmds,
    demo_cmds,
    eval_cmds,
    merge_cmds,
    plugin_cmds,
    registry_cmds,
    server_cmds,
    train_cmds,
)
from .app import PROCESS, cli

__all__ = ["add_plugin_commands", "cli", "main"]

_commands_from: set[str] = set()  # plugins whose register_commands already ran on this CLI


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for users print as one ``Warning: ...`` line; library noise stays quiet."""
    if issubclass(category, (RuntimeWarning, UserWarning)) and "adapterhub" in f"{filename} {message}":
        click.echo(f"Warning: {message}", err=True)


def add_plugin_commands() -> None:
    """Let plugins add their commands (``register_commands``), once per plugin and process."""
    from ..plugins import get_plugins

    get_plugins().add_commands(cli, _commands_from)


def main(argv: list[str] | None = None) -> None:
    import warnings

    PROCESS["main"] = True

    warnings.showwarning = _show_warning
    # bitsandbytes' CPU backend logs an optional-kernel notice on import: not for our users' screens
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        add_plugin_commands()
    except AdapterhubError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    try:
        cli.main(args=argv, prog_name="adapterhub")
    except SystemExit as exc:
        if PROCESS.get("fast_exit"):
            # a merge is done and its output closed: skip tearing down the interpreter, which with torch
            # loaded takes ~0.4 s (a third of a 1B merge's own time on the reference machine)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                click.echo(exc.code, err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(code)
        raise
