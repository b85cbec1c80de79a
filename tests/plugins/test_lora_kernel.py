"""The LoRA merge kernel's one-GEMM path (``d = fp32(W) + (B·s) @ A`` as ``addmm_``) against the reference
ops PEFT runs (``W += (B @ A) * s``), including the inputs where folding s into B would change a bit."""

from __future__ import annotations

import math

import pytest
import torch
from adapterhub_lora import layer


def reference(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: float, ffo: bool) -> torch.Tensor:
    """PEFT's merge: ``W += transpose(B @ A) * s`` in place on W (fp32 delta, one rounding to W's dtype)."""
    out = w.clone()
    out += layer.delta_weight(a, b, s, ffo)
    return out


def factors(r: int, n_in: int, n_out: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, n_in, generator=g) / n_in**0.5, torch.randn(n_out, r, generator=g) * 0.01


@pytest.mark.parametrize("s", [1.0, 2.0, 4.0, 0.5, 0.75, 16 / 8**0.5])
@pytest.mark.parametrize("ffo", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_merge_weight_is_peft_bit_for_bit(s, ffo, dtype):
    a, b = factors(8, 300, 530)
    w = (torch.randn((300, 530) if ffo else (530, 300), generator=torch.Generator().manual_seed(1)) * 0.02).to(dtype)
    got = layer.merge_weight(w, a, b, s, ffo)
    assert got.dtype == dtype and torch.equal(got, reference(w, a, b, s, ffo))
    assert not torch.equal(got, w)


def test_fold_only_when_exact():
    a, b = factors(4, 64, 96)
    for s in (1.0, 2.0, 8.0):
        folded = layer._fold_scaling(a, b, s)
        assert folded is not None and folded[0] is a and torch.equal(folded[1], b * s)
    for s in (0.5, 0.75, 3.0, 16 / 8**0.5):  # not 2^k with k >= 0
        assert layer._fold_scaling(a, b, s) is None
    tiny = a.clone()
    tiny[0, 0] = 2.0**-100  # with |B| >= ~2^-20: products finer than 2^-149
    assert layer._fold_scaling(tiny, b, 2.0) is None
    huge = b.clone()
    huge[0, 0] = 1e37
    assert layer._fold_scaling(a, huge, 2.0) is None
    for bad in (float("inf"), float("nan")):
        odd = b.clone()
        odd[1, 1] = bad
        assert layer._fold_scaling(a, odd, 2.0) is None
    assert layer._fold_scaling(a, torch.zeros_like(b), 2.0) is not None  # zeros are exact


def test_subnormal_products_where_folding_would_differ():
    """Products near fp32's subnormal range round differently once scaled by 2: folding s into B would change
    bits there; the kernel must see that and keep the reference ops."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(16, 256, generator=g) * 2.0**-70
    b = torch.randn(200, 16, generator=g) * 2.0**-70
    s = 2.0
    assert not torch.equal((b * s) @ a, (b @ a) * s)  # the hazard is real for this data
    assert layer._fold_scaling(a, b, s) is None
    w = torch.zeros(200, 256)  # fp32 zeros: the merged weight is the delta itself, every bit visible
    got = layer.merge_weight(w, a, b, s, False)
    assert torch.equal(got, reference(w, a, b, s, False)) and got.abs().max() > 0


def test_fused_and_reference_paths_agree(monkeypatch):
    """Forcing each path gives the same bits: the fused one (what this machine's BLAS allows) and the plain one
    (what a BLAS that accumulates onto C gets)."""
    a, b = factors(16, 512, 700, seed=5)
    w = (torch.randn(700, 512, generator=torch.Generator().manual_seed(6)) * 0.02).to(torch.bfloat16)
    want = reference(w, a, b, 2.0, False)
    calls = []
    for exact in (True, False):
        monkeypatch.setattr(layer, "_addmm_exact", lambda x, y, exact=exact: calls.append(exact) or exact)
        assert torch.equal(layer.merge_weight(w, a, b, 2.0, False), want)
    assert True in calls and False in calls


def test_calibration_catches_a_blas_that_accumulates_onto_c(monkeypatch):
    """``C.addmm_(X, Y)`` computed as C + x0·y0 + x1·y1 + ... (another rounding) must be caught."""
    a, b = factors(16, 128, 64, seed=7)
    monkeypatch.setattr(layer, "_ADDMM_EXACT", {})
    assert layer._addmm_exact(b[0:32], a) is True  # this machine's BLAS: the product, then one addition

    def onto_c(self, x, y):
        for k in range(x.shape[1]):
            self.add_(torch.outer(x[:, k], y[k]))
        return self

    monkeypatch.setattr(layer, "_ADDMM_EXACT", {})
    monkeypatch.setattr(torch.Tensor, "addmm_", onto_c)
    assert layer._addmm_exact(b[0:32], a) is False
    w = torch.randn(64, 128) * 0.02
    assert torch.equal(layer.merge_weight(w, a, b, 2.0, False), reference(w, a, b, 2.0, False))


def test_min_exponent_bound_is_the_fp32_grid():
    """The guard's arithmetic: an fp32 x = m·2^e (0.5 <= m < 1) is a multiple of 2^(e-24)."""
    for x in (1.0, 0.1, 3e-20, 2.0**-126, 2.0**-140):
        x32 = torch.tensor(x, dtype=torch.float32).item()
        e = math.frexp(x32)[1]
        assert (x32 / 2.0 ** (e - 24)).is_integer()


@pytest.mark.parametrize("ffo", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("min_rows", [16, 1], ids=["min16", "min1"])
def test_row_blocks_with_any_remainder_are_peft_bit_for_bit(ffo, min_rows, monkeypatch):
    """Blocks of 20 rows and every remainder (with min1, remainders of 1-3 rows, whose GEMMs MKL computes
    another way: the kernel must notice and merge the whole tensor)."""
    import adapterhub.merge.writer as mw

    monkeypatch.setattr(mw, "ROW_BLOCK", 20 * 48)
    monkeypatch.setattr(mw, "MIN_BLOCK_ROWS", min_rows)
    for rows in range(17, 66, 3):
        a, b = factors(8, rows if ffo else 48, 48 if ffo else rows, seed=rows)
        w = (torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows)) * 0.02).to(torch.bfloat16)
        # fp32 zeros: the merged weight is the delta itself, so a sum rounded another way shows (in bf16 one
        # in ~65000 would)
        for base in (w, torch.zeros(rows, 48)):
            for s in (2.0, 0.75):
                got = layer.merge_weight(base, a, b, s, ffo)
                assert torch.equal(got, reference(base, a, b, s, ffo)), (rows, s, base.dtype)


def test_block_check_agrees_with_every_block_position():
    """``blocks_exact`` against brute force: every block of m rows of a 60-row GEMM, both layouts."""
    g = torch.Generator().manual_seed(11)
    verdicts = {}
    for ffo in (False, True):
        for m in (1, 2, 3, 4, 5, 16, 21):
            a = torch.randn(8, 60 if ffo else 40, generator=g)
            b = torch.randn(40 if ffo else 60, 8, generator=g)
            full = (b @ a).T if ffo else b @ a
            x, y = (a.T, b.T) if ffo else (b, a)
            brute = all(torch.equal(torch.mm(x[i : i + m], y), full[i : i + m]) for i in range(0, 61 - m))
            layer._BLOCKS_EXACT.clear()
            assert layer.blocks_exact(a, b, ffo, {m}) == brute, (ffo, m)
            verdicts[ffo, m] = brute
    assert all(verdicts[ffo, m] for ffo in (False, True) for m in (4, 16, 21))  # MIN_BLOCK_ROWS is safe
    if torch.backends.mkl.is_available():  # MKL's short GEMMs: the reason for the check
        assert not verdicts[False, 2] and not verdicts[False, 3]
