"""Several LoRA/DoRA adapters on one model: stacks (all active at once) and per-row routing.

Stack (:func:`attach_stack`): each targeted layer becomes a :class:`LoraStackLinear` that runs the base layer
once and adds every adapter's branch in stack order, exactly what PEFT computes with several active adapters
(``set_adapter([...])``): LoRA deltas add; a DoRA branch rescales the result so far (PEFT's semantics).

Routing (:func:`attach_routed`): each targeted layer becomes a :class:`RoutedLoraLinear` holding, per adapter
that targets it, ``A^T`` (in, r) and ``s·B^T`` (r, out) (scaling folded in) and, for DoRA, the gain
``m / ||W + s·BA||_row`` (out,). Once per model call a :class:`RoutePlan` (shared by every routed layer) sorts the
rows by adapter. Each layer runs the base layer once on the whole batch, then adds the adapters' updates in
place, by one of three exact paths chosen by size: *grouped* (two small matmuls per adapter present, on its
contiguous block of rows; base rows cost nothing), for very few tokens *dense* (``((x @ A_cat) · mask) @
B_cat``: three ops whatever the number of adapters), and for long rows (prefill) *in place* (per run of
consecutive rows of one adapter, ``out[run] += (x[run] @ A^T) @ s·B^T`` on views: no gather, no scatter). Tried and dropped (slower than PEFT or than these on CPU):
a per-row gather of padded factors + ``bmm`` (copies rows × in × r floats per layer: 3x slower than PEFT at 64
rows × 1 token), and adapters padded to one rank with ``bmm`` over blocks. Routing is for inference: the factors
are buffers (no gradients), dropout is off, DoRA gains are computed once at attach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput
from adapterhub.tuning import check_fit

from .config import LoraConfig
from .layer import ADAPTER_DTYPE, LoraLinear, in_out_features, is_conv1d, weight_norm
from .model import PREFIX, STATE_ATTR, resolve

_MULTI_ATTR = "_adapterhub_lora_multi"


@dataclass
class Multi:
    """What a stack or routed attach changed (kept on the model for detach)."""

    kind: str  # "stack" | "routed"
    configs: list[LoraConfig]  # effective configs, in order
    wrapped: list[str]  # module paths replaced
    requires_grad: dict[str, bool] = field(default_factory=dict)


def _check_free(model: nn.Module) -> None:
    if STATE_ATTR in model.__dict__ or _MULTI_ATTR in model.__dict__:
        raise InvalidInput("lora adapters are already attached to this model; detach them first")


def _resolve_all(model: nn.Module, configs: list[LoraConfig], what: str):
    out = []
    for i, config in enumerate(configs):
        if config.modules_to_save:
            raise InvalidInput(
                f"adapter {i + 1} has modules_to_save {config.modules_to_save}; lora {what} supports only adapters "
                "without them (merge it, or serve it alone)"
            )
        effective, targets, _ = resolve(model, config)
        out.append((effective, targets))
    return out


def _ordered_paths(model: nn.Module, resolved) -> list[str]:
    wanted = {p for _, targets in resolved for p in targets}
    return [n for n, _ in model.named_modules() if n in wanted]


def _freeze(model: nn.Module) -> dict[str, bool]:
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def detach(model: nn.Module) -> None:
    """Undo :func:`attach_stack` or :func:`attach_routed`."""
    state = model.__dict__.get(_MULTI_ATTR)
    if state is None:
        raise InvalidInput("no lora stack or routed adapters are attached to this model")
    for path in state.wrapped:
        tuners.set_submodule(model, path, model.get_submodule(path).base_layer)
    for name, p in model.named_parameters():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    del model.__dict__[_MULTI_ATTR]


# -- stacks ------------------------------------------------------------------------------------------------
class LoraStackLinear(nn.Module):
    """A base Linear/Conv1D plus several LoRA/DoRA branches applied in order (``branches.<i>`` is the i-th
    adapter of the stack that targets this layer; ``slots`` maps it back to its stack position)."""

    def __init__(self, base_layer: nn.Module, branches: list[LoraLinear], slots: list[int]) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.branches = nn.ModuleList(branches)
        self.slots = list(slots)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)  # (..., out)
        dtype = result.dtype
        for branch in self.branches:
            result = branch.accumulate(x, result)
        return result.to(dtype)  # cast once at the end, like PEFT


def attach_stack(model: nn.Module, adapters: list[tuple[LoraConfig, dict[str, torch.Tensor]]]) -> list[LoraConfig]:
    """Attach every adapter at once (inference; all parameters frozen). Returns the effective configs."""
    _check_free(model)
    resolved = _resolve_all(model, [c for c, _ in adapters], "stacks")
    paths = _ordered_paths(model, resolved)
    layers: dict[str, LoraStackLinear] = {}
    for path in paths:
        base = model.get_submodule(path)
        branches, slots = [], []
        for i, (eff, targets) in enumerate(resolved):
            if path in targets:
                branches.append(
                    LoraLinear(
                        base,
                        r=eff.rank_for(path),
                        lora_alpha=eff.alpha_for(path),
                        lora_dropout=eff.lora_dropout,
                        use_rslora=eff.use_rslora,
                        use_dora=eff.use_dora,
                        init_lora_weights=False,
                        own_base=False,
                    )
                )
                slots.append(i)
        layers[path] = LoraStackLinear(base, branches, slots)
    for i, (_, tensors) in enumerate(adapters):  # check everything before changing the model
        params = {}
        for path, layer in layers.items():
            if i in layer.slots:
                br = layer.branches[layer.slots.index(i)]
                params[f"{PREFIX}{path}.lora_A.weight"] = br.lora_A.weight
                params[f"{PREFIX}{path}.lora_B.weight"] = br.lora_B.weight
                if br.lora_magnitude_vector is not None:
                    params[f"{PREFIX}{path}.lora_magnitude_vector"] = br.lora_magnitude_vector
        check_fit(f"adapter {i + 1}: lora", {k: tuple(v.shape) for k, v in params.items()}, tensors)
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(tensors[key])
    flags = _freeze(model)
    for path, layer in layers.items():
        layer.requires_grad_(False)
        layer.train(layer.base_layer.training)
        tuners.set_submodule(model, path, layer)
    model.__dict__[_MULTI_ATTR] = Multi("stack", [e for e, _ in resolved], paths, flags)
    return [e for e, _ in resolved]


# -- per-row routing ---------------------------------------------------------------------------------------
class RoutePlan:
    """The grouping of one call's rows by slot, computed once per routing index and shared by every routed layer
    of the model: ``perm`` sorts the rows by slot; ``segments`` lists ``(slot, start, end, rows)`` of each
    adapter's rows in that order (base rows, slot 0, are left out); ``sorted`` is true when the rows already
    come grouped. It also caches, for the current call, the row-sorted input (q/k/v and gate/up share theirs)
    and the column masks of the dense path (layers with the same rank layout share one)."""

    __slots__ = ("key", "perm", "segments", "runs", "sorted", "rows", "_x", "_segs", "_deltas", "_masks")

    def __init__(self) -> None:
        self.key = None
        self._x: tuple | None = None
        self._segs: tuple | None = None
        self._deltas: dict = {}
        self._masks: dict = {}

    def update(self, index: torch.Tensor) -> "RoutePlan":
        if index is self.key:
            return self
        slots = index.tolist()
        order = sorted(range(len(slots)), key=slots.__getitem__)  # stable
        self.sorted = order == list(range(len(slots)))
        self.perm = torch.tensor(order, dtype=torch.long, device=index.device)
        self.runs: dict[int, list[tuple[int, int]]] = {}  # slot -> its runs of consecutive rows, in place
        for row, slot in enumerate(slots):
            if slot:
                runs = self.runs.setdefault(slot, [])
                if runs and runs[-1][1] == row:
                    runs[-1] = (runs[-1][0], row + 1)
                else:
                    runs.append((row, row + 1))
        self.segments, start = [], 0
        while start < len(order):
            slot, end = slots[order[start]], start
            while end < len(order) and slots[order[end]] == slot:
                end += 1
            if slot:
                self.segments.append((slot, start, end, self.perm[start:end]))
            start = end
        self.rows, self.key, self._masks, self._deltas, self._segs = len(slots), index, {}, {}, None
        return self

    def sorted_rows(self, x: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """``xs`` (rows, tokens, in), a view of the layer input ``x``, with its rows grouped by adapter; cached
        while the same input tensor recurs unchanged (held, so its identity cannot be reused by another
        tensor; its version counter moves if it is written in place)."""
        if self.sorted:
            return xs
        if self._x is not None and self._x[0] is x and self._x[2] is self.key and self._x[3] == x._version:
            return self._x[1]
        out = xs.index_select(0, self.perm)
        self._x = (x, out, self.key, x._version)
        return out

    def segment_inputs(self, x: torch.Tensor, xs: torch.Tensor) -> list[torch.Tensor]:
        """Each segment's input rows as ``(n · tokens, in)`` in the adapters' dtype, in segment order; cached
        like :meth:`sorted_rows` (layers that share an input, q/k/v and gate/up, share these views)."""
        if self._segs is not None and self._segs[0] is x and self._segs[1] is self.key and self._segs[3] == x._version:
            return self._segs[2]
        xs = self.sorted_rows(x, xs)
        n_in = xs.shape[-1]
        segs = [xs[start:end].reshape(-1, n_in).to(ADAPTER_DTYPE) for _, start, end, _ in self.segments]
        self._segs = (x, self.key, segs, x._version)
        return segs

    def delta_parts(self, out: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A buffer ``(adapter rows, tokens, out)`` for the deltas in sorted order and its ``(n · tokens, out)``
        view per segment. Every layer of this call with the same output shape reuses it: each layer's deltas
        are added into its output (``index_add_``) before the next layer runs."""
        key = (out.shape[1], out.shape[2], out.dtype, out.device)
        found = self._deltas.get(key)
        if found is None:
            first, n_out = self.segments[0][1], out.shape[2]  # base rows (slot 0) sort first and get nothing
            buf = out.new_empty((self.rows - first, out.shape[1], n_out))
            found = (buf, [buf[s - first : e - first].view(-1, n_out) for _, s, e, _ in self.segments])
            self._deltas[key] = found
        return found

    def mask(self, layout: tuple, col_slot: torch.Tensor) -> torch.Tensor:
        """(rows, 1, ΣR) float mask: 1 where a factor column belongs to the row's adapter."""
        m = self._masks.get(layout)
        if m is None:
            m = (col_slot.unsqueeze(0) == self.key.unsqueeze(1)).to(ADAPTER_DTYPE).unsqueeze(1)
            self._masks[layout] = m
        return m


class RoutedLoraLinear(nn.Module):
    """A base Linear/Conv1D plus N LoRA/DoRA adapters, one chosen per row by ``route.index`` (see module doc).

    Buffers: ``a_<i>`` (in, r_i) and ``b_<i>`` (r_i, out, scaling folded in) are adapter i's factors, transposed
    for ``x @ a @ b``; ``gain_<i>`` (out,) its DoRA gain. Adapters that do not target this layer have none. For
    the dense path the same factors are also concatenated: ``a_cat`` (in, ΣR), ``b_cat`` (ΣR, out),
    ``col_slot`` (ΣR,) the slot of each column, ``gains`` (N + 1, out) (ones where no DoRA).

    Three exact ways to compute a mixed batch, chosen per call by size:

    * dense (few tokens, e.g. decode steps): ``((x @ a_cat) * mask) @ b_cat`` where the mask keeps only each
      row's own adapter's columns: three ops whatever the number of adapters;
    * grouped (many tokens): per adapter present, ``x[rows] @ a_i @ b_i`` on its block of rows: no wasted flops;
    * in place (long rows, no DoRA in the layer): per run of consecutive rows of one adapter, ``addmm_`` into
      the output's view of those rows: no copies of the input or of the deltas.
    """

    #: use the dense path while tokens · ΣR · (in + out) stays below this: there its wasted multiply-adds cost
    #: less than the grouped path's per-adapter op overhead (measured with bench/mixed_batch.py on CPU)
    dense_budget = 20_000_000
    #: from this many tokens per row on (prefill), rows are updated where they lie (two ops per run of
    #: consecutive rows of one adapter) instead of being gathered by adapter and scattered back: the copies
    #: of the input and of each delta cost more than the extra ops there (bench/mixed_batch.py)
    in_place_tokens = 16

    def __init__(
        self,
        base_layer: nn.Module,
        route: Any,
        plan: RoutePlan,
        factors: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
        n: int,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.route = route  # a plain object with .index: LongTensor (rows,) of slots, read at forward time
        self.plan = plan  # shared by all routed layers of the model
        self.slots = sorted(factors)
        self._keys = {slot: (f"a_{slot}", f"b_{slot}", f"gain_{slot}") for slot in self.slots}
        for slot, (a_t, b_t, gain) in factors.items():
            self.register_buffer(f"a_{slot}", a_t, persistent=False)
            self.register_buffer(f"b_{slot}", b_t, persistent=False)
            self.register_buffer(f"gain_{slot}", gain, persistent=False)
        self.layout = tuple((slot, factors[slot][0].shape[1]) for slot in self.slots)
        self.register_buffer("a_cat", torch.cat([factors[s][0] for s in self.slots], dim=1), persistent=False)
        self.register_buffer("b_cat", torch.cat([factors[s][1] for s in self.slots], dim=0), persistent=False)
        self.register_buffer(
            "col_slot",
            torch.tensor([s for s, r in self.layout for _ in range(r)], dtype=torch.long, device=self.a_cat.device),
            persistent=False,
        )
        gains = None
        if any(g is not None for _, _, g in factors.values()):
            gains = torch.ones(n + 1, self.b_cat.shape[1], dtype=ADAPTER_DTYPE, device=self.a_cat.device)
            for slot, (_, _, g) in factors.items():
                if g is not None:
                    gains[slot] = g
        self.register_buffer("gains", gains, persistent=False)
        fin, fout = self.a_cat.shape[0], self.b_cat.shape[1]
        self._dense_cost = self.a_cat.shape[1] * (fin + fout)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        return "routed lora: " + ", ".join(f"slot {s} r={r}" for s, r in self.layout)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)  # (rows, ..., out)
        idx = getattr(self.route, "index", None)
        if idx is None:
            raise InvalidInput("routed adapters need each row's adapter: pass adapter_names=[...] or use route()")
        rows = x.shape[0]
        if idx.shape[0] != rows:
            raise InvalidInput(f"{idx.shape[0]} adapter name(s) given for a batch of {rows} rows")
        plan = self.plan.update(idx) if idx is not self.plan.key else self.plan
        dtype = result.dtype
        xs = x.reshape(rows, -1, x.shape[-1])  # (rows, tokens, in)
        out = result.reshape(rows, -1, result.shape[-1])  # (rows, tokens, out)
        if out.dtype != ADAPTER_DTYPE or torch.is_grad_enabled():
            out = out.to(ADAPTER_DTYPE, copy=True)  # else: add into the fresh base output in place
        if xs.shape[0] * xs.shape[1] * self._dense_cost <= self.dense_budget:
            self._dense(xs.to(ADAPTER_DTYPE), out, plan)
        else:
            self._grouped(x, xs, out, plan)
        return out.view(result.shape).to(dtype)

    def _dense(self, xs: torch.Tensor, out: torch.Tensor, plan: RoutePlan) -> None:
        rows, tokens, _ = xs.shape
        h = (xs.reshape(rows * tokens, -1) @ self.a_cat).view(rows, tokens, -1)  # (rows, tokens, ΣR)
        h = h * plan.mask(self.layout, self.col_slot)  # only each row's own adapter's columns
        if self.gains is None:
            out.view(rows * tokens, -1).addmm_(h.view(rows * tokens, -1), self.b_cat)
            return
        delta = (h.view(rows * tokens, -1) @ self.b_cat).view(rows, tokens, -1)
        g = self.gains.index_select(0, plan.key).unsqueeze(1)  # (rows, 1, out)
        bias = self.base_layer.bias
        base = out - bias if bias is not None else out
        out += (g - 1) * base + g * delta

    def _in_place(self, xs: torch.Tensor, out: torch.Tensor, plan: RoutePlan) -> None:
        """Each run of consecutive rows of one adapter: ``out[run] += (x[run] @ a) @ b`` on views, no copies."""
        n_in, n_out = xs.shape[-1], out.shape[-1]
        buffers = self._buffers
        for slot, runs in plan.runs.items():
            k = self._keys.get(slot)
            if k is None:
                continue  # this adapter does not target this layer
            a_t, b_t = buffers[k[0]], buffers[k[1]]
            for r0, r1 in runs:
                seg = xs[r0:r1].reshape(-1, n_in)
                if seg.dtype != ADAPTER_DTYPE:
                    seg = seg.to(ADAPTER_DTYPE)
                out[r0:r1].view(-1, n_out).addmm_(seg @ a_t, b_t)

    def _grouped(self, x: torch.Tensor, xs: torch.Tensor, out: torch.Tensor, plan: RoutePlan) -> None:
        if self.gains is None and xs.shape[1] >= self.in_place_tokens and out.is_contiguous():
            return self._in_place(xs, out, plan)
        tokens = xs.shape[1]
        segs = plan.segment_inputs(x, xs)  # each adapter's rows, grouped by adapter: (n · tokens, in)
        bias = self.base_layer.bias
        buffers, keys = self._buffers, self._keys
        if self.gains is None and not plan.sorted and plan.segments:  # the deltas into one buffer, one scatter
            deltas, parts = plan.delta_parts(out)
            for (slot, _, _, _), seg, part in zip(plan.segments, segs, parts):
                k = keys.get(slot)
                if k is None:  # this adapter does not target this layer
                    part.zero_()
                    continue
                torch.mm(torch.mm(seg, buffers[k[0]]), buffers[k[1]], out=part)
            out.index_add_(0, plan.perm[plan.segments[0][1] :], deltas)
            return
        for (slot, start, end, rows_idx), seg in zip(plan.segments, segs):
            k = keys.get(slot)
            if k is None:
                continue  # this adapter does not target this layer
            a_t, b_t, gain = buffers[k[0]], buffers[k[1]], buffers[k[2]]
            delta = torch.mm(torch.mm(seg, a_t), b_t).view(end - start, tokens, -1)  # (n, tokens, out)
            if gain is not None:  # DoRA: (g - 1) · (base result - bias) + g · delta
                base = out[start:end] if plan.sorted else out.index_select(0, rows_idx)
                if bias is not None:
                    base = base - bias
                delta = (gain - 1) * base + gain * delta
            if plan.sorted:
                out[start:end] += delta
            else:
                out.index_add_(0, rows_idx, delta)


@torch.no_grad()
def _routed_factors(base: nn.Module, path: str, members: list[tuple[int, LoraConfig, dict]]):
    """``{slot: (A^T (in, r), s·B^T (r, out), DoRA gain (out,) or None)}`` for the adapters targeting ``path``."""
    (fin, _), ffo = in_out_features(base), is_conv1d(base)
    device = base.weight.device
    out = {}
    for i, cfg, t in members:
        a = t[f"{PREFIX}{path}.lora_A.weight"].to(device=device, dtype=ADAPTER_DTYPE)  # (r, in)
        b = t[f"{PREFIX}{path}.lora_B.weight"].to(device=device, dtype=ADAPTER_DTYPE)  # (out, r)
        scaling = cfg.scaling_for(path)
        gain = None
        if cfg.use_dora:  # as LoraLinear._dora_delta computes it in eval mode
            eye = torch.eye(fin, device=device, dtype=ADAPTER_DTYPE)
            lora_weight = (eye @ a.T @ b.T).T  # B(A(eye)).T: (out, in)
            norm = weight_norm(base.weight.to(ADAPTER_DTYPE), lora_weight, scaling, ffo)
            gain = t[f"{PREFIX}{path}.lora_magnitude_vector"].to(device=device, dtype=ADAPTER_DTYPE) / norm
        out[i + 1] = (a.T.contiguous(), (b.T * scaling).contiguous(), gain)
    return out


def attach_routed(
    model: nn.Module, adapters: list[tuple[LoraConfig, dict[str, torch.Tensor]]], route: Any
) -> list[LoraConfig]:
    """Attach adapters for per-row routing: at forward time ``route.index`` (LongTensor (rows,)) gives each row's
    slot, 0 for none and ``i + 1`` for ``adapters[i]``. Returns the effective configs."""
    _check_free(model)
    resolved = _resolve_all(model, [c for c, _ in adapters], "routing")
    paths = _ordered_paths(model, resolved)
    for i, ((eff, targets), (_, tensors)) in enumerate(zip(resolved, adapters)):
        expected = {}
        for path in targets:
            (fin, fout), r = in_out_features(model.get_submodule(path)), eff.rank_for(path)
            expected[f"{PREFIX}{path}.lora_A.weight"] = (r, fin)
            expected[f"{PREFIX}{path}.lora_B.weight"] = (fout, r)
            if eff.use_dora:
                expected[f"{PREFIX}{path}.lora_magnitude_vector"] = (fout,)
        check_fit(f"adapter {i + 1}: lora", expected, tensors)
    plan = RoutePlan()
    layers = {}
    for path in paths:
        members = [(i, eff, adapters[i][1]) for i, (eff, targets) in enumerate(resolved) if path in targets]
        base = model.get_submodule(path)
        layers[path] = RoutedLoraLinear(base, route, plan, _routed_factors(base, path, members), len(adapters))
    flags = _freeze(model)
    for path, layer in layers.items():
        tuners.set_submodule(model, path, layer)
    model.__dict__[_MULTI_ATTR] = Multi("routed", [e for e, _ in resolved], paths, flags)
    return [e for e, _ in resolved]
