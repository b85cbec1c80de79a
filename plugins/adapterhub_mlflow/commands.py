"""``adapterhub mlflow register``: mirror a registry version into MLflow's model registry."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

import click

from adapterhub.cli.app import App, emit, json_option, pass_app
from adapterhub.registry.entities import VersionInfo

_RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$")


@click.group(name="mlflow")
def mlflow_group():
    """MLflow: mirror registry versions into MLflow's model registry."""


@mlflow_group.command(name="register")
@click.argument("ref")
@click.option("--model-name", help="Registered model name (default: the adapter name with '/' as '-').")
@click.option(
    "--tracking-uri",
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the one the version was trained against).",
)
@click.option(
    "--experiment",
    help="Experiment for the run created when the version has no MLflow run "
    "(default: $MLFLOW_EXPERIMENT_NAME or the adapter name).",
)
@json_option
@pass_app
def register(app: App, ref, model_name, tracking_uri, experiment, as_json):
    """Register version REF in MLflow's model registry.

    The model version's source is the adapter artifact of the MLflow run that trained REF; a version
    without a run gets a new run with the adapter directory logged to it. The version is tagged with the
    adapterhub ref and digest and gets REF's aliases as MLflow aliases. Registering the same digest again
    reuses its model version (and moves the aliases)."""
    info = app.registry.show(ref)
    _check_alias_clash(app.registry, info)
    tracking = info.manifest.get("tracking") or {}
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.get("tracking_uri") or None
    model = model_name or info.name.replace("/", "-")
    if not model.strip() or "'" in model or '"' in model:
        raise click.BadParameter(f"invalid model name {model!r}", param_hint="--model-name")
    from .tracker import fail_fast, mask_uri
    from .tracker import tracking_uri as default_uri

    uri = uri or default_uri()
    try:
        with fail_fast():
            result = _register(app, info, tracking, uri, model, experiment)
    except (click.ClickException, KeyboardInterrupt):
        raise
    except Exception as exc:
        if os.environ.get("ADAPTERHUB_DEBUG"):
            raise
        if type(exc).__module__.split(".")[0] not in ("mlflow", "requests", "urllib3"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise click.ClickException(f"MLflow at {mask_uri(uri)} failed: {first}") from None
    emit(as_json, result, _text)


def _register(
    app: App, info: VersionInfo, tracking: dict[str, Any], uri: str, model: str, experiment: str | None
) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from .tracker import make_client, mask_uri, ui_url

    client = make_client(uri)
    digest, ref = info.digest, info.ref
    try:
        client.get_registered_model(model)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(
                model, tags={"adapterhub.name": info.name}, description=f"adapterhub adapter {info.name}"
            )
        except MlflowException as exc2:  # another process created it just now
            if getattr(exc2, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise

    existing = [mv for mv in _versions(client, model) if (mv.tags or {}).get("adapterhub.digest") == digest]
    run_created = False
    if existing:
        mv = min(existing, key=lambda m: int(m.version))
        created = False
    else:
        run_id = _run_with_adapter(client, app, info, tracking, uri, experiment)
        run_created = run_id != tracking.get("run_id")
        run = client.get_run(run_id)
        source = run.info.artifact_uri.rstrip("/") + "/adapter"
        tags = {
            "adapterhub.ref": ref,
            "adapterhub.digest": digest,
            "adapterhub.method": str(info.method),
            "adapterhub.base_fingerprint": str(info.base_fingerprint),
        }
        mv = client.create_model_version(
            model, source, run_id=run_id, tags=tags, description=f"adapterhub {ref} ({digest})"
        )
        created = True

    aliases: dict[str, str] = {}
    skipped: list[str] = []
    for alias in info.aliases:
        name = mlflow_alias(alias)
        if _RESERVED_ALIAS.match(name):
            skipped.append(alias)  # MLflow reserves these alias names
            continue
        client.set_registered_model_alias(model, name, str(mv.version))
        aliases[alias] = name
    run_id = mv.run_id
    exp_id = client.get_run(run_id).info.experiment_id if run_id else None
    masked = mask_uri(uri)
    url = None
    if masked.lower().startswith(("http://", "https://")):
        url = f"{masked.rstrip('/')}/#/models/{model}/versions/{mv.version}"
    return {
        "ref": ref,
        "digest": digest,
        "model_name": model,
        "version": int(mv.version),
        "created": created,
        "source": mv.source,
        "run_id": run_id,
        "run_created": run_created,
        "run_url": ui_url(uri, exp_id, run_id),
        "aliases": aliases,
        "skipped_aliases": skipped,
        "tracking_uri": masked,
        "url": url,
    }


def mlflow_alias(alias: str) -> str:
    """The MLflow alias an adapterhub alias becomes (MLflow allows only ``[\\w-]``: '.' becomes '_')."""
    return re.sub(r"[^\w-]", "_", alias)


def _check_alias_clash(registry: Any, info: VersionInfo) -> None:
    """Refuse to register when one of the version's aliases becomes the same MLflow alias as another alias
    of the adapter on a different version (``rc.1`` and ``rc_1`` are both ``rc_1`` in MLflow): setting it
    would silently move the other alias's MLflow alias to this version."""
    mine = set(info.aliases)
    if not mine:
        return
    by_mlflow = {mlflow_alias(a): a for a in mine}
    for row in registry.list(info.name):
        if row.version == info.version:
            continue
        for other in row.aliases:
            ours = by_mlflow.get(mlflow_alias(other))
            if ours is not None and other not in mine:
                raise click.ClickException(
                    f"aliases '{ours}' ({info.ref}) and '{other}' ({row.ref}) would both be MLflow alias "
                    f"'{mlflow_alias(other)}'; rename one of them (adapterhub alias set/rm) and register again"
                )


def _versions(client: Any, model: str) -> list[Any]:
    out, token = [], None
    while True:
        page = client.search_model_versions(f"name='{model}'", max_results=1000, page_token=token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _run_with_adapter(
    client: Any, app: App, info: VersionInfo, tracking: dict[str, Any], uri: str, experiment: str | None
) -> str:
    """The run whose ``adapter`` artifact holds this version: the training run if it has one, else the
    training run after logging the adapter to it, else a new run."""
    from mlflow.exceptions import MlflowException

    from .tracker import get_or_create_experiment, upload_dir

    digest, ref = info.digest, info.ref
    run = None
    if tracking.get("tracker") == "mlflow" and tracking.get("run_id"):
        try:
            run = client.get_run(tracking["run_id"])
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
        if run is not None and run.data.tags.get("adapterhub.digest") not in (None, digest):
            run = None  # that run logged other content
    if run is not None and any(
        f.path.endswith("adapter_model.safetensors") or f.path.endswith("adapterhub.json")
        for f in client.list_artifacts(run.info.run_id, "adapter")
    ):
        if "adapterhub.digest" not in run.data.tags:
            client.set_tag(run.info.run_id, "adapterhub.ref", ref)
            client.set_tag(run.info.run_id, "adapterhub.digest", digest)
        return run.info.run_id

    from adapterhub.api import pull

    tmp = tempfile.mkdtemp(prefix="adapterhub-mlflow-")
    try:
        local = os.path.join(tmp, "adapter")
        pull(app.registry, ref, local)
        if run is None:
            name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or info.name
            exp_id = get_or_create_experiment(client, name, uri)
            run = client.create_run(
                exp_id,
                run_name=f"register {ref}",
                tags={"adapterhub.method": str(info.method), "adapterhub.base_fingerprint": str(info.base_fingerprint)},
            )
            new = True
        else:
            new = False
        upload_dir(client, run.info.run_id, local, "adapter")
        client.set_tag(run.info.run_id, "adapterhub.ref", ref)
        client.set_tag(run.info.run_id, "adapterhub.digest", digest)
        if new:
            client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _text(d: dict[str, Any]) -> str:
    lines = [
        f"{d['ref']} -> MLflow model '{d['model_name']}' version {d['version']}"
        + ("" if d["created"] else "  (already registered)"),
        f"  source:  {d['source']}",
    ]
    if d["run_id"]:
        lines.append(f"  run:     {d['run_id']}" + (" (new run)" if d["run_created"] else ""))
    if d["aliases"]:
        lines.append("  aliases: " + ", ".join(d["aliases"].values()))
    if d["skipped_aliases"]:
        lines.append("  skipped: " + ", ".join(d["skipped_aliases"]) + " (reserved alias names in MLflow)")
    if d["url"]:
        lines.append(f"  {d['url']}")
    return "\n".join(lines)
