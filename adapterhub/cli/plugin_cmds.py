"""``adapterhub plugin init``: start a method plugin from a working package."""

from __future__ import annotations

import os

import click

from .app import cli, emit, json_option


@cli.group()
def plugin():
    """Write plugins (`adapterhub plugins` lists the installed ones)."""


@plugin.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--method", "method", required=True, help="The new method's name (lowercase, e.g. 'scale').")
@json_option
def plugin_init(directory, method, as_json):
    """Write a method plugin package into DIRECTORY (new or empty), named after its last component: pyproject
    with the entry point, the config, the torch side and a conformance test. `pip install -e DIRECTORY`
    installs it, `adapterhub methods` lists it, and `pytest` in DIRECTORY passes as written."""
    from ..scaffold import init_plugin, names_for

    files = init_plugin(directory, method)
    names = names_for(directory, method)
    result = {
        "directory": os.path.abspath(directory),
        "distribution": names["dist"],
        "package": names["package"],
        "method": method,
        "files": [os.path.relpath(f, directory) for f in files],
    }
    emit(
        as_json,
        result,
        lambda d: "\n".join(
            [f"wrote {d['distribution']} (package {d['package']}, method {d['method']}) in {directory}:"]
            + [f"  {f}" for f in d["files"]]
            + [f"next: pip install -e {directory} && adapterhub methods && (cd {directory} && pytest)"]
        ),
    )
