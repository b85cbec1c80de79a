"""Several adapters on one model: stacks, per-row routing (multi-tenant serving), and compositions.

    from adapterhub import compose
    stack = compose.attach_stack(model, [a, b])          # a, b: checkpoint.LoadedAdapter; all active
    stack.detach()

    router = compose.attach_routed(model, {"support": a, "sales": b})
    out = model(**batch, adapter_names=["support", "__base__", "sales"])   # one adapter per row
    with router.route(["sales", "sales", "support"]):                      # or as a context (generate)
        out = model(**batch)
    router.detach()

    compose.compose(reg, ["acme/a:1", "acme/b:2"], "acme/stack")   # a version of kind "composition"
    adapters = compose.load_stack(reg, "acme/stack")               # its members, in order

Generic over methods through optional method capabilities (looked up by name, never by method):

* one adapter of a method: ``attach`` + ``load_state_dict`` (every method has these);
* several adapters of a method in one stack: ``attach_stack(model, [(config, tensors), ...])``;
* routing: ``attach_routed(model, [(config, tensors), ...], route)``, where ``route.index`` is a LongTensor
  with one slot per row (0: none of this method's adapters, ``i + 1``: the i-th), set before each call;
* ``detach_multi(model)`` undoes either.

Adapters of different methods are attached one method after the other, in the order each method first
appears in the stack; methods sharing a ``multi_family`` (lora and dora) are attached together. A method
without the capability a stack or routing needs gives a clear error naming it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from ..errors import AdapterhubError, InvalidInput
from ..registry.entities import Edge, VersionInfo

BASE = "__base__"  # the adapter name of rows that get no adapter


def _groups(adapters: Sequence[Any]) -> list[tuple[Any, list[int]]]:
    """``(method, indices)`` per method family, in order of first appearance."""
    out: dict[str, tuple[Any, list[int]]] = {}
    for i, a in enumerate(adapters):
        out.setdefault(a.method.family, (a.method, []))[1].append(i)
    return list(out.values())


def _check_bases(adapters: Sequence[Any], what: str) -> None:
    for a in adapters:
        if not all(hasattr(a, k) for k in ("method", "config", "tensors", "manifest")):
            raise InvalidInput(
                f"cannot {what} a {type(a).__name__}: expected LoadedAdapter objects "
                "(adapterhub.files.checkpoint.load_adapter_dir, or compose.load_stack for a composition)"
            )
    fps = {((a.manifest or {}).get("base") or {}).get("fingerprint") for a in adapters} - {None}
    if len(fps) > 1:
        raise InvalidInput(f"cannot {what} adapters trained on different base models: {', '.join(sorted(fps))}")


@dataclass
class Stack:
    """Adapters attached together by :func:`attach_stack`; :meth:`detach` restores the base model."""

    model: Any
    undo: list[Callable[[], None]] = field(default_factory=list)
    configs: list[Any] = field(default_factory=list)  # effective configs, in stack order

    def detach(self) -> None:
        while self.undo:
            self.undo.pop()()


def attach_stack(model: Any, adapters: Sequence[Any]) -> Stack:
    """Attach every adapter in ``adapters`` (``LoadedAdapter``) to ``model`` at once, all active: LoRA deltas
    add (a DoRA branch rescales the output so far, as PEFT does with several active adapters); other methods
    apply in order where their plugin supports it."""
    if isinstance(adapters, dict):
        raise InvalidInput(
            "attach_stack takes a list of LoadedAdapters in stack order, not a dict "
            "(attach_routed takes {name: LoadedAdapter})"
        )
    if not adapters:
        raise InvalidInput("a stack needs at least one adapter")
    _check_bases(adapters, "stack")
    stack = Stack(model)
    configs: dict[int, Any] = {}
    try:
        for method, idx in _groups(adapters):
            items = [(adapters[i].config, adapters[i].tensors) for i in idx]
            if len(idx) == 1:
                eff = method.attach(model, items[0][0])
                stack.undo.append(lambda m=method: m.detach(model))
                method.load_state_dict(model, items[0][1])
                effs = [eff]
            elif "stack" in method.capabilities():
                effs = method.attach_stack(model, items)
                stack.undo.append(lambda m=method: m.detach_multi(model))
            else:
                raise AdapterhubError(
                    f"method '{method.name}' cannot stack several adapters "
                    f"({len(idx)} in this stack); stack at most one adapter of it"
                )
            configs.update(zip(idx, effs or [None] * len(idx)))
    except BaseException:
        stack.detach()
        raise
    stack.configs = [configs.get(i) for i in range(len(adapters))]
    return stack


class _Route:
    """What a method's routed layers read at forward time: ``index`` (LongTensor (rows,)) or ``None``."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index = None


class Router:
    """Adapters attached by :func:`attach_routed`; each call of the model says which adapter each row uses."""

    def __init__(self, model: Any, names: list[str]):
        self.model = model
        self.names = list(names)
        self._slot: dict[str, tuple[int, int]] = {}  # name -> (group, slot)
        self._routes: list[_Route] = []
        self._undo: list[Callable[[], None]] = []
        self._cache: dict[tuple[str, ...], list[Any]] = {}
        self.detached = False

    def _indices(self, names: Sequence[str]) -> list[Any]:
        import torch

        if self.detached:
            raise InvalidInput("this router is detached: the model runs without its adapters; attach_routed again")
        key = tuple(names)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        unknown = sorted({n for n in key if n != BASE and n not in self._slot})
        if unknown:
            raise InvalidInput(
                f"unknown adapter name(s) {', '.join(map(repr, unknown))}; routed: "
                f"{', '.join(self.names)} (or {BASE!r} for none)"
            )
        device = next(iter(self.model.parameters())).device
        out = []
        for g in range(len(self._routes)):
            slots = [self._slot[n][1] if n != BASE and self._slot[n][0] == g else 0 for n in key]
            out.append(torch.tensor(slots, dtype=torch.long, device=device))
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = out
        return out

    @contextlib.contextmanager
    def route(self, names: Sequence[str]):
        """Within this context, row ``i`` of every model call uses adapter ``names[i]`` (``"__base__"``: none)."""
        if isinstance(names, str):
            raise InvalidInput("route() takes one adapter name per row (a list), not a single string")
        indices = self._indices(names)
        old = [r.index for r in self._routes]
        for r, idx in zip(self._routes, indices):
            r.index = idx
        try:
            yield self
        finally:
            for r, idx in zip(self._routes, old):
                r.index = idx

    def detach(self) -> None:
        """Remove the routed adapters and the ``adapter_names`` keyword; the model is the base model again
        (``route()`` then refuses: a model that silently ran without its adapters would serve wrong answers)."""
        while self._undo:
            self._undo.pop()()
        self.detached = True


def attach_routed(model: Any, adapters: dict[str, Any]) -> Router:
    """Attach named adapters (``{"name": LoadedAdapter}``) for per-row routing in one batch.

    Afterwards ``model(..., adapter_names=[...])`` (or ``with router.route([...])``) runs each row with only
    its adapter (``"__base__"``: none); the outputs equal running each row alone with its adapter attached.
    """
    if not isinstance(adapters, dict):
        raise InvalidInput(f"attach_routed takes {{name: LoadedAdapter}}, not a {type(adapters).__name__}")
    if not adapters:
        raise InvalidInput("routing needs at least one adapter")
    names = list(adapters)
    for n in names:
        if not isinstance(n, str) or not n or n == BASE:
            shown = repr(n) if isinstance(n, str) else f"of type {type(n).__name__}"
            raise InvalidInput(
                f"invalid routed adapter name {shown} (names are non-empty strings; {BASE!r} is "
                "reserved for rows without one)"
            )
    loaded = [adapters[n] for n in names]
    _check_bases(loaded, "route")
    router = Router(model, names)
    try:
        for g, (method, idx) in enumerate(_groups(loaded)):
            if "route" not in method.capabilities():
                raise AdapterhubError(
                    f"method '{method.name}' does not support per-row routing "
                    f"(adapter {names[idx[0]]!r}); serve it on its own model"
                )
            route = _Route()
            method.attach_routed(model, [(loaded[i].config, loaded[i].tensors) for i in idx], route)
            router._undo.append(lambda m=method: m.detach_multi(model))
            router._routes.append(route)
            for slot, i in enumerate(idx, start=1):
                router._slot[names[i]] = (g, slot)
        _patch_forward(model, router)
    except BaseException:
        router.detach()
        raise
    return router


def _patch_forward(model: Any, router: Router) -> None:
    """Let ``model(..., adapter_names=[...])`` route one call (PEFT's keyword)."""
    if "forward" in model.__dict__:
        raise InvalidInput("the model's forward is already patched (routed adapters attached?); detach first")
    original = model.forward

    def forward(*args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any):
        if adapter_names is None:
            return original(*args, **kwargs)
        with router.route(adapter_names):
            return original(*args, **kwargs)

    model.__dict__["forward"] = forward
    router._undo.append(lambda: model.__dict__.pop("forward", None))


# -- compositions in the registry ---------------------------------------------------------------------------
def compose(reg: Any, refs: Sequence[str], name: str, *, aliases: Iterable[str] = (), plugins: Any = None):
    """Store the ordered stack ``refs`` as a version of ``name`` of kind ``composition``, with a
    ``composed_of`` edge to each member (edge position and details ``position`` = order). A protected alias
    in ``aliases`` passes the promotion gate first (as with push and combine); a name holding adapter
    versions takes no composition."""
    from ..files.checkpoint import MANIFEST, write_json
    from ..plugins import get_plugins
    from ..registry.blobs import hash_file
    from ..registry.gates import alias_guard
    from ..registry.refs import validate_alias, validate_name
    from ..registry.registry import LocalFile, ParentSpec
    from .stored import check_name_kind, common_base

    validate_name(name)
    aliases = [validate_alias(a) for a in aliases]
    if not refs:
        raise InvalidInput("a composition needs at least one version")
    check_name_kind(reg, name, "composition")
    plugins = plugins or get_plugins()
    infos = [reg.show(ref) for ref in refs]
    base = common_base(infos, "compose")
    methods = [_member_methods(reg, i) for i in infos]
    flat = [m for ms in methods for m in ms]
    families: dict[str, tuple[Any, int]] = {}
    for mname in flat:
        method = plugins.get("methods", mname)
        fam = families.setdefault(method.family, (method, 0))
        families[method.family] = (fam[0], fam[1] + 1)
    for method, count in families.values():
        if count > 1 and "stack" not in method.capabilities():
            raise InvalidInput(f"method '{method.name}' cannot stack several adapters ({count} in this composition)")
    unique = list(dict.fromkeys(flat))
    manifest: dict[str, Any] = {
        "method": unique[0] if len(unique) == 1 else None,
        "stack": [
            {"position": p, "ref": i.ref, "digest": i.digest, "kind": i.kind, "method": i.method}
            for p, i in enumerate(infos)
        ],
    }
    if base:
        manifest["base"] = base
    tmp = tempfile.mkdtemp(prefix="adapterhub-compose-")
    try:
        path = os.path.join(tmp, MANIFEST)
        write_json(path, {**manifest, "kind": "composition"})
        digest, size = hash_file(path)
        parents = [ParentSpec("composed_of", ref=i.ref, details={"position": p}) for p, i in enumerate(infos)]
        # a protected alias (production) goes through the same promotion gate as push and combine
        pub = reg.publish(
            name,
            manifest,
            [LocalFile(MANIFEST, path, digest, size)],
            parents=parents,
            aliases=aliases,
            kind="composition",
            alias_guard=alias_guard() if aliases else None,
        )
        pub.extra["stack"] = manifest["stack"]
        return pub
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _member_methods(reg: Any, info: VersionInfo, depth: int = 0) -> list[str | None]:
    if info.kind != "composition":
        return [info.method]
    if depth > 32:
        raise InvalidInput(f"{info.ref}: compositions nested too deeply")
    return [m for p in _members(info) for m in _member_methods(reg, reg.show(p.ref or p.digest), depth + 1)]


def _members(info: VersionInfo) -> list[Edge]:
    return [p for p in info.parents if p.relation == "composed_of"]  # in position order


def load_stack(reg: Any, ref: str, plugins: Any = None) -> list[Any]:
    """The adapters (``LoadedAdapter``) a ref stands for, in order: a composition's members (nested
    compositions flattened), or the one adapter. Every blob is verified as it is read."""
    from ..plugins import get_plugins
    from .stored import load_version

    plugins = plugins or get_plugins()
    tmp = tempfile.mkdtemp(prefix="adapterhub-stack-")
    try:
        out: list[Any] = []

        def walk(r: str, depth: int) -> None:
            info = reg.show(r)
            if info.kind == "composition":
                if depth > 32:
                    raise InvalidInput(f"{info.ref}: compositions nested too deeply")
                for p in _members(info):
                    if p.external or p.ref is None:
                        raise InvalidInput(f"{info.ref} member {p.digest} is not in this registry")
                    walk(p.ref, depth + 1)
            else:
                out.append(load_version(reg, info.ref, plugins, tmp)[1])

        walk(ref, 0)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
