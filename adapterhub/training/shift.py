"""Does the eval set (or a sample of production inputs) look like the training data? A two-sample test in
the base model's embedding space: the maximum mean discrepancy (MMD) between the two sets of sentence
embeddings with a Gaussian kernel (median-distance bandwidth), and its permutation p-value -- how often a
random split of the pooled rows is at least as different as the real one. Plus the rows farthest from any
training row, which say *how* the sets differ.

    section = shift_check(train_emb, eval_emb, eval_lines, eval_texts, train_lines)
    section["shifted"], section["p_value"], section["farthest"]

MMD needs no training and makes no assumption about the distributions; the permutation test makes the
p-value exact for the rows compared (up to ``1 / (permutations + 1)``). Large sets are subsampled
(seeded) for the test; the farthest rows are searched among all rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ALPHA = 0.01  # "shifted" when the p-value is below this
PERMUTATIONS = 500
MAX_ROWS = 1000  # per side, for the test (not for the farthest rows)
FARTHEST = 10
TEXT_CHARS = 120


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """``(MMD^2, permutation p-value)`` of two samples (rows are points), biased V-statistic."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([x, y]).astype(np.float64)
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(off)) if off.size and np.median(off) > 0 else 1.0
    k = np.exp(-d2 / bandwidth)
    n, m = len(x), len(y)
    # MMD^2 = w' K w with w = 1/n on the first sample, -1/m on the second; permuting the rows permutes w
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    ws = np.stack([w] + [rng.permutation(w) for _ in range(permutations)], axis=1)
    stats = np.einsum("ip,ip->p", ws, k @ ws)
    p = (1 + int((stats[1:] >= stats[0] - 1e-12).sum())) / (permutations + 1)
    return float(stats[0]), p


def _sample(a: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return a if len(a) <= limit else a[np.sort(rng.choice(len(a), limit, replace=False))]


def farthest_rows(train: np.ndarray, other: np.ndarray, k: int = FARTHEST) -> list[tuple[int, float, int]]:
    """``(index in other, cosine distance, index of the nearest training row)`` of the ``k`` rows of
    ``other`` farthest from every training row (embeddings are unit vectors)."""
    best = np.empty(len(other))
    nearest = np.empty(len(other), dtype=np.int64)
    for i in range(0, len(other), 256):
        sims = other[i : i + 256] @ train.T
        nearest[i : i + 256] = sims.argmax(1)
        best[i : i + 256] = sims.max(1)
    dist = 1.0 - best
    order = np.argsort(-dist, kind="stable")[:k]
    return [(int(i), float(dist[i]), int(nearest[i])) for i in order]


def shift_check(
    train: np.ndarray,
    other: np.ndarray,
    other_lines: list[int],
    other_texts: list[str],
    train_lines: list[int],
    permutations: int = PERMUTATIONS,
    seed: int = 0,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """The shift section of a data-check report for ``other`` against ``train`` (embeddings, rows in the
    order of the line lists)."""
    out: dict[str, Any] = {
        "method": "MMD two-sample test on base-model embeddings, permutation p-value",
        "alpha": alpha,
        "rows": len(other),
        "train_rows": len(train),
    }
    if len(train) < 2 or len(other) < 2:
        return {**out, "skipped": "fewer than two rows on a side"}
    rng = np.random.default_rng(seed)
    x, y = _sample(np.asarray(train), MAX_ROWS, rng), _sample(np.asarray(other), MAX_ROWS, rng)
    stat, p = mmd_test(x, y, permutations, seed)
    far = farthest_rows(np.asarray(train, dtype=np.float32), np.asarray(other, dtype=np.float32))
    return {
        **out,
        "mmd2": round(stat, 6),
        "permutations": permutations,
        "p_value": round(p, 4),
        "shifted": p < alpha,
        "farthest": [
            {
                "line": other_lines[i],
                "text": other_texts[i][:TEXT_CHARS],
                "distance": round(d, 4),
                "nearest_train_line": train_lines[j],
            }
            for i, d, j in far
        ],
    }
