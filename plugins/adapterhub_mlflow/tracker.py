"""``MlflowTracker``: the :class:`adapterhub.interfaces.Tracker` for MLflow, on ``MlflowClient``.

Only the explicit client is used (never ``mlflow.start_run`` and the fluent module state), so nothing
leaks between runs, threads or tests. mlflow is imported inside the methods, never at module import.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import re
import time
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import adapterhub
from adapterhub.interfaces import Tracker

DEFAULT_EXPERIMENT = "adapterhub"
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
MAX_KEY = 250  # ... on a param / metric / tag key
MAX_TAG_VALUE = 8000
BATCH = 100  # params or tags per log_batch request

#: file names of full model weights: never uploaded, even if someone put them into an adapter directory
_BASE_WEIGHTS = re.compile(
    r"^(model|pytorch_model|tf_model|flax_model)(-\d+-of-\d+)?\.(safetensors|bin|h5|msgpack)"
    r"(\.index\.json)?$|^consolidated(\.\d+)?\.(pth|safetensors)$"
)
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


# -- helpers shared with the ``mlflow register`` command ---------------------------------------------


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """Make MLflow's HTTP client give up quickly (a tracking server that is down or hangs must not stall
    training for minutes) and keep it from printing run links to stdout (ours: ``--json``).

    Our retry/timeout defaults apply only to MLFLOW_HTTP_REQUEST_* variables the user has not set, and
    only for the duration of the call; the environment is restored afterwards."""
    defaults = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("ADAPTERHUB_MLFLOW_RETRIES", "1"),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("ADAPTERHUB_MLFLOW_TIMEOUT", "15"),
    }
    forced = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    saved = {k: os.environ.get(k) for k in [*defaults, *forced]}
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    os.environ.update(forced)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else MLflow's own default."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    import mlflow

    return mlflow.get_tracking_uri()


def make_client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri(), registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or None)


def mask_uri(uri: str) -> str:
    """The URI without credentials (it goes into manifests, which are shared)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def ui_url(uri: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI link of a run, for http(s) tracking URIs."""
    if not run_id or not experiment_id or not uri.lower().startswith(("http://", "https://")):
        return None
    return f"{mask_uri(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _default_artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts when MLflow has no server to ask: under
    ``ADAPTERHUB_MLFLOW_ARTIFACT_ROOT``, else next to a SQLite tracking database (MLflow's own default
    is ``./mlruns`` in whatever directory the process happens to run in)."""
    from pathlib import Path

    root = os.environ.get("ADAPTERHUB_MLFLOW_ARTIFACT_ROOT")
    if not root and uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///") :].split("?")[0]
        if db and db != ":memory:":
            root = str(Path(os.path.abspath(db)).parent / "mlartifacts")
    if not root:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("-.") or "experiment"
    if "://" in root or root.startswith(("s3:", "gs:", "mlflow-artifacts:")):
        return root.rstrip("/") + "/" + slug
    return (Path(os.path.abspath(root)) / slug).as_uri()


def get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing (safe when two processes race to create it)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_default_artifact_location(uri, name))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow experiment '{name}' is deleted; restore it or pick another with "
            "--experiment / MLFLOW_EXPERIMENT_NAME"
        )
    return exp.experiment_id


def sanitize_key(key: str) -> str:
    """An MLflow-valid param/metric/tag key: allowed characters only, no path tricks, <= 250 chars."""
    k = _BAD_KEY_CHARS.sub("_", str(key))
    k = "/".join(p if p not in ("", ".", "..") else "_" for p in k.split("/"))
    return (k or "_")[:MAX_KEY]


def param_value(value: Any, limit: int = MAX_PARAM_VALUE) -> str:
    """A param value as MLflow stores it: a string of at most ``limit`` characters."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    else:
        text = str(value)
    if len(text) > limit:
        marker = "...[truncated]"
        text = text[: limit - len(marker)] + marker
    return text


def sanitize_params(params: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        k = sanitize_key(key)
        n = 2
        while k in out:  # two keys that sanitize alike are both kept
            suffix = f"_{n}"
            k, n = sanitize_key(key)[: MAX_KEY - len(suffix)] + suffix, n + 1
        out[k] = param_value(value)
    return out


def adapter_files(directory: str) -> list[tuple[str, str]]:
    """``(absolute path, relative dir)`` of every file to upload from an adapter directory: everything
    except full-model weight files and hidden files."""
    out = []
    root = os.path.abspath(directory)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.startswith(".") or _BASE_WEIGHTS.match(name):
                continue
            out.append((os.path.join(dirpath, name), "" if rel == "." else rel.replace(os.sep, "/")))
    return out


def upload_dir(client: Any, run_id: str, directory: str, artifact_path: str) -> int:
    """Upload an adapter directory (never base weights) under ``artifact_path``; returns the file count."""
    files = adapter_files(directory)
    for path, rel in files:
        client.log_artifact(run_id, path, posixpath.join(artifact_path, rel) if rel else artifact_path)
    return len(files)


# -- the tracker -------------------------------------------------------------------------------------


class MlflowTracker(Tracker):
    """Logs a training run to MLflow: params, per-step metrics, the data-quality report, the adapter
    directory and, after a push, the registry ref and digest as tags."""

    name = "mlflow"

    def __init__(self) -> None:
        self.client: Any = None
        self.uri: str | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.experiment: str | None = None

    def _experiment_name(self, experiment: str | None, tags: dict[str, str]) -> str:
        # explicit --experiment > MLFLOW_EXPERIMENT_NAME > the --push name > "adapterhub"; train passes
        # "--experiment or --push" as one value: it is the push default when it equals adapterhub.name
        push_name = tags.get("adapterhub.name")
        if experiment and experiment != push_name:
            return experiment
        return os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment or push_name or DEFAULT_EXPERIMENT

    def start(self, run_name: str, experiment: str | None, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.uri = tracking_uri()
        self.client = make_client(self.uri)
        self.experiment = self._experiment_name(experiment, tags)
        with fail_fast():
            self.experiment_id = get_or_create_experiment(self.client, self.experiment, self.uri)
            run_tags = {"adapterhub.version": adapterhub.__version__, **{k: str(v) for k, v in tags.items()}}
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name or None,
                tags={sanitize_key(k): param_value(v, MAX_TAG_VALUE) for k, v in run_tags.items()},
            )
            self.run_id = run.info.run_id
            items = sorted(sanitize_params(params).items())
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + BATCH]])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if not self.run_id or not metrics:
            return
        now = int(time.time() * 1000)
        batch = [
            Metric(sanitize_key(k), float(v), now, int(step))
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
        ]
        if batch:
            with fail_fast():
                self.client.log_batch(self.run_id, metrics=batch)

    def log_report(self, name: str, report: dict[str, Any]) -> None:
        if not self.run_id:
            return
        with fail_fast():
            self.client.log_text(self.run_id, json.dumps(report, indent=2, sort_keys=True, default=str), name)

    def log_artifacts(self, directory: str, artifact_path: str) -> None:
        if not self.run_id:
            return
        with fail_fast():
            upload_dir(self.client, self.run_id, directory, artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if not self.run_id or not tags:
            return
        items = [RunTag(sanitize_key(k), param_value(v, MAX_TAG_VALUE)) for k, v in tags.items()]
        with fail_fast():
            for i in range(0, len(items), BATCH):
                self.client.log_batch(self.run_id, tags=items[i : i + BATCH])

    def end(self, status: str = "FINISHED") -> None:
        if not self.run_id:
            return
        with fail_fast():
            self.client.set_terminated(self.run_id, status)

    def run_info(self) -> dict[str, Any]:
        uri = self.uri or ""
        return {
            "tracker": self.name,
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "experiment": self.experiment,
            "tracking_uri": mask_uri(uri) if uri else None,
            "url": ui_url(uri, self.experiment_id, self.run_id),
        }
