"""What every command module builds on, the built-in ones and plugins' (``register_commands``) alike: the
root group :data:`cli`, the per-invocation :class:`App` with :data:`pass_app` and :func:`pass_app_for_refs`, the
parameter types :data:`BASE` and :data:`KEY_VALUE`, and the output helpers (:func:`emit`, :func:`json_option`,
:func:`format_table` ...).

Command modules import this module; :mod:`adapterhub.cli` imports them to assemble the CLI, so no command
module imports the package that lists it. Importing it is cheap (click only): commands import the API
(SQLAlchemy, torch ...) when they run, so ``adapterhub --help`` never imports torch.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable, Iterable

import click

from ..errors import AdapterhubError, ReportedElsewhere, describe, first_line


class App:
    """Per-invocation state: the home directory, lazily opened plugins and registry, and ``refs_remote``: the
    remote whose registry the command works on (set by :func:`pass_app_for_refs`; None: the default one)."""

    def __init__(self, home: str | None, refs_remote: str | None = None):
        self.home = home
        self.refs_remote = refs_remote
        self._registry = None

    @property
    def plugins(self):
        from ..plugins import get_plugins

        return get_plugins()

    @property
    def home_dir(self) -> str:
        from ..config import home_dir

        return home_dir(self.home)

    @property
    def registry(self):
        """The registry the command works on: remote :attr:`refs_remote` if set, else the environment's team
        registry if set, else the local one. Its refs may name no other registry (``Registry.resolve``)."""
        if self._registry is None:
            from ..api import open_registry

            self._registry = open_registry(self.home, self.plugins, remote=self.refs_remote)
        return self._registry

    @property
    def local(self):
        """The local registry, whatever the environment says."""
        from ..api import local_registry

        return local_registry(self.home, self.plugins)

    def remote(self, name: str):
        from ..api import open_registry

        return open_registry(self.home, self.plugins, remote=name)

    def for_name(self, name: str) -> tuple[Any, str]:
        """``(registry, name)`` for a name that may carry a remote prefix: ``hub:acme/bot`` is ``acme/bot``
        in remote ``hub``; a plain name is in the default registry."""
        from ..registry.refs import REMOTE_RE

        head, sep, rest = name.partition(":")
        if sep and "/" not in head and REMOTE_RE.fullmatch(head):
            return self.remote(head), rest
        return self.registry, name

    def for_refs(self, command: str, refs: Iterable[str | None]) -> "App":
        """This run's App for a command on ``refs``: on the registry they name (``team:acme/bot:3``: remote
        ``team``), or this one when they name no remote. Refs naming different registries are refused."""
        from ..errors import InvalidInput
        from ..registry.refs import parse_ref

        wheres = {parse_ref(ref).remote for ref in refs if ref is not None}
        if len(wheres) > 1:
            shown = ", ".join(sorted(w or "the default registry" for w in wheres))
            raise InvalidInput(
                f"{command}: the refs name different registries ({shown}); "
                "copy them into one first (adapterhub pull REMOTE:REF)"
            )
        remote = wheres.pop() if wheres else None
        return self if remote is None else App(self.home, refs_remote=remote)


#: the decorator that passes a command its :class:`App` as the first argument
pass_app = click.make_pass_decorator(App)


def pass_app_for_refs(*params: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """:data:`pass_app` for a command that reads or annotates the version its refs (the parameters named)
    name, in whichever registry: ``show team:acme/bot:3`` shows version 3 of remote ``team``. The App passed
    works on that registry (:meth:`App.for_refs`). A command declared with plain :data:`pass_app` works on
    the default registry and refuses a ref naming a remote."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            app = ctx.find_object(App)
            if app is None:
                raise RuntimeError(f"{f.__name__} runs under the adapterhub group (it makes the App)")
            return ctx.invoke(f, app.for_refs(ctx.command.name or "", (kwargs[p] for p in params)), *args, **kwargs)

        return functools.update_wrapper(run, f)

    return decorate


def _as_click_error(exc: BaseException) -> click.ClickException:
    if isinstance(exc, (AdapterhubError, OSError)):
        return click.ClickException(describe(exc))
    mod = type(exc).__module__
    if mod.startswith("sqlalchemy"):
        orig = getattr(exc, "orig", None) or exc
        msg = first_line(orig)
        if "readonly" in msg or "read-only" in msg or "unable to open database" in msg:
            return click.ClickException(f"the registry database is not writable: {msg}")
        return click.ClickException(f"registry database error: {msg}")
    return click.ClickException(f"internal error: {describe(exc)} (set ADAPTERHUB_DEBUG=1 for the traceback)")


class AdapterhubGroup(click.Group):
    """A group that turns every error into one ``Error: ...`` line and exit code 1."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["adapterhub.argv"] = list(args)  # the URLs in them are scrubbed from error text
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except ReportedElsewhere:  # another process of this run printed the error
            raise click.exceptions.Exit(1) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            if os.environ.get("ADAPTERHUB_DEBUG"):
                raise
            from ..registry.remotes import known_urls, scrub

            error = _as_click_error(exc)
            error.message = scrub(
                error.message, known_urls(ctx.params.get("home"), ctx.meta.get("adapterhub.argv", ()))
            )
            raise error from None


@click.group(cls=AdapterhubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="ADAPTERHUB_HOME",
    help="Registry home (default: $ADAPTERHUB_HOME or ~/.adapterhub).",
)
@click.version_option(package_name="adapterhub")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """Train, version, merge, stack, quantize and ship PEFT adapters."""
    ctx.obj = App(home)


class BaseParam(click.ParamType):
    """A base model: a directory, or a Hugging Face id ``ORG/NAME[@REVISION]`` resolved to a snapshot of the
    Hugging Face cache (``files.hub.resolve_base``). The one place every ``--base`` / ``BASE`` goes through;
    a resolution error surfaces as the group's one ``Error:`` line."""

    name = "DIR|ORG/NAME[@REV]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from ..files.hub import resolve_base

        return value if not isinstance(value, str) else resolve_base(value).path


#: the type of every ``--base`` option and ``BASE`` argument (plugins use it too)
BASE = BaseParam()


class KeyValueParam(click.ParamType):
    """``KEY=VALUE`` (``--set r=16``, ``--tag team=nlp``, ``--quant-opt blocksize=128``), as a ``(key, value)``
    pair (``dict(...)`` of a repeated option is its mapping); spaces around the key are dropped. The one place
    such options are parsed."""

    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        if not sep or not key.strip():
            self.fail(f"expected key=value, got {value!r}", param, ctx)
        return key.strip(), val


#: the type of every ``KEY=VALUE`` option and argument
KEY_VALUE = KeyValueParam()


def emit(as_json: bool, data: Any, text: Callable[[Any], str] | str | None = None) -> None:
    """Print ``data`` as JSON, or as text made by ``text``."""
    if as_json:
        # long listings use the C encoder (no indent): 10,000 rows print in milliseconds
        indent = None if isinstance(data, list) and len(data) > 100 else 2
        try:
            text_out = json.dumps(data, indent=indent, default=str, allow_nan=False)
        except ValueError:  # NaN / inf (a broken adapter's metrics): null, as JSON has no such numbers
            from ..registry.registry import finite

            text_out = json.dumps(finite(data), indent=indent, default=str)
        click.echo(text_out)
    elif callable(text):
        out = text(data)
        if out:
            click.echo(out)
    elif text is not None:
        click.echo(text)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


#: ``--task``'s choices
TASK_CHOICE = click.Choice(["causal-lm", "seq-cls"])


def format_table(head, body) -> str:
    """Rows under a header, each column as wide as its widest cell."""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *body])


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal); returns (callback, close)."""
    from tqdm import tqdm

    bar = tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=None, leave=False
    )
    return bar.update, bar.close


def batch_text(world_size: int, batch_size: int, grad_accum: int) -> str:
    """``2 processes x 4 rows x 2 accumulation steps``: what a global batch is made of."""
    parts = [f"{world_size} process" + ("es" if world_size != 1 else ""), f"{batch_size} rows"]
    if grad_accum != 1:
        parts.append(f"{grad_accum} accumulation steps")
    return " x ".join(parts)


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


#: ``main``: true when this process is the ``adapterhub`` command (set by :func:`adapterhub.cli.main`, the
#: console script), false when the click group runs inside another program; ``fast_exit``: a command asks
#: ``main`` to end the process without tearing down the interpreter
PROCESS = {"main": False, "fast_exit": False}
