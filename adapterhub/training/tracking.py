"""Calling an experiment tracker (:class:`~adapterhub.interfaces.Tracker`, ``register_trackers``) safely, and the
Trainer callback that feeds it.

A tracker failing never loses a training run: every call is guarded, the first failure is turned into
a warning saying what was not logged, and training goes on.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

from ..interfaces import Tracker


class SafeTracker(Tracker):
    """Wraps a tracker so that a failure becomes one warning and later calls are skipped (``run_info`` is always
    asked, so the manifest says where the run went)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.failed: list[str] = []

    def _call(self, what: str, call: Callable[[], Any], always: bool = False) -> Any:
        if self.failed and not always:
            self.failed.append(what)
            return None
        try:
            return call()
        except Exception as exc:  # the tracker is optional; the run is not
            self.failed.append(what)
            warnings.warn(
                f"tracker '{self.tracker.name}' failed in {what} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); the rest of this run "
                "is not logged there",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def start(self, run_name: str, experiment: str | None, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._call("start", lambda: self.tracker.start(run_name, experiment, params, tags))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", lambda: self.tracker.log_metrics(metrics, step))

    def log_report(self, name: str, report: dict[str, Any]) -> None:
        self._call("log_report", lambda: self.tracker.log_report(name, report))

    def log_artifacts(self, directory: str, artifact_path: str) -> None:
        self._call("log_artifacts", lambda: self.tracker.log_artifacts(directory, artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda: self.tracker.set_tags(tags))

    def end(self, status: str = "FINISHED") -> None:
        self._call("end", lambda: self.tracker.end(status))

    def run_info(self) -> dict[str, Any]:
        return self._call("run_info", self.tracker.run_info, always=True)

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
