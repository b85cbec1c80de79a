"""The maths of combining adapters, on tensors and method-agnostic (the registry operation that stores the result
is :func:`adapterhub.operations.combine.combine`); a method's ``combine`` builds on it.

The maths works on *task tensors*: for LoRA one task tensor per module is the full update
``ΔW_i = s_i · B_i · A_i`` (out, in). Combining the factors ``A`` and ``B`` separately (PEFT's ``linear``)
drops the cross terms ``B_i A_j`` (peft issue #3004), so every ``how`` below is defined on ``ΔW``:

=================  ====================================================================  ==========
how                combined update                                                       exact?
=================  ====================================================================  ==========
``cat``            ``Σ w_i ΔW_i`` by concatenating the factors (weights folded into B)   exact
``linear``         ``Σ w_i ΔW_i``, re-factored by SVD at rank = Σ ranks                  exact
``svd``            ``Σ w_i ΔW_i``, truncated to ``rank`` (best rank-k approximation)      at full rank
``ties``           trim each ΔW_i to its top-``density`` magnitudes, elect a sign per     no (sparse)
                   entry (sign of the sum of trimmed values, PEFT's "total"), mean of
                   the weighted values that agree with it (disjoint mean)
``dare_linear``    drop entries with p = 1 - density, rescale by 1/density, ``Σ w_i ·``   no (random)
``dare_ties``      DARE drop-and-rescale, then TIES sign election and disjoint mean      no (random)
``magnitude_prune`` trim each ΔW_i to its top-``density`` magnitudes, ``Σ w_i ·``          no (sparse)
=================  ====================================================================  ==========

The last four are PEFT's ``peft.utils.merge_utils`` functions applied to ΔW (PEFT's ``*_svd``
combination types), then brought back to a LoRA of ``rank`` by truncated SVD. DARE's Bernoulli masks
come from a ``torch.Generator`` seeded from ``(seed, module key)`` (:func:`module_generator`), so a
given seed gives the same adapter whatever the module order. This module imports torch lazily, so the
CLI can import it for ``--help``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import InvalidInput
from .patterns import exact_pattern_key

if TYPE_CHECKING:  # torch is imported where the maths runs
    import torch

HOWS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: ``how``s that sparsify and so need ``density``
SPARSIFYING = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
#: ``how``s that draw random masks and so use ``seed``
RANDOM = ("dare_linear", "dare_ties")
#: ``how``s whose result is truncated to ``rank`` (default: the largest input rank)
TRUNCATING = ("svd",) + SPARSIFYING
DEFAULT_SEED = 0


# -- option checking ---------------------------------------------------------------------------------------
def check_options(
    how: str,
    n: int,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    rank: int | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Validate the options of a combination and fill in the defaults: weights 1.0 each, seed 0 for DARE.

    Returns ``{"how", "weights", "density", "rank", "seed"}`` (``None`` where an option does not apply).
    """
    if how not in HOWS:
        raise InvalidInput(f"unknown combination '{how}' (valid: {', '.join(HOWS)})")
    if n < 1:
        raise InvalidInput("combine needs at least one adapter")
    if weights is None:
        weights = [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise InvalidInput(f"{len(weights)} weight(s) given for {n} adapter(s); give one weight per adapter")
    if any(w != w or w in (float("inf"), float("-inf")) for w in weights):
        raise InvalidInput(f"weights must be finite numbers, got {weights}")
    if how in SPARSIFYING:
        if density is None:
            raise InvalidInput(f"--density is required for '{how}' (the fraction of entries kept, in (0, 1])")
        density = float(density)
        if not 0.0 < density <= 1.0:
            raise InvalidInput(f"density must be in (0, 1], got {density}")
    elif density is not None:
        raise InvalidInput(f"--density applies only to {', '.join(SPARSIFYING)}, not to '{how}'")
    if rank is not None:
        if how not in TRUNCATING:
            raise InvalidInput(
                f"--rank applies only to {', '.join(TRUNCATING)}; '{how}' is exact at the sum of "
                "the input ranks (use 'svd' to truncate)"
            )
        if isinstance(rank, bool) or int(rank) != rank or rank < 1:
            raise InvalidInput(f"rank must be a positive integer, got {rank!r}")
        rank = int(rank)
    if how in RANDOM:
        seed = DEFAULT_SEED if seed is None else int(seed)
    elif seed is not None:
        raise InvalidInput(f"--seed applies only to {', '.join(RANDOM)}, not to '{how}'")
    return {"how": how, "weights": weights, "density": density, "rank": rank, "seed": seed}


# -- tensor maths (PEFT's merge_utils semantics) -------------------------------------------------------------
def module_generator(seed: int, key: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for one module: seeded from sha256(f"{seed}:{key}") (63 bits)."""
    import torch

    value = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") & (2**63 - 1)
    return torch.Generator().manual_seed(value)


def magnitude_trim(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density · numel)`` entries of largest magnitude, zero the rest (PEFT's
    ``magnitude_based_pruning``; ``density >= 1`` keeps everything)."""
    import torch

    if density >= 1:
        return t
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.reshape(t.shape)


def dare_drop(t: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """Drop each entry with probability ``1 - density`` and rescale the survivors by ``1/density``
    (PEFT's ``random_pruning(rescale=True)``; ``density >= 1`` keeps everything). The mask is
    ``torch.bernoulli(full(density), generator=generator)`` drawn on the CPU."""
    import torch

    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full(t.shape, density, dtype=t.dtype), generator=generator).to(t.device)
    return t * mask / density


def elect_sign_mask(stacked: torch.Tensor) -> torch.Tensor:
    """Stacked task tensors (n, ...) -> bool mask of the entries whose sign equals the elected sign,
    ``+1`` where the sum over tasks is >= 0 else ``-1`` (PEFT's ``calculate_majority_sign_mask``, "total")."""
    import torch

    elected = torch.where(stacked.sum(dim=0) >= 0, 1, -1)
    return stacked.sign() == elected


def disjoint_mean(weighted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over tasks of the entries kept by ``mask`` (PEFT's ``disjoint_merge``; 0 where none is kept)."""
    import torch

    return (weighted * mask).sum(dim=0) / torch.clamp(mask.sum(dim=0), min=1.0)


def combine_dense(
    tasks: Sequence[Any], weights: Sequence[float], how: str, density: float | None = None, generator: Any = None
) -> torch.Tensor:
    """Combine dense task tensors of one shape into one tensor (``linear``/``svd``/``cat``: ``Σ w_i t_i``)."""
    import torch

    w = torch.tensor(list(weights), dtype=tasks[0].dtype, device=tasks[0].device)
    if how in ("ties", "magnitude_prune"):
        assert density is not None, f"{how} needs a density (check_options gives one)"
        tasks = [magnitude_trim(t, density) for t in tasks]
    elif how in RANDOM:
        assert density is not None, f"{how} needs a density (check_options gives one)"
        tasks = [dare_drop(t, density, generator) for t in tasks]
    stacked = torch.stack(list(tasks), dim=0)
    weighted = stacked * w.view((-1,) + (1,) * (stacked.dim() - 1))
    if how in ("ties", "dare_ties"):
        return disjoint_mean(weighted, elect_sign_mask(stacked))
    return weighted.sum(dim=0)


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` approximation of ``delta`` (out, in) as LoRA factors ``(A (k, in), B (out, k))``
    with ``B @ A ≈ delta``, ``B = U_k · S_k``, ``A = Vh_k``; computed in float64, returned in ``delta``'s
    dtype; padded with zero rows/columns when ``rank`` exceeds ``min(out, in)``."""
    import torch

    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    k = min(rank, s.numel())
    a, b = vh[:k], u[:, :k] * s[:k]
    return _pad_rank(a.to(delta.dtype), b.to(delta.dtype), rank)


def low_rank_factored(As: Sequence[Any], Bs: Sequence[Any], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`low_rank` for ``delta = Σ B_i @ A_i`` given as factors (A_i (r_i, in), B_i (out, r_i)),
    without forming ``delta``: QR of the concatenated factors, then an SVD of the small (R, R) core.
    Exact (to rounding) when ``rank >= Σ r_i``."""
    import torch

    a = torch.cat([x.double() for x in As], dim=0)  # (R, in)
    b = torch.cat([x.double() for x in Bs], dim=1)  # (out, R)
    qb, rb = torch.linalg.qr(b)  # (out, R'), (R', R)
    qa, ra = torch.linalg.qr(a.T)  # (in, R'), (R', R)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)  # core (R', R')
    k = min(rank, s.numel())
    dtype = As[0].dtype
    new_b = (qb @ u[:, :k]) * s[:k]  # (out, k)
    new_a = (qa @ vh[:k].T).T  # (k, in)
    return _pad_rank(new_a.to(dtype), new_b.to(dtype), rank)


def unit_scaling_ranks(ranks: dict[str, Any], key: Callable[[str], str] = exact_pattern_key) -> dict[str, Any]:
    """LoRA config fields for factors whose product is the update itself (scaling 1 in every module), given
    each module's actual rank ``{module path: rank}``: ``r`` is the most common rank, ``lora_alpha = r``, and
    the modules of another rank get it in ``rank_pattern`` *and* ``alpha_pattern`` (keys ``key(path)``, an
    exact-match regex), so ``alpha / r`` stays 1 there too. Used by LoRA ``combine`` and by ``extract``.

    Returns ``{"r", "lora_alpha", "rank_pattern", "alpha_pattern"}``."""
    if not ranks:
        raise InvalidInput("no module ranks given")
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {key(p): k for p, k in ranks.items() if k != r}
    return {"r": r, "lora_alpha": r, "rank_pattern": pattern, "alpha_pattern": dict(pattern)}


def _pad_rank(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    k = a.shape[0]
    if k < rank:
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])], dim=0)
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
    return a.contiguous(), b.contiguous()
