"""The LoRA / DoRA wrapper module and the merge maths, numerically identical to ``peft.tuners.lora``.

Shapes (``in``/``out`` are the layer's features, ``r`` the rank)::

    base weight W   nn.Linear: (out, in)        transformers Conv1D (fan_in_fan_out): (in, out)
    lora_A.weight   (r, in)
    lora_B.weight   (out, r)
    magnitude m     (out,)                      DoRA only
    delta           B @ A * scaling : (out, in) (transposed to (in, out) for Conv1D)

LoRA:  y = base(x) + B(A(dropout(x))) * scaling
DoRA:  y = base(x) + (m / ||W + s·BA||_row - 1) · (base(x) - bias) + m / ||W + s·BA||_row · B(A(x)) · s
       where the row norm is detached from the graph (DoRA paper §4.3, as PEFT does).

The adapter parameters are float32 whatever the base dtype (PEFT's default ``autocast_adapter_dtype``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.tuning import in_out_features, is_conv1d  # noqa: F401  (re-exported)

#: adapter parameter dtype: float32 whatever the base (PEFT upcasts fp16/bf16 adapters to fp32 by default)
ADAPTER_DTYPE = tuners.adapter_dtype()


def transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """PEFT's ``transpose``: ``weight.T`` for (in, out) layouts."""
    return weight.T if fan_in_fan_out else weight


# -- merge maths (shared by the module and the streaming merge) -----------------------------------------
def delta_weight(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, fan_in_fan_out: bool) -> torch.Tensor:
    """PEFT's ``Linear.get_delta_weight``: ``transpose(B @ A, fan_in_fan_out) * scaling``.

    lora_A (r, in), lora_B (out, r) -> (out, in), or (in, out) for fan_in_fan_out. Computed in the adapter's
    dtype; on CPU, fp16/bf16 adapters are computed in fp32 and cast back (as PEFT does).
    """
    dtype = lora_B.dtype
    cast = lora_B.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
    if cast:
        lora_A, lora_B = lora_A.float(), lora_B.float()
    out = transpose(lora_B @ lora_A, fan_in_fan_out) * scaling
    return out.to(dtype) if cast else out


def weight_norm(weight: torch.Tensor, lora_weight: torch.Tensor, scaling: float, fan_in_fan_out: bool) -> torch.Tensor:
    """PEFT's ``DoraLinearLayer.get_weight_norm``: row norm of ``transpose(W) + scaling * lora_weight``.

    weight: W in the layer's layout; lora_weight: (out, in) -> (out,)
    """
    w = transpose(weight, fan_in_fan_out)
    w = w + scaling * lora_weight
    return torch.linalg.norm(w, dim=1).to(w.dtype)


def row_kernel(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    fan_in_fan_out: bool,
    dtype: torch.dtype,
    blocks: list[tuple[int, int]],
    cols: int,
):
    """``merge(block, i, j)``: merge rows ``i:j`` (one of ``blocks``) of W (``block``, a ``(j - i, cols)``
    tensor of ``dtype``) in place, bit for bit as PEFT's ``W += delta`` does for those rows; None when this
    BLAS cannot give those bits block by block (see :func:`blocks_exact`): merge the whole tensor then.

    Why blocks are exact: a block's delta is the same GEMM on a slice of B (of A's columns for
    fan_in_fan_out); its k-dim is r, reduced the same way for every element of a GEMM of >= 4 rows on MKL
    (GEMMs of 1-3 rows take another path: :data:`adapterhub.merge.writer.MIN_BLOCK_ROWS`); then the same
    elementwise ops. Checked per block size at run time, and with torch.equal against the unblocked form in
    the tests and the 1B benchmark."""
    sizes = {j - i for i, j in blocks}
    if not blocks_exact(lora_A, lora_B, fan_in_fan_out, sizes):
        return None
    max_rows = max(sizes)
    fast = lora_A.dtype == lora_B.dtype == torch.float32 and lora_A.device.type == lora_B.device.type == "cpu"
    if not (fast and dtype in (torch.float32, torch.bfloat16, torch.float16)):  # bf16 adapters, fp64 W: the

        def merge_ref(block: torch.Tensor, i: int, j: int) -> None:  # reference ops, block by block
            if fan_in_fan_out:
                block += delta_weight(lora_A[:, i:j], lora_B, scaling, True)
            else:
                block += delta_weight(lora_A, lora_B[i:j], scaling, False)

        return merge_ref
    # fp32 adapters: delta = (B @ A) * s in fp32, + W in fp32, rounded once to W's dtype: what the mixed
    # dtype ``W += delta`` does, as same-layout passes over one fp32 buffer that stays in L2
    buf = torch.empty((max_rows, cols), dtype=torch.float32)
    folded = _fold_scaling(lora_A, lora_B, scaling)  # (A, B·s) when that is exact, else None

    def operands(a: torch.Tensor, b: torch.Tensor, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        # rows of W (in, out) for fan_in_fan_out are input features: delta[i:j] = A[:, i:j].T @ B.T
        return (a.T[i:j], b.T) if fan_in_fan_out else (b[i:j], a)

    # the block sizes whose one-GEMM form is exact on this BLAS (every block of a size has the same layout)
    fused = set() if folded is None else {m for m in sizes if _addmm_exact(*operands(*folded, 0, m))}

    def merge(block: torch.Tensor, i: int, j: int) -> None:
        d = buf[: j - i]
        if j - i in fused:  # one GEMM pass: d = fp32(W) + (B·s) @ A
            d.copy_(block)
            d.addmm_(*operands(*folded, i, j))
        else:
            torch.mm(*operands(lora_A, lora_B, i, j), out=d)
            if scaling != 1.0:  # (x * 1.0 is x: one pass fewer when lora_alpha == r)
                d.mul_(scaling)
            d.add_(block)  # fp32 addition commutes: == fp32(W) + delta
        block.copy_(d)  # the block's rows were read above and are not read again

    return merge


def _fold_scaling(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float):
    """``(A, B·s)`` when ``(B·s) @ A`` equals ``(B @ A)·s`` bit for bit for every element, else None.

    True when s = 2^k, k >= 0 (multiplying by it is exact and commutes with fp32 rounding in the normal
    range), B·s neither overflows nor anything else can (|A|·|B|·r·s far below fp32's max), and no product
    of an A and a B element is finer than fp32's smallest subnormal step (2^-149): then every partial sum of
    the GEMM that lands in the subnormal range is exact in both forms, and every other one rounds alike."""
    mant, exp = math.frexp(scaling)
    if mant != 0.5 or exp < 1 or not (lora_A.numel() and lora_B.numel()):
        return None

    def extremes(t: torch.Tensor) -> tuple[float, int]:
        """max |element| and the exponent of the smallest non-zero one (x = m·2^e, 0.5 <= m < 1)"""
        a = t.abs()
        low = torch.where(a > 0, a, math.inf).min().item()
        return a.max().item(), math.frexp(low)[1] if math.isfinite(low) else 0

    (amax, ea), (bmax, eb) = extremes(lora_A), extremes(lora_B)
    if not (math.isfinite(amax) and math.isfinite(bmax)) or amax * bmax * lora_A.shape[0] * scaling >= 2.0**100:
        return None
    # a = ma·2^(ea-24) with an integer 24-bit ma: a product is a multiple of 2^(ea+eb-48); need >= -149
    if ea + eb - 48 < -149:
        return None
    return lora_A, lora_B * scaling if scaling != 1.0 else lora_B


#: (shapes, strides, threads) -> whether ``C.addmm_(X, Y)`` equals ``C + X @ Y`` bit for bit on this BLAS
_ADDMM_EXACT: dict[tuple, bool] = {}


def _addmm_exact(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether the BLAS's ``C += X @ Y`` (beta 1) adds the finished product to C, as ``C + X @ Y`` does, for
    operands of these shapes and layouts, rather than accumulating onto C (other rounding). Tried once per
    layout on random data, whose fp32 sums differ in most elements if the order differs."""
    key = (tuple(x.shape), x.stride(), tuple(y.shape), y.stride(), torch.get_num_threads())
    ok = _ADDMM_EXACT.get(key)
    if ok is None:
        g = torch.Generator().manual_seed(0)

        def like(t: torch.Tensor) -> torch.Tensor:
            # a fresh tensor with t's strides: a transposed view stays transposed
            base = torch.randn(t.T.shape if t.stride(0) < t.stride(-1) else t.shape, generator=g)
            return base.T if t.stride(0) < t.stride(-1) else base

        xs, ys = like(x), like(y)
        c = torch.randn((x.shape[0], y.shape[1]), generator=g)
        ok = _ADDMM_EXACT[key] = torch.equal(c.clone().addmm_(xs, ys), c + torch.mm(xs, ys))
    return ok


#: (row counts, r, columns, fan_in_fan_out, dtype, threads) -> whether block GEMMs give PEFT's bits
_BLOCKS_EXACT: dict[tuple, bool] = {}


def blocks_exact(lora_A: torch.Tensor, lora_B: torch.Tensor, fan_in_fan_out: bool, sizes: set[int]) -> bool:
    """Whether the delta rows of a block, one GEMM over that block's rows, equal the same rows of PEFT's one
    GEMM over the whole weight (``B @ A``, transposed for fan_in_fan_out), for blocks of each of ``sizes``
    rows of W. A BLAS may compute short GEMMs another way (MKL: 1-3 rows) with other roundings; tried once
    per shape on random data (a differing path differs in most elements), blocks at the start, middle and end
    of a taller GEMM, in the kernel's own layouts."""
    r = lora_A.shape[0]
    cols = lora_A.shape[1] if not fan_in_fan_out else lora_B.shape[0]  # columns of W
    dtype = torch.float64 if lora_B.dtype == torch.float64 else torch.float32  # (CPU: fp16/bf16 in fp32)
    key = (tuple(sorted(sizes)), r, cols, fan_in_fan_out, dtype, torch.get_num_threads())
    ok = _BLOCKS_EXACT.get(key)
    if ok is None:
        g = torch.Generator().manual_seed(1)
        ok = True
        for m in sorted(sizes):
            rows = 2 * m + 5
            if fan_in_fan_out:  # W (in, out): A (r, in), B (out, r); PEFT: (B @ A).T
                a, b = torch.randn(r, rows, generator=g, dtype=dtype), torch.randn(cols, r, generator=g, dtype=dtype)
                full, x, y = (b @ a).T, a.T, b.T
            else:  # W (out, in): A (r, in), B (out, r); PEFT: B @ A
                a, b = torch.randn(r, cols, generator=g, dtype=dtype), torch.randn(rows, r, generator=g, dtype=dtype)
                full, x, y = b @ a, b, a
            ok = ok and all(torch.equal(torch.mm(x[i : i + m], y), full[i : i + m]) for i in (0, m // 2 + 1, rows - m))
        _BLOCKS_EXACT[key] = ok
    return ok


def merge_weight(
    base: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    fan_in_fan_out: bool,
    magnitude: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The merged weight, bit for bit what PEFT's ``merge(safe_merge=False)`` leaves in the base layer.

    base: W (out, in) or (in, out); returns a new tensor of ``base``'s shape and dtype, or ``out`` (which
    may be ``base`` itself: the streaming merge merges into its read buffer) for LoRA.
    LoRA: ``W += delta`` (in place, so a bf16 W gets round(fp32(W) + delta)).
    DoRA: ``(m / ||W + delta||_row) * (W + delta)`` computed in the promoted dtype, then cast to W's dtype.
    """
    if magnitude is None and base.dim() == 2 and base.device.type == "cpu":
        # row blocks of W (see row_kernel): no full-size fp32 delta or copy of W is ever made
        from adapterhub.tuning import row_blocks

        w = base.detach()
        out = torch.empty(w.shape, dtype=w.dtype) if out is None else out
        blocks = row_blocks(*w.shape)
        merge = row_kernel(lora_A, lora_B, scaling, fan_in_fan_out, w.dtype, blocks, w.shape[1])
        if merge is not None:
            for i, j in blocks:
                if out is not w:
                    out[i:j].copy_(w[i:j])
                merge(out[i:j], i, j)
            return out
    delta = delta_weight(lora_A, lora_B, scaling, fan_in_fan_out)
    if magnitude is None:
        out = base.detach().clone() if out is None else out
        if out is not base:
            out.copy_(base)
        out += delta
        return out
    norm = weight_norm(base, transpose(delta, fan_in_fan_out), 1, fan_in_fan_out).detach()  # (out,)
    dora_factor = transpose((magnitude / norm).view(-1, 1), fan_in_fan_out)  # (out, 1) or (1, out)
    return (dora_factor * (base + delta)).to(base.dtype)


# -- the wrapper module ---------------------------------------------------------------------------------
class LoraLinear(nn.Module):
    """Wraps an ``nn.Linear`` or transformers ``Conv1D`` (kept as ``base_layer``, frozen) with a LoRA branch.

    Parameter names mirror PEFT's minus the adapter name: ``lora_A.weight``, ``lora_B.weight`` and, for DoRA,
    ``lora_magnitude_vector`` (PEFT's checkpoint key for ``lora_magnitude_vector.<adapter>.weight``).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        *,
        r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        use_dora: bool = False,
        init_lora_weights: bool | str = True,
        own_base: bool = True,
    ) -> None:
        super().__init__()
        if own_base:
            self.base_layer = base_layer
        else:  # a branch of a stack: the stack owns the base layer; keep a plain (unregistered) reference
            self.__dict__["base_layer"] = base_layer
        self.fan_in_fan_out = is_conv1d(base_layer)  # PEFT forces this per layer type
        self.in_features, self.out_features = in_out_features(base_layer)
        self.r = r
        self.lora_alpha = lora_alpha
        self.use_rslora = use_rslora
        self.scaling = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()

        weight = base_layer.weight
        # created in fp32 (default init = nn.Linear's), then initialised like PEFT's reset_lora_parameters
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=weight.device, dtype=ADAPTER_DTYPE)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=weight.device, dtype=ADAPTER_DTYPE)
        if init_lora_weights is True:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
        elif init_lora_weights == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1 / r)
            nn.init.zeros_(self.lora_B.weight)

        self.lora_magnitude_vector: nn.Parameter | None = None
        if use_dora:
            # PEFT computes the initial magnitude with the adapter cast to the base dtype: ||W + s·BA||_row (out,)
            with torch.no_grad():
                lora_weight = self.lora_B.weight.to(weight.dtype) @ self.lora_A.weight.to(weight.dtype)
                norm = weight_norm(weight, lora_weight, self.scaling, self.fan_in_fan_out)
            self.lora_magnitude_vector = nn.Parameter(norm.to(ADAPTER_DTYPE), requires_grad=True)

    @property
    def weight(self) -> torch.Tensor:  # some model code reads `.weight` of its projections
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        kind = "dora" if self.lora_magnitude_vector is not None else "lora"
        kind += f": r={self.r}, alpha={self.lora_alpha}, scaling={self.scaling:g}"
        return kind + f", fan_in_fan_out={self.fan_in_fan_out}"

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)  # (..., out)
        return self.accumulate(x, result).to(result.dtype)

    def accumulate(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` plus this adapter's contribution (not cast back to ``result``'s dtype). For DoRA,
        ``result`` is the "base result" the magnitude rescales: in a stack it includes the adapters
        before this one, as in PEFT with several active adapters."""
        x = x.to(self.lora_A.weight.dtype)  # PEFT's _cast_input_dtype
        if self.lora_magnitude_vector is None:
            lora = self.lora_B(self.lora_A(self.lora_dropout(x)))  # (..., out)
            if result.dtype == lora.dtype:
                # one fused pass and no temporary: the base layer's fresh output is not saved for backward
                return result.add_(lora, alpha=self.scaling)
            return result + lora * self.scaling
        return result + self._dora_delta(x, result)

    def _dora_delta(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """PEFT's ``DoraLinearLayer.forward``: the DoRA output to add on top of the base output."""
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            base_result = result  # (..., out), reused
        else:
            x = self.lora_dropout(x)
            base_result = None
        # (BA)^T via the modules, like PEFT (FSDP-friendly): eye(in) -> (in, out) -> .T (out, in)
        eye = torch.eye(self.lora_A.weight.shape[1], device=self.lora_A.weight.device, dtype=self.lora_A.weight.dtype)
        lora_weight = self.lora_B(self.lora_A(eye)).T.to(x.dtype)
        weight = self.base_layer.weight.to(x.dtype)
        norm = weight_norm(weight, lora_weight.detach(), self.scaling, self.fan_in_fan_out).detach()  # (out,)
        mag_norm_scale = (self.lora_magnitude_vector / norm).view(1, -1)  # (1, out)
        lora_result = self.lora_B(self.lora_A(x))  # (..., out)
        if base_result is not None:
            bias = self.base_layer.bias
            if bias is not None:
                base_result = base_result - bias
        else:
            base_result = F.linear(x, transpose(weight, self.fan_in_fan_out))
        return (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * self.scaling

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight with this adapter merged in (PEFT's ``merge``), same shape and dtype as the base."""
        return merge_weight(
            self.base_layer.weight,
            self.lora_A.weight,
            self.lora_B.weight,
            self.scaling,
            self.fan_in_fan_out,
            self.lora_magnitude_vector,
        )
