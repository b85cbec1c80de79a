"""Built-in plugin: MLflow experiment tracking (``train --track mlflow``) and ``adapterhub mlflow register``.

Linked both ways with the registry: a tracked training run records its MLflow run id, tracking URI and
UI link in the adapter's manifest (``adapterhub show`` prints it), and the run is tagged with the
registry ref and digest after a push. ``adapterhub mlflow register REF`` mirrors a registry version into
MLflow's model registry (model version pointing at the run's adapter artifact, our aliases as MLflow
aliases).

Configuration is MLflow's own: ``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``,
``MLFLOW_EXPERIMENT_NAME`` (else ``train --experiment``, else the ``--push`` name, else
``adapterhub``), ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` / ``_TOKEN``. A tracking server that is
down or hangs fails fast (``ADAPTERHUB_MLFLOW_TIMEOUT`` seconds per request, default 15,
``ADAPTERHUB_MLFLOW_RETRIES`` retries, default 1, unless ``MLFLOW_HTTP_REQUEST_*`` are set) and never
costs a training run.

Importing this module never imports mlflow (``adapterhub --help`` loads every plugin).
"""

from __future__ import annotations

import adapterhub

from .tracker import MlflowTracker

__all__ = ["MlflowTracker"]


@adapterhub.hookimpl
def register_trackers(register):
    register(MlflowTracker)


@adapterhub.hookimpl
def register_commands(cli):
    from .commands import mlflow_group

    cli.add_command(mlflow_group)
