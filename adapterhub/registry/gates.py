"""Promotion gates: what a version must show before a *protected* alias (``production``) may point at it.

Protected aliases are ``production`` unless ``$ADAPTERHUB_PROTECTED_ALIASES`` lists others
(comma-separated; an empty value protects none). Any other alias moves freely, unless the caller asks
for the gate anyway (``adapterhub alias set ... --gate``). The gate refuses a candidate that

1. has no evaluation at all (``adapterhub eval`` stores them);
2. was trained on data that failed its quality check (manifest ``data_check.status == "failed"``,
   i.e. trained with ``--allow-dirty-data``);
3. scores worse than the version now holding the alias on an evaluation dataset both were evaluated
   on (same data digest; the latest evaluation of each counts): the primary metric is ``accuracy``
   (higher is better) for seq-cls and ``loss`` (lower is better) for causal-lm. When the holder has
   evaluations but none on data the candidate was evaluated on, the two cannot be compared and the
   gate refuses too. A non-finite (NaN/inf) metric of the candidate never counts as better: it is
   refused (evaluations with NaN/inf are refused when stored, but older registries may hold some).
   Generation evaluations (``eval --generate``, ``details.kind == "generation"``) are compared only with
   generation evaluations of the same data, on the primary metric they name (``rouge_l`` unless other
   ``--metric``s were chosen; its direction is stored with it); both must name the same one.
4. When no version holds the alias now because it was removed (``alias rm``), the last version that
   held it stands in for the holder in rule 3: removing a protected alias does not lower the bar
   (otherwise ``alias rm`` + ``alias set`` would bypass the gate). Re-pointing the alias at that same
   last holder skips the comparison.

The only way past a refusal is ``force=True`` with a non-empty reason; the reason and the refusals it
overrode are recorded in the alias history. The check runs inside the alias transaction
(``Registry.set_alias(guard=...)`` / ``publish(alias_guard=...)``), so it sees the holder of that moment.

This module does not import torch.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

import sqlalchemy as sa

from ..errors import AdapterhubError, InvalidInput
from . import schema as t
from .bundle import parse_manifest

PROTECTED_ENV = "ADAPTERHUB_PROTECTED_ALIASES"
DEFAULT_PROTECTED = ("production",)
#: task -> (primary metric, higher is better)
PRIMARY = {"seq-cls": ("accuracy", True), "causal-lm": ("loss", False)}


class GateRefused(AdapterhubError):
    """The promotion gate refused to move a protected alias."""


def protected_aliases() -> set[str]:
    """The aliases the gate protects: ``$ADAPTERHUB_PROTECTED_ALIASES`` or ``production``."""
    raw = os.environ.get(PROTECTED_ENV)
    if raw is None:
        return set(DEFAULT_PROTECTED)
    return {a.strip() for a in raw.split(",") if a.strip()}


def primary_metric(task: str | None, evaluation: dict[str, Any] | None = None) -> tuple[str, bool] | None:
    """``(metric, higher_is_better)`` for a task (or the task an evaluation's details name); a generation
    evaluation names its own."""
    details = (evaluation or {}).get("details") or {}
    if details.get("kind") == "generation" and isinstance(details.get("primary_metric"), str):
        return details["primary_metric"], bool(details.get("higher_is_better", True))
    if task not in PRIMARY and evaluation:
        task = details.get("task")
        if details.get("primary_metric") and task not in PRIMARY:
            return details["primary_metric"], bool(details.get("higher_is_better", True))
    return PRIMARY.get(task) if task else None


def _version(conn: sa.Connection, version_id: int) -> dict[str, Any]:
    v, a = t.versions, t.adapters
    row = conn.execute(
        sa.select(v.c.id, v.c.number, v.c.manifest, v.c.adapter_id, a.c.name)
        .join(a, a.c.id == v.c.adapter_id)
        .where(v.c.id == version_id)
    ).first()
    d = dict(row._mapping)
    d["ref"] = f"{d['name']}:{d['number']}"
    d["manifest"] = parse_manifest(d["manifest"], d["ref"])
    return d


def latest_evaluations(conn: sa.Connection, version_id: int) -> dict[str, dict[str, Any]]:
    """The latest evaluation of a version per data digest (``sha256:<hex>`` -> ``{metrics, details}``);
    generation evaluations apart (``sha256:<hex> (generation)``), so neither kind hides the other."""
    e = t.evaluations
    out: dict[str, dict[str, Any]] = {}
    for r in conn.execute(sa.select(e).where(e.c.version_id == version_id).order_by(e.c.id)):
        details = r.details or {}
        key = "sha256:" + r.data_digest + (GENERATION if details.get("kind") == "generation" else "")
        out[key] = {"metrics": r.metrics or {}, "details": details}
    return out


GENERATION = " (generation)"


def _label(key: str) -> str:
    """``sha256:<12 hex>`` of an evaluation key, with its kind."""
    return key[:19] + (GENERATION if key.endswith(GENERATION) else "")


def check_promotion(conn: sa.Connection, name: str, alias: str, version_id: int) -> list[str]:
    """Why ``name@alias`` must not move to ``version_id`` (empty list: it may)."""
    cand = _version(conn, version_id)
    holder_id = conn.execute(
        sa.select(t.aliases.c.version_id).where(
            t.aliases.c.adapter_id == cand["adapter_id"], t.aliases.c.alias == alias
        )
    ).scalar()
    if holder_id == version_id:
        return []
    removed = holder_id is None
    if removed:  # rule 4: the last version that held the alias before it was removed
        ev = t.alias_events
        holder_id = conn.execute(
            sa.select(ev.c.new_version_id)
            .where(ev.c.adapter_id == cand["adapter_id"], ev.c.alias == alias, ev.c.new_version_id.is_not(None))
            .order_by(ev.c.id.desc())
            .limit(1)
        ).scalar()
        if holder_id == version_id:
            holder_id = None
    reasons = []
    check = cand["manifest"].get("data_check") or {}
    if check.get("status") == "failed":
        why = "; ".join(check.get("reasons") or []) or "see its manifest"
        reasons.append(f"{cand['ref']} was trained on data that failed its quality check ({why})")
    c_evals = latest_evaluations(conn, version_id)
    if not c_evals:
        reasons.append(
            f"{cand['ref']} has no evaluation (run: adapterhub eval {cand['ref']} --base BASE --data EVAL.jsonl)"
        )
        return reasons
    for digest, ev in sorted(c_evals.items()):
        bad = [
            f"{k} {v}"
            for k, v in sorted(ev["metrics"].items())
            if isinstance(v, float) and not math.isfinite(v) and not k.startswith(("base_", "probe_base_"))
        ]
        if bad:
            reasons.append(
                f"{cand['ref']} has non-finite results on {_label(digest)} ({', '.join(bad)}): the adapter "
                "produces NaN/inf"
            )
    if holder_id is None:
        return reasons
    holder = _version(conn, holder_id)
    current = f"last {alias} (removed)" if removed else f"current {alias}"
    h_evals = latest_evaluations(conn, holder_id)
    if not h_evals:
        return reasons  # nothing to compare against (the holder was never evaluated)
    shared = sorted(set(c_evals) & set(h_evals))
    if not shared:
        reasons.append(
            f"{cand['ref']} and the {current} {holder['ref']} were never evaluated on the same "
            f"data; evaluate {cand['ref']} on {', '.join(_label(d) for d in sorted(h_evals))}"
        )
        return reasons
    task = cand["manifest"].get("task") or holder["manifest"].get("task")
    for digest in shared:
        prim = primary_metric(task, c_evals[digest])
        if prim is None:
            reasons.append(f"cannot tell the primary metric of {cand['ref']} (task unknown)")
            break
        metric, higher = prim
        h_prim = primary_metric(task, h_evals[digest])
        if digest.endswith(GENERATION) and h_prim and h_prim[0] != metric:
            reasons.append(
                f"the generation evaluations on {_label(digest)} compare different metrics ({metric} vs "
                f"{h_prim[0]}); evaluate {cand['ref']} with --metric {h_prim[0]} first"
            )
            continue
        cv, hv = c_evals[digest]["metrics"].get(metric), h_evals[digest]["metrics"].get(metric)
        if not isinstance(cv, (int, float)) or not isinstance(hv, (int, float)):
            reasons.append(f"the evaluations on {_label(digest)} have no {metric} to compare")
            continue
        if not math.isfinite(cv):
            continue  # refused above
        worse = math.isfinite(hv) and (cv < hv if higher else cv > hv)  # a NaN/inf holder loses to any number
        if worse:
            reasons.append(
                f"{cand['ref']} scores worse than the {current} {holder['ref']} on {_label(digest)}: "
                f"{metric} {cv:.4g} vs {hv:.4g} ({'higher' if higher else 'lower'} is better)"
            )
    return reasons


def make_guard(force: bool = False):
    """A ``guard(conn, registry, name, alias, version_id)`` for ``Registry.set_alias``/``publish`` that
    raises :class:`GateRefused` (unless ``force``) when :func:`check_promotion` finds reasons."""

    def guard(conn: sa.Connection, registry: Any, name: str, alias: str, version_id: int) -> None:
        if force:
            return
        reasons = check_promotion(conn, name, alias, version_id)
        if reasons:
            raise GateRefused(
                f"refusing to move {name}@{alias}: {'; '.join(reasons)} "
                '(use --force --reason "..." to override; it is recorded)'
            )

    return guard


def alias_guard(aliases: Iterable[str] | None = None):
    """The guard for ``Registry.publish(alias_guard=...)`` (``push --alias production``): gates only the
    protected aliases (or those in ``aliases``)."""
    protected = set(aliases) if aliases is not None else protected_aliases()
    inner = make_guard()

    def guard(conn: sa.Connection, registry: Any, name: str, alias: str, version_id: int) -> None:
        if alias in protected:
            inner(conn, registry, name, alias, version_id)

    return guard


def set_alias(
    reg: Any,
    name: str,
    alias: str,
    version: str,
    reason: str | None = None,
    force: bool = False,
    gate: bool | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """Move ``name@alias`` to ``version`` through the promotion gate when the alias is protected (or
    ``gate`` is true). ``force`` (with a ``reason``) moves it anyway and records the reason together with
    the refusals it overrode. Returns ``Registry.set_alias``'s dict plus ``gated``, ``forced`` and
    ``overridden``."""
    gated = bool(gate) or alias in protected_aliases()
    reason = (reason or "").strip() or None
    if force and not reason:
        raise InvalidInput('--force needs --reason "..." (it is recorded in the alias history)')
    if not gated:
        r = reg.set_alias(name, alias, version, reason=reason, by=by)
        return {**r, "gated": False, "forced": False, "overridden": []}
    if not force:
        r = reg.set_alias(name, alias, version, reason=reason, guard=make_guard(), by=by)
        return {**r, "gated": True, "forced": False, "overridden": []}
    overridden: list[str] = []

    def record(conn: sa.Connection, registry: Any, n: str, a: str, version_id: int) -> None:
        overridden.extend(check_promotion(conn, n, a, version_id))

    # first learn (read-only) what is being overridden, so the history can say it
    from .refs import validate_alias, validate_name

    validate_name(name)
    validate_alias(alias)
    ref = f"{name}:{version}" if str(version).isdigit() else str(version)
    with reg.read() as conn:
        v = reg.resolve(ref, conn)
        if v["name"] == name:
            record(conn, reg, name, alias, v["id"])
    text = reason + (f" [forced past the promotion gate: {'; '.join(overridden)}]" if overridden else "")
    r = reg.set_alias(name, alias, version, reason=text, by=by)
    return {**r, "gated": True, "forced": bool(overridden), "overridden": overridden}
