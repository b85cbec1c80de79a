"""Registry-server commands: serve, token, login, logout, audit."""

from __future__ import annotations

import sys

import click

from .app import App, cli, emit, format_table, json_option, pass_app

SCOPES = ("read", "write", "promote", "admin")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8750, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Server processes.")
@click.option("--max-blob-size", default="20GB", show_default=True, help="Largest blob an upload may send.")
@pass_app
def serve(app: App, host, port, workers, max_blob_size):
    """Serve the registry over HTTP, behind scoped tokens (needs the [server] extra).

    Serves the registry of --home / ADAPTERHUB_HOME, or ADAPTERHUB_REGISTRY_DB + ADAPTERHUB_REGISTRY_STORE
    (PostgreSQL + S3 for a team: run several servers over them behind a load balancer). Clients use
    `adapterhub remote add NAME http://HOST:PORT --token-env VAR`; create tokens with `adapterhub token
    create`. API docs at /docs; probes at /healthz and /readyz."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "adapterhub serve needs the server extra: pip install 'adapterhub[server]'"
        ) from None
    from ..plugins import get_plugins
    from ..registry import remotes
    from ..server.run import serve as run
    from ..sizes import parse_size

    env = remotes.env_registry()
    describe = (
        f"registry {remotes.mask(env['db'])} + {remotes.mask(env['store'])}" if env else f"registry {app.home_dir}"
    )
    get_plugins().load()
    run(app.home, host, port, workers, parse_size(max_blob_size, "--max-blob-size"), describe, echo=click.echo)


# -- tokens ---------------------------------------------------------------------------------------
@cli.group()
def token():
    """API tokens of the registry server (scoped, expiring, namespace-bound)."""


def _admin_target(app: App, remote: str | None):
    """The registry that token/audit commands act on: a server remote (needs an admin token), else the
    registry's database itself (server admins have it)."""
    if remote:
        return app.remote(remote)
    return app.registry


@token.command(name="create")
@click.option("--name", required=True, help="The token's name: the actor recorded for what it does.")
@click.option("--scope", required=True, type=click.Choice(SCOPES), help="read < write < promote < admin.")
@click.option("--namespace", help="Bind the token to one namespace (it sees and touches only NAMESPACE/*).")
@click.option("--expires", help="Lifetime: 90d, 12h, 30m, 2w, or never (default: never).")
@click.option("--remote", metavar="REMOTE", help="Create it through a registry server (needs an admin token).")
@json_option
@pass_app
def token_create(app: App, name, scope, namespace, expires, remote, as_json):
    """Create a token and print its secret once (only a salted hash is stored)."""
    reg = _admin_target(app, remote)
    if remote:
        d = reg.create_token(name, scope, namespace, expires)
    else:
        from ..registry.tokens import create_token

        d = create_token(reg, name, scope, namespace, expires)
    out = {k: d[k] for k in ("name", "scope", "namespace", "expires_at", "token")}
    emit(
        as_json,
        out,
        lambda d: (
            f"{d['token']}\n"
            + click.style(
                f"token '{d['name']}' (scope {d['scope']}, namespace {d['namespace'] or 'all'}, expires "
                f"{d['expires_at'] or 'never'}): store it now, it is not shown again",
                dim=True,
            )
        ),
    )


@token.command(name="list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@click.option("--remote", metavar="REMOTE", help="List through a registry server (needs an admin token).")
@json_option
@pass_app
def token_list(app: App, include_revoked, remote, as_json):
    """List tokens (never their secrets)."""

    reg = _admin_target(app, remote)
    if remote:
        rows = reg.list_tokens(include_revoked)
    else:
        from ..registry.tokens import list_tokens

        rows = list_tokens(reg, include_revoked)
    keys = ("name", "scope", "namespace", "expires_at", "state", "created_at", "created_by", "last_used_at")
    rows = [{k: r.get(k) for k in keys} for r in rows]
    emit(
        as_json,
        rows,
        lambda rows: (
            format_table(
                ("NAME", "SCOPE", "NAMESPACE", "EXPIRES", "STATE", "CREATED", "BY", "LAST USED"),
                [
                    (
                        r["name"],
                        r["scope"],
                        r["namespace"] or "*",
                        (r["expires_at"] or "never")[:19],
                        r["state"],
                        (r["created_at"] or "")[:19],
                        r["created_by"] or "-",
                        (r["last_used_at"] or "never")[:19],
                    )
                    for r in rows
                ],
            )
            if rows
            else "no tokens"
        ),
    )


@token.command(name="revoke")
@click.argument("name")
@click.option("--remote", metavar="REMOTE", help="Revoke through a registry server (needs an admin token).")
@json_option
@pass_app
def token_revoke(app: App, name, remote, as_json):
    """Revoke token NAME: every request with it is refused from now on."""
    reg = _admin_target(app, remote)
    if remote:
        d = reg.revoke_token(name)
    else:
        from ..registry.tokens import revoke_token

        d = revoke_token(reg, name)
    emit(as_json, {k: d.get(k) for k in ("name", "scope", "namespace", "revoked_at")}, f"revoked token '{name}'")


# -- login ----------------------------------------------------------------------------------------
@cli.command()
@click.argument("remote")
@json_option
@pass_app
def login(app: App, remote, as_json):
    """Save a token for server remote REMOTE (read from stdin, or a hidden prompt).

    The token is checked with the server, then kept in <home>/credentials.json (mode 0600). A remote's
    --token-env variable, when set, takes precedence."""
    from ..registry import remotes
    from ..registry.client import HttpRegistry

    spec = remotes.get_remote(app.home_dir, remote)
    if "url" not in spec:
        raise click.ClickException(f"remote {remote!r} is a database remote: its credentials are in its URLs")
    if sys.stdin.isatty():
        secret = click.prompt(f"token for {remote} ({spec['url']})", hide_input=True, err=True)
    else:
        secret = sys.stdin.readline()
    secret = (secret or "").strip()
    if not secret:
        raise click.ClickException("no token given (pipe it on stdin or type it at the prompt)")
    who = HttpRegistry(spec["url"], secret, label=remote).whoami()
    remotes.save_token(app.home_dir, remote, secret)
    emit(
        as_json,
        {"remote": remote, **who},
        f"logged in to {remote} as '{who['name']}' (scope {who['scope']}, namespace {who['namespace'] or 'all'})",
    )


@cli.command()
@click.argument("remote")
@pass_app
def logout(app: App, remote):
    """Forget the token saved for server remote REMOTE."""
    from ..registry import remotes

    removed = remotes.forget_token(app.home_dir, remote)
    click.echo(f"forgot the token of {remote}" if removed else f"no token saved for {remote}")


# -- audit ----------------------------------------------------------------------------------------
@cli.command()
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--actor", help="Only events of this token name.")
@click.option("--action", help="Only this action (push, alias.set, alias.rm, tag, eval, token.create ...).")
@click.option("--remote", metavar="REMOTE", help="Read it through a registry server (needs an admin token).")
@json_option
@pass_app
def audit(app: App, limit, actor, action, remote, as_json):
    """Who did what to the registry, and when (refused requests included), newest first."""

    reg = _admin_target(app, remote)
    if remote:
        rows = reg.audit(limit, actor, action)
    else:
        from ..registry.audit import list_events

        with reg.read() as conn:
            rows = list_events(conn, limit, actor, action)
    emit(
        as_json,
        rows,
        lambda rows: (
            format_table(
                ("AT", "ACTOR", "ACTION", "TARGET", "STATUS", "DETAIL"),
                [
                    (
                        (r["at"] or "")[:19],
                        r["actor"] or "-",
                        r["action"],
                        r["target"] or "-",
                        r["status"],
                        (r["detail"] or "")[:80],
                    )
                    for r in rows
                ],
            )
            if rows
            else "no events"
        ),
    )
