"""Likely mislabeled rows by confident learning: out-of-fold class probabilities from a cheap probe
(logistic regression on the base model's frozen sentence embeddings, k stratified folds), then
``cleanlab`` finds the rows whose given label the probe confidently disagrees with.

    issues = find_label_issues(lines, texts, labels, embed(texts))
    issues["estimated_noise_rate"], issues["rows"]   # rows: line, text, label, suggested, score

A probe on frozen embeddings is fast (no fine-tuning) and, being out-of-fold, never scores a row with a
model that saw it. ``estimated_noise_rate`` is cleanlab's: the off-diagonal mass of the estimated joint
distribution of given and true labels. ``score`` is the label quality (0 = surely wrong, 1 = surely
right); rows are ranked worst first.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput

FOLDS = 5
SEED = 0
TEXT_CHARS = 120


def _need() -> None:
    try:
        import cleanlab  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        raise InvalidInput(
            "the label-noise check needs cleanlab and scikit-learn: pip install 'adapterhub[quality]'"
        ) from None


def out_of_fold_probs(x: Any, y: Any, folds: int = FOLDS, seed: int = SEED) -> Any:
    """Class probabilities for every row from a logistic regression that did not see it."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((len(y), int(y.max()) + 1), dtype=np.float64)
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = LogisticRegression(max_iter=2000)
        clf.fit(x[train_idx], y[train_idx])
        probs[np.ix_(test_idx, clf.classes_)] = clf.predict_proba(x[test_idx])
    return probs


def find_label_issues(
    lines: list[int], texts: list[str], labels: list[str], embeddings: Any, folds: int = FOLDS, seed: int = SEED
) -> dict[str, Any]:
    """The label-issues section of a data-check report (see the module docstring). Skipped, with the
    reason in ``skipped``, when there are fewer than two classes or a class has fewer than two rows."""
    import numpy as np

    classes = sorted(set(labels))
    counts = {c: labels.count(c) for c in classes}
    base = {
        "method": "confident learning (cleanlab) on out-of-fold logistic-regression probabilities "
        "over frozen base-model embeddings",
        "classes": classes,
    }
    if len(classes) < 2:
        return {**base, "skipped": "fewer than two labels"}
    smallest = min(counts.values())
    if smallest < 2:
        rare = ", ".join(c for c in classes if counts[c] < 2)
        return {**base, "skipped": f"label(s) with a single row: {rare}"}
    _need()
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    k = max(2, min(folds, smallest))
    ids = {c: i for i, c in enumerate(classes)}
    y = np.array([ids[c] for c in labels])
    x = np.asarray(embeddings, dtype=np.float64)
    probs = out_of_fold_probs(x, y, k, seed)
    flagged = cl_find(y, probs, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(y, probs, method="self_confidence")
    joint = estimate_joint(y, probs)
    rows = [
        {
            "line": lines[i],
            "text": texts[i][:TEXT_CHARS],
            "label": labels[i],
            "suggested": classes[int(probs[i].argmax())],
            "score": round(float(scores[i]), 4),
        }
        for i in flagged
    ]
    return {
        **base,
        "folds": k,
        "seed": seed,
        "checked": len(labels),
        "estimated_noise_rate": round(float(1.0 - np.trace(joint)), 4),
        "count": len(rows),
        "rows": rows,
    }


def gate_noise(section: dict[str, Any] | None, max_rate: float | None) -> str | None:
    """Why training should refuse (None: go ahead) when the estimated noise rate is above ``max_rate``."""
    if max_rate is None or not section or "estimated_noise_rate" not in section:
        return None
    rate = section["estimated_noise_rate"]
    if rate <= max_rate:
        return None
    first = ", ".join(str(r["line"]) for r in section["rows"][:5])
    return (
        f"estimated label noise {rate:.1%} is above --fail-on-noise {max_rate:g} ({section['count']} likely "
        f"mislabeled row(s), first at line(s) {first})"
    )


def check_out(path: str, out: str, force: bool) -> str:
    """Refuse an ``out`` that :func:`clean_file` must not write (before any work); returns its folder."""
    import os

    if os.path.isdir(out):
        raise InvalidInput(f"--out {out} is a directory (give the file to write)")
    if os.path.exists(out) and os.path.samefile(out, path):
        raise InvalidInput(f"--out {out} is the input file; write the cleaned data to a new file")
    if os.path.exists(out) and not force:
        raise InvalidInput(f"--out {out} exists (--force replaces it)")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise InvalidInput(f"--out {out}: directory {folder} does not exist")
    return folder


def clean_file(
    path: str, out: str, report: dict[str, Any], relabel: bool = False, force: bool = False
) -> dict[str, Any]:
    """Write ``path`` to ``out`` without the rows ``report`` (a data-check report with label issues)
    flags, or with their label replaced by the suggested one (``relabel``). Every other line is copied
    byte for byte; blank lines are dropped. The file appears whole or not at all (a temporary file in
    ``out``'s directory, then a rename); nothing else is written. Returns what was done, with the digests
    of both files (the digest ``train`` records for the cleaned file)."""
    import hashlib
    import json
    import os
    import tempfile

    li = report.get("label_issues") or {}
    if "skipped" in li:
        raise InvalidInput(f"cannot clean {os.path.basename(path)}: the label check was skipped ({li['skipped']})")
    if report["malformed"]["count"]:
        first = report["malformed"]["examples"][0]
        raise InvalidInput(
            f"{first['file']}:{first['line']}: {first['error']} ({report['malformed']['count']} "
            "malformed line(s); fix them first, see 'adapterhub data check')"
        )
    folder = check_out(path, out, force)

    flagged = {r["line"]: r for r in li["rows"]}
    with open(path, "rb") as f:
        raw = f.read()
    rows = [(n, line.rstrip(b"\r")) for n, line in enumerate(raw.split(b"\n"), start=1) if line.strip()]
    originals: dict[str, Any] = {}  # relabelling keeps a label's JSON type: 1 stays an int, "1" a string
    if relabel:
        for _, line in rows:
            label = json.loads(line).get("label")
            originals.setdefault(str(label), label)
    lines_out: list[bytes] = []
    for n, line in rows:
        if n in flagged:
            if not relabel:
                continue
            obj = json.loads(line)
            obj["label"] = originals.get(flagged[n]["suggested"], flagged[n]["suggested"])
            line = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        lines_out.append(line)
    data = b"".join(x + b"\n" for x in lines_out)

    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(out) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    changed = [{k: r[k] for k in ("line", "label", "suggested", "score")} for r in li["rows"]]
    return {
        "input": {"path": path, "digest": report["train"]["digest"], "rows": report["rows"]},
        "output": {"path": out, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "rows": len(lines_out)},
        "action": "relabelled" if relabel else "removed",
        "estimated_noise_rate": li["estimated_noise_rate"],
        "count": len(changed),
        "rows": changed,
    }
