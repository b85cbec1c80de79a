"""CLI commands: combine (several adapters into a new one) and compose (an ordered stack of versions)."""

from __future__ import annotations

import click

from .app import App, cli, emit, json_option, pass_app

HOWS = (
    "linear",
    "cat",
    "svd",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
)  # adapterhub.operations.combine.HOWS


def _weights(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated numbers, e.g. 0.7,0.3") from None


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--how",
    type=click.Choice(HOWS),
    default="linear",
    show_default=True,
    help="cat: factors concatenated (exact); linear: weighted sum of the updates ΔW = s·B·A, exact at "
    "rank Σ ranks; svd: the same truncated to --rank; ties, dare_linear, dare_ties, magnitude_prune: "
    "PEFT's merge maths on ΔW, then truncated to --rank.",
)
@click.option("--weights", metavar="W1,W2,...", help="One weight per REF (default 1.0 each).")
@click.option("--density", type=float, help="Fraction of entries kept, in (0, 1] (ties, dare_*, magnitude_prune).")
@click.option(
    "--rank", type=int, help="Rank of the result (svd, ties, dare_*, magnitude_prune; default: largest input rank)."
)
@click.option("--seed", type=int, help="Seed of DARE's random drop (dare_linear, dare_ties; default 0).")
@click.option("--name", required=True, help="Adapter name of the new version (namespace/name).")
@click.option("--alias", "aliases", multiple=True, help="Point this alias at the new version (repeatable).")
@json_option
@pass_app
def combine(app: App, refs, how, weights, density, rank, seed, name, aliases, as_json):
    """Combine adapter versions REFS (one method, one base) into a new version of NAME.

    The new version records a combined_from edge to each REF with its weight and the options."""
    from ..operations.combine import combine as do_combine

    pub = do_combine(
        app.registry,
        list(refs),
        name,
        how=how,
        weights=_weights(weights),
        density=density,
        rank=rank,
        seed=seed,
        aliases=aliases,
        plugins=app.plugins,
        home=app.home,
    )

    def text(d):
        c = d["combine"]
        opts = ", ".join(f"{k}={c[k]}" for k in ("density", "rank", "seed") if c[k] is not None)
        src = " + ".join(f"{i['weight']:g}·{i['ref']}" for i in c["inputs"])
        return f"{d['ref']} = {how}({src}{', ' + opts if opts else ''})" + (
            "" if d["created"] else "  (already present)"
        )

    emit(as_json, pub.to_dict(), text)


@cli.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--name", required=True, help="Adapter name of the composition (namespace/name).")
@click.option("--alias", "aliases", multiple=True, help="Point this alias at the new version (repeatable).")
@json_option
@pass_app
def compose(app: App, refs, name, aliases, as_json):
    """Store the ordered stack REFS as a version of NAME (kind composition).

    Load it with adapterhub.operations.compose.load_stack and attach it with attach_stack (all active) or
    attach_routed (one adapter per row)."""
    from ..operations.compose import compose as do_compose

    pub = do_compose(app.registry, list(refs), name, aliases=aliases, plugins=app.plugins)
    emit(
        as_json,
        pub.to_dict(),
        lambda d: (
            f"{d['ref']} = [{', '.join(s['ref'] for s in d['stack'])}]"
            + ("" if d["created"] else "  (already present)")
        ),
    )
