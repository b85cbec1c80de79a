"""Registry commands: push, pull, list, show, alias, tag, lineage, verify, gc, fingerprint, plugins, db."""

from __future__ import annotations

import os

import click

from ..registry.entities import VersionInfo
from ..registry.refs import RELATIONS
from .app import (
    BASE,
    KEY_VALUE,
    App,
    batch_text,
    cli,
    emit,
    format_table,
    human_size,
    json_option,
    pass_app,
    pass_app_for_refs,
    progress_bar,
)


@cli.command()
@click.argument("src")
@click.argument("name", required=False)
@click.option("--base", type=BASE, help="Base model directory; its fingerprint is recorded and checked.")
@click.option("--alias", "aliases", multiple=True, help="Point this alias at the new version (repeatable).")
@click.option("--tag", "tags", multiple=True, type=KEY_VALUE, metavar="K=V", help="Tag the version (repeatable).")
@click.option("--parent", "parents", multiple=True, metavar="REF", help="A version this one derives from (repeatable).")
@click.option(
    "--relation",
    type=click.Choice(RELATIONS),
    default="trained_from",
    show_default=True,
    help="How the version relates to --parent.",
)
@click.option("--import-bin", is_flag=True, help="Convert pickle .bin/.pt files with torch.load(weights_only=True).")
@click.option(
    "--to", "to", metavar="REMOTE", help="Push to a named remote; SRC may then be a ref of the local registry."
)
@json_option
@pass_app
def push(app: App, src, name, base, aliases, tags, parents, relation, import_bin, to, as_json):
    """Register the adapter directory SRC as a new version of NAME (namespace/name).

    SRC may be a PEFT adapter repo on the Hugging Face Hub, hf://ORG/NAME[@REVISION]: it is imported
    (safetensors only unless --import-bin) with an imported_from lineage edge naming the resolved commit.

    With --to REMOTE and SRC a ref (acme/bot:3), copy that version with its blobs, lineage, tags and
    evaluations to the remote; its digest stays the same."""
    from ..api import copy
    from ..api import push as do_push
    from ..files.checkpoint import list_files
    from ..registry.registry import ParentSpec

    target = app.remote(to) if to else app.registry
    if to and not os.path.isdir(src) and not src.startswith("hf://"):
        if name is not None or base or parents or import_bin:
            raise click.UsageError("copying a version with --to takes only SRC (a ref), --alias, --tag and --json")
        info = app.registry.show(src)
        update, close = progress_bar(info.size, f"push {to}")
        try:
            pub = copy(app.registry, target, src, progress=update)
            if aliases or tags:
                pub = _apply(target, pub, aliases, dict(tags))
        finally:
            close()
        d = {**pub.to_dict(), "remote": to}
        emit(as_json, d, lambda d: f"{d['ref']} -> {to}" + ("" if d["created"] else "  (already present)"))
        return
    if name is None:
        raise click.UsageError("missing argument NAME (push DIR NAME)")
    total = sum(os.path.getsize(f) for _, f in list_files(src)) if os.path.isdir(src) else 0
    update, close = progress_bar(total, "upload")
    try:
        pub = do_push(
            target,
            src,
            name,
            base=base,
            aliases=aliases,
            tags=dict(tags),
            parents=[ParentSpec(relation, ref=p) for p in parents],
            import_bin=import_bin,
            home=app.home,
            plugins=app.plugins,
            progress=update,
        )
    finally:
        close()
    emit(as_json, pub.to_dict(), lambda d: d["ref"] + ("" if d["created"] else "  (already present)"))


def _apply(reg, pub, aliases, tags):
    from ..registry.gates import set_alias

    for a in aliases:
        set_alias(reg, pub.name, a, str(pub.version))  # protected aliases pass the promotion gate
    if tags:
        reg.set_tags(pub.ref, tags)
    return pub


@cli.command()
@click.argument("ref")
@click.option("--out", type=click.Path(), help="Directory to write the files to.")
@click.option("--from", "from_", metavar="REMOTE", help="Pull from a named remote (same as REMOTE:REF).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option("--merged", is_flag=True, help="Write the base model with the adapter merged in (needs --base).")
@click.option("--base", type=BASE, help="The base model directory to merge into (--merged).")
@click.option(
    "--dtype", type=click.Choice(("bf16", "fp16", "fp32")), help="--merged: output dtype (default: the base's)."
)
@click.option("--shard-size", default="5GB", show_default=True, help="--merged: largest output shard.")
@click.option("--allow-base-mismatch", is_flag=True, help="--merged: merge even if the base fingerprint differs.")
@json_option
@pass_app
def pull(app: App, ref, out, from_, force, merged, base, dtype, shard_size, allow_base_mismatch, as_json):
    """Materialize version REF into OUT; every blob is verified by sha256 as it is read.

    From a remote (team:acme/bot@production, or --from team) the version is first copied into the local
    registry with its lineage, then materialized (if --out is given).

    With --merged --base DIR, OUT gets a plain transformers model with the adapter merged in, streamed
    tensor by tensor (and cached where that pays: see `adapterhub merge --help`)."""
    from ..api import copy
    from ..api import pull as do_pull
    from ..registry.refs import parse_ref

    if merged and (not base or not out):
        raise click.UsageError("--merged needs --base DIR and --out DIR")
    if out:  # never write over (or inside) the registry, even with --force
        from ..registry.maintenance import check_out_registry

        check_out_registry(out, [("registry home", app.home_dir)])
    if not merged and (base or dtype or allow_base_mismatch):
        raise click.UsageError("--base, --dtype and --allow-base-mismatch go with --merged")
    parsed = parse_ref(ref)
    remote = parsed.remote or from_
    if parsed.remote and from_ and parsed.remote != from_:
        raise click.UsageError(f"REF names remote {parsed.remote!r} but --from says {from_!r}")
    bare = str(parsed.__class__(**{**parsed.__dict__, "remote": None}))
    source = app.registry
    result: dict = {}
    if remote:
        src = app.remote(remote)
        info = src.show(bare)
        update, close = progress_bar(info.size, f"pull {remote}")
        try:
            pub = copy(src, app.local, bare, progress=update)
        finally:
            close()
        result["copied"] = {**pub.to_dict(), "remote": remote}
        source, bare = app.local, "sha256:" + pub.digest
    elif not out:
        raise click.UsageError("missing option --out (required unless pulling from a remote)")
    if out and merged:
        from .merge_cmds import merge_text, run_merge

        result.update(
            run_merge(
                app,
                bare,
                base,
                out,
                dtype=dtype,
                shard_size=shard_size,
                allow_base_mismatch=allow_base_mismatch,
                force=force,
                registry=source,
                deploy=bool(remote),
            )
        )  # (a deployment keeps no cache unless asked)
        emit(as_json, result, merge_text)
        return
    if out:
        info = source.show(bare)
        update, close = progress_bar(info.size, "download")
        try:
            result.update(do_pull(source, bare, out, force=force, progress=update))
        finally:
            close()

    def text(d):
        lines = []
        if "copied" in d:
            c = d["copied"]
            lines.append(f"{remote}:{bare if not out else d['copied']['ref']} -> local {c['ref']} ({c['digest'][:19]})")
        if "out" in d:
            lines.append(f"{d['ref']} -> {d['out']} ({len(d['files'])} files, {human_size(d['bytes'])})")
        return "\n".join(lines)

    emit(as_json, result, text)


@cli.group()
def remote():
    """Named team registries (database URL + blob store URL)."""


@remote.command(name="add")
@click.argument("name")
@click.argument("url", required=False)
@click.option(
    "--token-env",
    metavar="VAR",
    help="Server remotes: read the token from this environment variable (else from adapterhub login NAME).",
)
@click.option("--db", help="Database remotes: postgresql://user:password@host/db (or sqlite:///path).")
@click.option("--store", help="Database remotes: s3://bucket/prefix (or file:///path).")
@click.option("--endpoint-url", help="Database remotes: an S3-compatible endpoint (MinIO, Ceph, moto ...).")
@click.option("--replace", is_flag=True, help="Replace an existing remote of that name.")
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Connect now (a server: answers; a database: reachable and migrated).",
)
@json_option
@pass_app
def remote_add(app: App, name, url, token_env, db, store, endpoint_url, replace, check, as_json):
    """Add a named remote: a registry server (NAME https://HOST[:PORT]) or a database + store
    (NAME --db URL --store URL). Saved in <home>/config.json, readable only by you."""
    from ..api import check_remote
    from ..registry import remotes

    # the new remote is checked (server answers / database reachable and migrated, store readable) before
    # config.json changes: a failed --replace leaves the working remote in place
    d = remotes.add_remote(
        app.home_dir,
        name,
        db,
        store,
        endpoint_url,
        replace=replace,
        url=url,
        token_env=token_env,
        check=(lambda spec: check_remote(spec, app.plugins)) if check else None,
    )
    where = (
        d["url"] + (f" (token from ${d['token_env']})" if d.get("token_env") else "")
        if "url" in d
        else f"{d['db']} + {d['store']}"
    )
    emit(as_json, d, f"added remote {name}: {where}")


@remote.command(name="list")
@json_option
@pass_app
def remote_list(app: App, as_json):
    """List remotes (credentials masked)."""
    from ..registry import remotes

    rows = remotes.list_remotes(app.home_dir)
    emit(
        as_json,
        rows,
        lambda rows: (
            format_table(
                ("NAME", "WHERE", "CREDENTIALS"),
                [
                    (
                        r["name"],
                        r.get("url") or f"{r['db']} + {r['store']}",
                        (f"${r['token_env']}" if r.get("token_env") else "login") if "url" in r else "in the URLs",
                    )
                    for r in rows
                ],
            )
            if rows
            else "no remotes (adapterhub remote add NAME https://HOST, or NAME --db URL --store URL)"
        ),
    )


@remote.command(name="rm")
@click.argument("name")
@json_option
@pass_app
def remote_rm(app: App, name, as_json):
    """Forget a remote (nothing in it is deleted)."""
    from ..registry import remotes

    remotes.remove_remote(app.home_dir, name)
    emit(as_json, {"name": name, "removed": True}, f"removed remote {name}")


@cli.command(name="list")
@click.argument("name", required=False)
@click.option("--from", "from_", metavar="REMOTE", help="List a named remote's versions.")
@json_option
@pass_app
def list_cmd(app: App, name, from_, as_json):
    """List versions (of NAME, if given)."""
    reg = app.remote(from_) if from_ else app.registry
    rows = reg.list(name)

    def table(rows):
        if not rows:
            return "no versions yet (adapterhub push DIR NAME)"
        head = ("REF", "METHOD", "DIGEST", "SIZE", "ALIASES", "EVAL", "CREATED")
        body = [
            (
                r.ref,
                r.method or "-",
                r.digest[7:19],
                human_size(r.size),
                ",".join(r.aliases) or "-",
                _eval_cell(r.evaluation),
                (r.created_at or "")[:19],
            )
            for r in rows
        ]
        return format_table(head, body)

    emit(as_json, [r.to_dict() for r in rows], lambda _: table(rows))


def _eval_cell(metrics) -> str:
    """The newest evaluation's primary metric (accuracy for classifiers, else loss; rouge_l for generation)."""
    if not metrics:
        return "-"
    for key, short in (("accuracy", "acc"), ("loss", "loss"), ("rouge_l", "rouge_l")):
        if isinstance(metrics.get(key), (int, float)):
            return f"{short}={metrics[key]:.3f}"
    return "yes"


@cli.command()
@click.argument("ref")
@json_option
@pass_app_for_refs("ref")
def show(app: App, ref, as_json):
    """Show one version: method, config, base, files, aliases, tags, lineage and metrics."""
    info = app.registry.show(ref)
    shown = {k: v for k, v in info.to_dict().items() if k != "manifest"}
    emit(
        as_json,
        {**shown, "tracking": info.manifest.get("tracking"), "training": info.manifest.get("training")},
        lambda _: _show_text(info),
    )


def _show_text(d: VersionInfo) -> str:
    lines = [f"{d.ref}  {d.digest}", f"  kind:    {d.kind}", f"  method:  {d.method}"]
    hint = d.base.name if d.base else None
    lines.append(f"  base:    {d.base_fingerprint or 'unknown'}" + (f" ({hint})" if hint else ""))
    quant = ((d.base.properties if d.base else None) or {}).get("quantization") or (d.manifest.get("base") or {}).get(
        "quantization"
    )
    if quant:
        lines.append(
            f"  quantized base: {quant.get('quant_type') or quant.get('quantizer')} "
            + ", ".join(f"{k}={quant[k]}" for k in ("double_quant", "blocksize", "compute_dtype") if k in quant)
        )
    if d.task:
        lines.append(f"  task:    {d.task}")
    lines.append(f"  created: {d.created_at} by {d.created_by}")
    lines.append(f"  aliases: {', '.join(d.aliases) or '-'}")
    if d.tags:
        lines.append("  tags:    " + ", ".join(f"{k}={v}" for k, v in d.tags.items()))
    for p in d.parents:
        lines.append(f"  parent:  {p.relation} {p.ref or p.digest}" + (" (external)" if p.external else ""))
    for c in d.children:
        lines.append(f"  child:   {c.ref} ({c.relation})")
    if (tr := d.manifest.get("tracking")) and tr.get("run_id"):
        lines.append(
            f"  tracked: {tr.get('tracker')} run {tr['run_id']}  {tr.get('url') or tr.get('tracking_uri') or ''}".rstrip()
        )
    if (tr := d.manifest.get("training")) and tr.get("global_batch_size"):
        lines.append(
            f"  batch:   {tr['global_batch_size']} ({batch_text(tr['world_size'], tr['batch_size'], tr['grad_accum'])})"
        )
    if d.metrics:
        lines.append("  metrics: " + ", ".join(f"{k}={v}" for k, v in d.metrics.items()))
    generated = None
    for e in d.evaluations:
        det = e.details if isinstance(e.details, dict) else {}
        gen = det.get("kind") == "generation"
        rows = f" ({det['rows']} rows{', generation' if gen else ''})" if det.get("rows") else ""
        lines.append(
            f"  eval:    {e.data_digest[:19]}{rows} "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.metrics.items())
        )
        generated = det if gen else generated
    if generated and generated.get("samples"):  # the newest generation evaluation's outputs
        from .eval_cmds import samples_text

        lines.extend(samples_text(generated["samples"], generated.get("rows"), indent="    "))
    if d.config:
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(d.config.items()) if v not in (None, [], {}, ""))
        lines.append(f"  config:  {cfg[:400]}")
    lines.append(f"  files:   {len(d.files)} ({human_size(d.size)})")
    for f in d.files:
        lines.append(f"    {f.path}  {human_size(f.size)}  {f.digest[:19]}")
    return "\n".join(lines)


@cli.group()
def alias():
    """Move, remove and audit aliases (mutable pointers such as production)."""


@alias.command(name="set")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.argument("version")
@click.option("--reason", help="Why (recorded in the alias history).")
@click.option("--force", is_flag=True, help="Move a gated alias even if the promotion gate refuses (needs --reason).")
@click.option("--gate", is_flag=True, help="Apply the promotion gate to this alias even if it is not protected.")
@json_option
@pass_app
def alias_set(app: App, name, alias_name, version, reason, force, gate, as_json):
    """Point NAME@ALIAS at VERSION (a number or a ref).

    Protected aliases (production, or $ADAPTERHUB_PROTECTED_ALIASES) pass the promotion gate: VERSION
    must have an evaluation, must not score worse than the current holder on the same eval data, and
    must not have been trained on data that failed its check. --force --reason "..." overrides it; the
    reason and what it overrode are recorded in the alias history."""
    reg, name = app.for_name(name)
    r = reg.move_alias(name, alias_name, version, reason=reason, force=force, gate=gate)
    prev = f" (was {r['previous']})" if r["previous"] not in (None, r["version"]) else ""
    forced = f"\nforced past the promotion gate: {'; '.join(r['overridden'])}" if r["overridden"] else ""
    emit(as_json, r, f"{name}@{alias_name} -> {r['ref']}{prev}{forced}")


@alias.command(name="rm")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@click.option("--reason", help="Why (recorded in the alias history).")
@json_option
@pass_app
def alias_rm(app: App, name, alias_name, reason, as_json):
    """Remove NAME@ALIAS."""
    reg, name = app.for_name(name)
    r = reg.remove_alias(name, alias_name, reason=reason)
    emit(as_json, r, f"removed {name}@{alias_name} (was {r['previous']})")


@alias.command(name="history")
@click.argument("name")
@click.argument("alias_name", metavar="ALIAS")
@json_option
@pass_app
def alias_history(app: App, name, alias_name, as_json):
    """Every move of NAME@ALIAS: when, who, from which version to which."""
    reg, name = app.for_name(name)
    rows = reg.alias_history(name, alias_name)
    emit(
        as_json,
        rows,
        lambda rows: format_table(
            ("AT", "ACTOR", "FROM", "TO", "REASON"),
            [(r["at"], r["actor"], r["from"] or "-", r["to"] or "(removed)", r["reason"] or "") for r in rows],
        ),
    )


@cli.command()
@click.argument("ref")
@click.argument("pairs", nargs=-1, type=KEY_VALUE, metavar="[K=V]...")
@click.option("--rm", "remove", multiple=True, metavar="KEY", help="Remove a tag (repeatable).")
@json_option
@pass_app_for_refs("ref")
def tag(app: App, ref, pairs, remove, as_json):
    """Set (K=V) or remove (--rm K) tags on version REF; prints the tags."""
    tags = app.registry.set_tags(ref, dict(pairs), remove)
    emit(as_json, tags, lambda t: "\n".join(f"{k}={v}" for k, v in t.items()) or "(no tags)")


@cli.command()
@click.argument("ref")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "dot", "mermaid"]), default="text", show_default=True
)
@pass_app_for_refs("ref")
def lineage(app: App, ref, fmt):
    """Show where REF came from (ancestors) and what was made from it."""
    from ..registry.maintenance import render_lineage

    graph = app.registry.lineage(ref)
    emit(fmt == "json", graph, lambda g: render_lineage(g, fmt))


@cli.command()
@click.argument("ref", required=False)
@json_option
@pass_app_for_refs("ref")
def verify(app: App, ref, as_json):
    """Check REF (or every version): its manifest matches its digest and the files served, and its blobs
    re-hash to their addresses; exit 1 on any problem."""
    report = app.registry.verify(ref)

    def text(r):
        lines = [
            f"{p['blob']}: {p['status']} (used by {', '.join(p['used_by'])})"
            if "blob" in p
            else f"{p.get('version') or p.get('history')}: {p['status']}"
            for p in r["problems"]
        ]
        if r.get("history_head"):
            lines.append(f"history head: sha256:{r['history_head']} (record it elsewhere to detect a rewrite)")
        lines.append(
            f"checked {r['blobs']} blobs ({human_size(r['bytes'])}) of {r['versions']} versions: "
            + ("ok" if r["ok"] else f"{len(r['problems'])} problems")
        )
        return "\n".join(lines)

    emit(as_json, report, text)
    if not report["ok"]:
        raise SystemExit(1)


@cli.command()
@click.option(
    "--grace",
    type=float,
    default=600.0,
    show_default=True,
    help="Keep unreferenced blobs younger than this many seconds (pushes in flight).",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@json_option
@pass_app
def gc(app: App, grace, dry_run, as_json):
    """Remove unreferenced blobs and leftovers of interrupted writes."""
    from ..operations.merged_cache import clean

    r = app.registry.gc(grace=grace, dry_run=dry_run)
    r["removed_leftovers"] = 0 if dry_run else clean(app.home_dir)  # of merges killed mid-write
    verb = "would remove" if dry_run else "removed"

    def text(r):
        lines = [f"skipped {name} (not a blob)" for name in r["skipped"]]
        lines += [f"could not remove {f['blob']}: {f['error']}" for f in r["failed"]]
        lines.append(
            f"{verb} {r['removed_blobs']} blobs ({human_size(r['freed_bytes'])}) and "
            f"{r['removed_temp'] + r['removed_leftovers']} temp files"
            + (f"; kept {r['kept_recent']} recent ones (--grace 0 to remove)" if r["kept_recent"] else "")
            + (f"; skipped {len(r['skipped'])} files that are not blobs" if r["skipped"] else "")
        )
        return "\n".join(lines)

    emit(as_json, r, text)
    if r["failed"]:
        raise SystemExit(1)


@cli.command()
@click.argument("base_dir", type=BASE)
@json_option
@pass_app
def fingerprint(app: App, base_dir, as_json):
    """Print the fingerprint of the base model weights in BASE_DIR (a directory, or a Hugging Face id
    ORG/NAME[@REVISION] from the Hugging Face cache or Hub; a local directory of that spelling wins)."""
    from ..api import fingerprint as fp
    from ..files.hub import from_path

    update, close = progress_bar(0, "hash")
    try:
        result = fp(base_dir, app.home, progress=update)
    finally:
        close()
    hub = from_path(base_dir)
    extra = {"hub_id": hub.hub_id, "revision": hub.revision_sha, "path": base_dir} if hub.hub_id else {}
    emit(as_json, {**result.to_dict(), **extra}, result.digest)


@cli.command()
@json_option
@pass_app
def plugins(app: App, as_json):
    """List installed plugins and what each registers."""
    from ..plugins import KINDS

    rows = app.plugins.describe()

    def text(rows):
        out = []
        for p in rows:
            if p.get("error"):
                out.append(f"{p['name']:<14} {'(failed to load)':<22} {p['error']}")
                continue
            what = "; ".join(f"{k}: {', '.join(p[k])}" for k in KINDS if p.get(k))
            hooks = ", ".join(h for h in p["hooks"] if h == "register_commands")
            out.append(f"{p['name']:<14} {p['module']:<22} {what or hooks or '-'}")
        return "\n".join(out)

    emit(as_json, rows, text)


@cli.group()
def db():
    """Database maintenance."""


@db.command()
@json_option
@pass_app
def upgrade(app: App, as_json):
    """Run the registry's schema migrations now (they also run on first use)."""
    from ..registry.db import HEAD_REVISION
    from ..registry.db import upgrade as do_upgrade

    before = do_upgrade(app.registry.engine)
    emit(as_json, {"from": before, "to": HEAD_REVISION}, f"schema at {HEAD_REVISION} (was {before or 'empty'})")
