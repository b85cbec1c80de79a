"""The experiment-tracker interface (``register_trackers``) and the Trainer callback that feeds it.

A tracker failing never loses a training run: every call is guarded, the first failure is turned into
a warning saying what was not logged, and training goes on.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar


class Tracker:
    """What a tracker plugin provides. ``name`` is what users pass to ``train --track``."""

    name: ClassVar[str] = ""

    def start(self, run_name: str, experiment: str | None, params: dict[str, Any], tags: dict[str, str]) -> None:
        """Begin a run and log its parameters."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log numeric metrics at a step."""

    def log_report(self, name: str, report: dict[str, Any]) -> None:
        """Log a JSON document (e.g. the data-quality report)."""

    def log_artifacts(self, directory: str, artifact_path: str) -> None:
        """Upload a directory (the adapter, never the base weights)."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run (e.g. with the registry ref and digest after a push)."""

    def end(self, status: str = "FINISHED") -> None:
        """Close the run."""

    def run_info(self) -> dict[str, Any]:
        """``{"tracker", "run_id", "tracking_uri", "url"}`` for the manifest and ``show``."""
        return {"tracker": self.name}


class SafeTracker:
    """Wraps a tracker so that a failure becomes one warning and later calls are skipped."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.failed: list[str] = []

    def __getattr__(self, attr: str):
        fn = getattr(self.tracker, attr)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.failed and attr not in ("run_info",):
                self.failed.append(attr)
                return None
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # the tracker is optional; the run is not
                self.failed.append(attr)
                warnings.warn(f"tracker '{self.tracker.name}' failed in {attr} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); the rest of this run "
                              "is not logged there", RuntimeWarning, stacklevel=2)
                return None

        return call

    def not_logged(self) -> list[str]:
        return sorted(set(self.failed))


def trainer_callback(tracker: SafeTracker):
    """A transformers ``TrainerCallback`` that sends the Trainer's logs to ``tracker``."""
    from transformers import TrainerCallback

    class _Callback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if numeric:
                tracker.log_metrics(numeric, state.global_step)

    return _Callback()
