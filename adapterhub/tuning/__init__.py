"""Building blocks shared by the method plugins (the counterpart of PEFT's ``tuners_utils``); method-agnostic.

* **Config fields and their validation** (in :mod:`.config`, re-exported here): ``target_modules``-style lists,
  ``modules_to_save``, ``task_type``, flags, positive integers, regexes; reading a PEFT ``adapter_config.json``.
* :class:`TunerMethod`: a :class:`~adapterhub.method.Method` whose torch side lives in one module of its
  plugin, imported on first use; it also turns a dict into the method's config.
* **Selecting modules** with PEFT's rules (target names / regex / ``all-linear``, ``modules_to_save`` suffixes,
  PEFT's per-model-type defaults, ``fan_in_fan_out`` for Conv1D) and the "effective config differs" warning;
  PEFT's default-target tables (:mod:`.targets`: ``LORA_TARGETS``, ``VERA_TARGETS``, ``IA3_TARGETS``,
  ``IA3_FEEDFORWARD``).
* **Adapter dtypes**: PEFT's ``autocast_adapter_dtype`` rule (:func:`adapter_dtype`, :func:`upcast_adapter`).
* **Per-module value patterns** (:mod:`.patterns`): PEFT's ``rank_pattern`` / ``alpha_pattern`` key rule, its
  lookup and validation.
* **Attach bookkeeping**: :class:`Attached`, the record of what an attach changed, kept on the model under a
  plugin-chosen attribute; freezing and restoring ``requires_grad``; the trainable ``modules_to_save`` copies;
  wrapping modules; the ``base_model.model.`` key layout; strict state-dict loading; the merge of a saved copy.
* **Combining adapters** (:mod:`.combine`): ``cat`` / ``linear`` / ``svd`` / TIES / DARE on ΔW, as peft's
  ``merge_utils``.
* The streaming merge's :func:`row_blocks`, for a method's own merge to work in the same blocks.
* **Where residual adapters go** (:mod:`.placements`): the attention / feed-forward sites of BERT, Llama and
  GPT-2 layers, and the width a bottleneck adapter's tensors imply.
* **A quantized base** (:mod:`.quantized`): bitsandbytes' layers, for a quantizer and for a method that trains
  on them.

This is the only module of adapterhub a method plugin needs besides :mod:`adapterhub.method` and
:mod:`adapterhub.errors` (:data:`adapterhub.plugins.PUBLIC_MODULES` lists what a plugin may import).

This module does not import torch when imported (plugin ``__init__`` modules import it, and ``adapterhub
--help`` must stay torch-free): the few functions that need torch import it when called.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, cast

from ..errors import InvalidInput
from ..files.peft_keys import PEFT_PREFIX  # noqa: F401  (plugins import it from here)
from ..merge.writer import row_blocks  # noqa: F401  (the streaming merge's row blocks, for a method's own merge)
from ..method import Method

# the rest of the toolkit lives in submodules, by job; plugins import all of it from here
from . import combine  # noqa: F401  (combine maths: ``from adapterhub.tuning import combine``)
from .config import (  # noqa: F401
    ALL_LINEAR,
    FAN_IN_FAN_OUT_HELP,
    MAX_REGEX_LENGTH,
    MAX_REGEX_REPEATS,
    MODULES_TO_SAVE_HELP,
    NEUTRAL_VALUES,
    PEFT_BOOKKEEPING,
    SEQ_CLS_HEADS,
    TARGET_MODULES_HELP,
    TASK_TYPE_HELP,
    TASK_TYPES,
    check_flags,
    check_module_names,
    check_modules_to_save,
    check_positive_int,
    check_regex,
    check_task_type,
    fan_in_fan_out_field,
    modules_to_save_field,
    peft_config,
    peft_values,
    target_modules_field,
    task_type_field,
)
from .patterns import check_pattern, exact_pattern_key, pattern_key, pattern_value  # noqa: F401
from .placements import PLACEMENTS, Placement, Site, adapter_width  # noqa: F401
from .quantized import (  # noqa: F401
    bitsandbytes,
    from_conv1d,
    has_quantized_layers,
    no_cpu_packing,
    quantized_layer_types,
)
from .targets import IA3_FEEDFORWARD, IA3_TARGETS, LORA_TARGETS, VERA_TARGETS  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


# -- the Method glue ---------------------------------------------------------------------------------------
class TunerMethod(Method):
    """A :class:`~adapterhub.method.Method` whose torch side is the plugin module named by ``model_module``,
    imported on first use (so importing the plugin does not import torch). That module provides
    ``attach(model, config, method)``, ``attached(model, method)`` (an :class:`Attached`),
    ``state_dict(model, method)``, ``load_state_dict(model, tensors, method)`` and ``detach(model, method)``;
    ``method`` is the calling method's name, so one module may serve several methods."""

    #: dotted name of the module holding the torch side, e.g. ``"adapterhub_lora.model"``
    model_module: ClassVar[str] = ""

    def _model(self) -> Any:
        return importlib.import_module(self.model_module)

    def _config(self, config: Any) -> Any:
        """``config`` as this method's config class (a dict goes through :meth:`make_config`)."""
        cls = self.config_class
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return self.make_config(config)
        article = "an" if cls.__name__[:1].upper() in "AEIOU" else "a"
        raise InvalidInput(f"{self.name} expects {article} {cls.__name__} or a dict, got {type(config).__name__}")

    def attach(self, model: Any, config: Any) -> Any:
        """Attach in place, freeze every other parameter (``modules_to_save`` become trainable copies) and
        return the effective config, also available later from :meth:`effective_config`."""
        return self._model().attach(model, self._config(config), self.name)

    def effective_config(self, model: Any) -> Any:
        """The config actually applied by :meth:`attach` (save this one in the manifest)."""
        return self._model().attached(model, self.name).config

    def state_dict(self, model: Any) -> dict[str, Any]:
        return self._model().state_dict(model, self.name)

    def load_state_dict(self, model: Any, tensors: dict[str, Any]) -> None:
        self._model().load_state_dict(model, tensors, self.name)

    def detach(self, model: Any) -> None:
        """Undo :meth:`attach`: the model is the base model again (modules, values, ``requires_grad`` flags)."""
        self._model().detach(model, self.name)


# -- module types (torch imported on call) -----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def linear_types() -> tuple[type, ...]:
    """``nn.Linear`` and, when transformers is installed, its GPT-2 style ``Conv1D`` (weight ``(in, out)``)."""
    from torch import nn

    conv1d = _conv1d()
    return (nn.Linear,) + ((conv1d,) if conv1d is not None else ())


def is_conv1d(module: Any) -> bool:
    conv1d = _conv1d()
    return conv1d is not None and isinstance(module, conv1d)


def in_out_features(module: Any) -> tuple[int, int]:
    """``(in, out)`` of a Linear (its ``in_features``/``out_features``: right also for quantized subclasses
    whose ``weight`` is packed, e.g. bitsandbytes' 4-bit layers) or a Conv1D (weight (in, out))."""
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int):
        return module.in_features, module.out_features
    return module.weight.shape[1], module.weight.shape[0]


@functools.lru_cache(maxsize=None)
def _conv1d() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers is part of the torch extra
        return None
    return Conv1D


# -- adapter dtypes (PEFT's ``autocast_adapter_dtype=True``, its default; torch imported on call) -------------
def adapter_dtype(base_dtype: "torch.dtype | None" = None) -> "torch.dtype":
    """The dtype of an adapter's parameters: PEFT creates them in the base layer's dtype, then upcasts
    float16/bfloat16 to float32 (half-precision adapters train badly). ``None`` (a method that keeps its
    adapters in float32 whatever the base, as LoRA's module does here) and a non-float base give float32."""
    import torch

    if base_dtype is None or base_dtype in (torch.float16, torch.bfloat16) or not base_dtype.is_floating_point:
        return torch.float32
    return base_dtype


def upcast_adapter(tensor: "torch.Tensor") -> "torch.Tensor":
    """A stored adapter tensor as PEFT holds it after loading: float16/bfloat16 become float32, the rest stay."""
    import torch

    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


# -- selecting modules (PEFT's rules) ----------------------------------------------------------------------
def model_type(model: Any) -> str | None:
    """The transformers ``config.model_type`` of ``model`` (``None`` without one)."""
    return getattr(getattr(model, "config", None), "model_type", None)


def matches_target(target: Any, path: str) -> bool:
    """PEFT's ``target_modules`` rule: a regex string must fullmatch the path; a name list matches the exact
    path or a ``.name`` suffix."""
    if isinstance(target, str):
        return re.fullmatch(target, path) is not None
    return path in target or any(path.endswith(f".{t}") for t in target)


def excluded_by_modules_to_save(modules_to_save: list[str], path: str, literal: bool = False) -> bool:
    """Whether ``path`` is (inside) a ``modules_to_save`` module, so not a target. PEFT reads the names as
    regexes; ``literal=True`` escapes them."""
    names = [re.escape(m) for m in modules_to_save] if literal else modules_to_save
    return any(re.match(rf"(^|.*\.){m}($|\..*)", path) for m in names)


def candidate_names(model: "nn.Module", types: tuple[type, ...]) -> list[str]:
    """The distinct last names of the modules of ``types`` (what ``target_modules`` usually lists)."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, types)})


def all_linear(model: "nn.Module", types: tuple[type, ...], task_type: str | None) -> list[str]:
    """PEFT's ``all-linear``: every module of ``types`` except the output embedding (and, for SEQ_CLS
    without one, the head)."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, types)]
    exclude: set[int] = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    if out_emb is not None:
        exclude.add(id(out_emb))
    elif task_type == "SEQ_CLS":
        for head in ("score", "classifier"):  # PEFT's SEQ_CLS_HEAD_NAMES order
            if getattr(model, head, None) is not None:
                exclude.add(id(getattr(model, head)))
                break
    return [n for n in names if id(model.get_submodule(n)) not in exclude]


def peft_default(
    model: Any, table: Mapping[str, list[str]], *, field: str, method: str, changes: list[str], hint: Any
) -> list[str]:
    """PEFT's default ``field`` for the model's type from ``table``, recorded in ``changes``; refused (with
    ``hint``, a string or a callable giving one) for a model type the table does not know."""
    kind = model_type(model)
    if kind is None or kind not in table:
        raise InvalidInput(
            f"no default {method} {field} for model type {kind!r}; set {field} ({hint() if callable(hint) else hint})"
        )
    value = list(table[kind])
    changes.append(f"{field} = {value} (PEFT's default for {kind})")
    return value


def match_modules(
    model: "nn.Module",
    pattern: Any,
    *,
    types: tuple[type, ...],
    field: str,
    wraps: str,
    candidates: Callable[[], list[str]],
    exclude: list[str] = (),  # type: ignore[assignment]
    literal: bool = False,
) -> list[str]:
    """The paths ``pattern`` selects (:func:`matches_target`), those under ``exclude`` (``modules_to_save``)
    left out; refuses a selected module not of ``types`` (``wraps`` says what the method adapts) and a
    ``pattern`` that selects nothing (both errors list ``candidates()``)."""
    matched = []
    for path, module in model.named_modules():
        if not path or excluded_by_modules_to_save(exclude, path, literal) or not matches_target(pattern, path):
            continue
        if not isinstance(module, types):
            raise InvalidInput(
                f"{field} matched '{path}', a {type(module).__name__}; {wraps} (candidates: {', '.join(candidates())})"
            )
        matched.append(path)
    if not matched:
        raise _nothing_matched(field, pattern, candidates)
    return matched


def select_targets(
    model: "nn.Module",
    target_modules: Any,
    *,
    types: tuple[type, ...],
    method: str,
    exclude: list[str],
    task_type: str | None,
    wraps: str | None = None,
) -> list[str]:
    """PEFT's ``target_modules`` selection for a method that wraps layers of ``types``: ``all-linear`` or
    :func:`match_modules`, minus the ``modules_to_save`` in ``exclude``. ``wraps`` says what the method adapts
    when a target is of another type (default: "<method> wraps only <types' names> layers")."""

    def candidates() -> list[str]:
        return candidate_names(model, types)

    if isinstance(target_modules, str) and target_modules.lower() == ALL_LINEAR:
        matched = [p for p in all_linear(model, types, task_type) if not excluded_by_modules_to_save(exclude, p)]
        if not matched:
            raise _nothing_matched("target_modules", target_modules, candidates)
        return matched
    return match_modules(
        model,
        target_modules,
        types=types,
        field="target_modules",
        exclude=exclude,
        candidates=candidates,
        wraps=wraps if wraps is not None else f"{method} wraps only {layer_kinds(types)}",
    )


def layer_kinds(types: tuple[type, ...]) -> str:
    """``types`` in words, for messages: ``"Linear layers"``, ``"Linear and Conv1D layers"``."""
    names = [t.__name__ for t in types]
    return (f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]) + " layers"


def resolve_targets(
    model: "nn.Module",
    config: Any,
    method: str,
    *,
    types: tuple[type, ...] | None = None,
    required: bool = False,
    defaults: Mapping[str, list[str]] | None = None,
    changes: list[str] | None = None,
) -> tuple[Any, list[str], list[str]]:
    """The usual ``resolve`` of a method that wraps layers (for :func:`attach_wrappers`): ``(effective config,
    the paths ``config.target_modules`` selects among ``types`` (default: ``nn.Linear``), the
    ``modules_to_save`` paths)``, with PEFT's SEQ_CLS heads added to ``modules_to_save``. An unset
    ``target_modules`` takes PEFT's default for the model type from ``defaults`` (a table of :mod:`.targets`;
    recorded in ``changes``, for :func:`warn_changes`) or, with ``required``, is refused (a method PEFT gives no
    default targets)."""
    if types is None:
        from torch import nn

        types = (nn.Linear,)
    target_modules = config.target_modules
    if target_modules is None and defaults is not None:
        target_modules = peft_default(
            model,
            defaults,
            field="target_modules",
            method=method,
            changes=[] if changes is None else changes,
            hint=lambda: f"candidates: {', '.join(candidate_names(model, types))}",
        )
    elif target_modules is None and required:
        raise InvalidInput(
            f"{method} needs target_modules (peft has no default for it), e.g. "
            "target_modules=q_proj,v_proj or all-linear"
        )
    mts = with_seq_cls_heads(config.modules_to_save, config.task_type)
    targets = select_targets(model, target_modules, types=types, method=method, exclude=mts, task_type=config.task_type)
    return (
        dataclasses.replace(config, target_modules=target_modules, modules_to_save=mts),
        targets,
        modules_to_save_paths(model, mts),
    )


def _nothing_matched(field: str, pattern: Any, candidates: Callable[[], list[str]]) -> InvalidInput:
    # as in peft, one string is a regex over the whole module path; a list matches name suffixes
    hint = (
        f" (one string is a regular expression over the full module path, as in peft: for names use a list, "
        f"e.g. {pattern},{pattern} on the command line, or '.*{pattern}')"
        if isinstance(pattern, str) and pattern.lower() != ALL_LINEAR
        else ""
    )
    return InvalidInput(
        f"{field} {pattern!r} matched no module of the model{hint}; candidates: {', '.join(candidates())}"
    )


def with_seq_cls_heads(
    modules_to_save: list[str], task_type: str | None, changes: list[str] | None = None
) -> list[str]:
    """``modules_to_save`` without repeats, plus PEFT's SEQ_CLS heads for ``task_type="SEQ_CLS"`` (the
    addition recorded in ``changes`` when given)."""
    mts = list(dict.fromkeys(modules_to_save))
    if task_type == "SEQ_CLS":
        added = [h for h in SEQ_CLS_HEADS if h not in mts]
        if added:
            mts += added
            if changes is not None:
                changes.append(f"modules_to_save += {added} (task_type SEQ_CLS trains the head, as PEFT does)")
    return mts


def modules_to_save_paths(model: "nn.Module", modules_to_save: list[str]) -> list[str]:
    """The outermost module paths that end with a ``modules_to_save`` name (PEFT: a plain suffix, no dot
    required); refuses a name that matches nothing (the SEQ_CLS heads may be absent)."""
    saved: list[str] = []
    for path, _ in model.named_modules(remove_duplicate=False):
        if path and any(path.endswith(m) for m in modules_to_save) and not any(path.startswith(s + ".") for s in saved):
            saved.append(path)
    missing = [m for m in modules_to_save if m not in SEQ_CLS_HEADS and not any(p.endswith(m) for p in saved)]
    if missing:
        raise InvalidInput(f"modules_to_save {missing} matched no module of the model")
    return saved


def fan_in_fan_out(model: "nn.Module", paths: list[str], given: bool, *, method: str, changes: list[str]) -> bool:
    """PEFT's ``fan_in_fan_out``: true when the targeted layers are Conv1D (weight ``(in, out)``); a change
    from ``given`` is recorded in ``changes``; a mix of Linear and Conv1D targets is refused."""
    conv = [p for p in paths if is_conv1d(model.get_submodule(p))]
    value = bool(conv)
    if conv and len(conv) != len(paths):
        raise InvalidInput(
            f"{method} cannot target Linear and Conv1D layers in the same adapter (fan_in_fan_out differs)"
        )
    if value != given:
        changes.append(
            f"fan_in_fan_out = {value} (the targeted layers are {'Conv1D' if conv else 'Linear'}, as PEFT sets it)"
        )
    return value


def warn_changes(method: str, changes: list[str]) -> None:
    """The warning for an effective config that differs from the given one (a no-op without ``changes``),
    attributed to the first caller outside this module and the calling plugin's package (normally the code
    that called ``Method.attach``)."""
    if not changes:
        return
    frame, level = sys._getframe(1), 2
    plugin = frame.f_globals.get("__name__", "").partition(".")[0]
    while frame.f_back is not None:
        name = frame.f_globals.get("__name__", "")
        if name != __name__ and name.partition(".")[0] != plugin:
            break
        frame, level = frame.f_back, level + 1
    message = f"{method} effective config differs from the one given: " + "; ".join(changes)
    warnings.warn(message, stacklevel=level)


# -- what an attach changed --------------------------------------------------------------------------------
@dataclass
class Attached:
    """What an attach changed, kept on the model (a plain attribute, not a submodule) for detach. Methods
    that change more subclass it."""

    method: str  # the method that attached (one model module may serve several methods)
    config: Any  # the effective config (what was actually applied)
    saved: dict[str, Any]  # modules_to_save path -> the original (frozen) module
    requires_grad: dict[str, bool]  # parameter name -> flag before attach
    targets: list[str] = field(default_factory=list)  # module paths the method wrapped or hooked


def check_free(model: Any, slot: str) -> None:
    """Refuses a second attach while the state attribute ``slot`` holds one."""
    state = model.__dict__.get(slot)
    if state is not None:
        article = "an" if state.method[:1] in "aeiou" else "a"
        raise InvalidInput(f"{article} {state.method} adapter is already attached to this model; detach it first")


def attached(model: Any, slot: str, method: str | None = None, *, family: str) -> Attached:
    """The :class:`Attached` under ``slot``, attached by ``method`` when given (``family`` names the kind of
    adapter in the message when it is not)."""
    state = model.__dict__.get(slot)
    if state is None or (method is not None and state.method != method):
        extra = f" (a {state.method} adapter is)" if state is not None else ""
        raise InvalidInput(f"no {method or family} adapter is attached to this model{extra}")
    return state


def freeze(model: "nn.Module") -> dict[str, bool]:
    """Turn off ``requires_grad`` everywhere; returns the flags as they were (for :func:`release`)."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def set_submodule(model: "nn.Module", path: str, module: "nn.Module") -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def train_copies(model: "nn.Module", paths: list[str]) -> dict[str, "nn.Module"]:
    """Replace each ``modules_to_save`` module by a full trainable copy (PEFT's ``ModulesToSaveWrapper``);
    returns ``{path: the original (frozen) module}`` for :func:`release`."""
    saved = {}
    for path in paths:
        original = model.get_submodule(path)
        trained = copy.deepcopy(original)
        for p in trained.parameters():
            p.requires_grad_(True)
        set_submodule(model, path, trained)
        saved[path] = original
    return saved


def attach_wrappers(
    model: "nn.Module",
    slot: str,
    method: str,
    resolve: Callable[["nn.Module"], tuple[Any, list[str], list[str]]],
    make: Callable[[Any, str, "nn.Module"], "nn.Module"],
) -> Any:
    """The whole attach of a method that wraps modules (PEFT's ``inject_adapter``): refuse a second attach
    (state attribute ``slot``), ``resolve(model) -> (effective config, target paths, modules_to_save paths)``,
    freeze everything, replace each target by the wrapper ``make(effective, path, module)`` (which keeps the
    module as its ``base_layer``), make the trainable ``modules_to_save`` copies and record an :class:`Attached`. Returns the effective config."""
    check_free(model, slot)
    effective, targets, saved_paths = resolve(model)
    flags = freeze(model)
    for path in targets:
        base = model.get_submodule(path)
        wrapper = make(effective, path, base)  # keeps the module as `base_layer`
        wrapper.train(base.training)  # new modules start in train mode; follow the model's
        set_submodule(model, path, wrapper)
    saved = train_copies(model, saved_paths)
    model.__dict__[slot] = Attached(method, effective, saved, flags, targets)
    return effective


def detach_wrappers(model: "nn.Module", slot: str, method: str | None, *, family: str) -> None:
    """Undo :func:`attach_wrappers`: the original modules, ``modules_to_save`` and ``requires_grad`` flags."""
    state = attached(model, slot, method, family=family)
    for path in state.targets:
        set_submodule(model, path, cast("nn.Module", model.get_submodule(path).base_layer))
    release(model, slot, state)


def release(model: "nn.Module", slot: str, state: Attached) -> None:
    """The common end of a detach: put back the ``modules_to_save`` originals and the ``requires_grad``
    flags, and drop the state attribute ``slot``."""
    for path, original in reversed(list(state.saved.items())):
        set_submodule(model, path, original)
    for name, p in model.named_parameters():
        if name in state.requires_grad:
            p.requires_grad_(state.requires_grad[name])
    del model.__dict__[slot]


# -- state dicts -------------------------------------------------------------------------------------------
def saved_tensors(model: "nn.Module", paths: Iterable[str], prefix: str = PEFT_PREFIX) -> dict[str, "torch.Tensor"]:
    """The ``modules_to_save`` copies' full state dicts under ``<prefix><path>.<name>`` (detached, not copied:
    they share storage with the parameters and buffers)."""
    return {
        f"{prefix}{path}.{key}": value.detach()
        for path in paths
        for key, value in model.get_submodule(path).state_dict().items()
    }


def check_fit(
    method: str,
    shapes: Mapping[str, tuple[int, ...]],
    tensors: Mapping[str, Any],
    hint: Callable[[str, tuple, tuple], str] | None = None,
) -> None:
    """Strict state-dict check: every key of ``shapes`` present, no other key, every value a tensor of that
    shape (``hint(key, got, expected)`` may add advice to a shape error)."""
    import torch

    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise InvalidInput(f"{method} tensors do not fit the attached adapter: " + "; ".join(parts))
    for key, shape in shapes.items():
        value, shape = tensors[key], tuple(shape)
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        if got != shape:
            extra = hint(key, got, shape) if hint is not None and isinstance(got, tuple) else ""
            raise InvalidInput(
                f"{method} tensor '{key}' has shape {got} but the attached adapter expects {shape}{extra}"
            )


def copy_into(targets: Mapping[str, "torch.Tensor"], tensors: Mapping[str, "torch.Tensor"]) -> None:
    """``targets[k].copy_(tensors[k])`` for every key of ``targets`` (tensors sharing storage with parameters
    and buffers, e.g. from a ``state_dict``), without autograd."""
    import torch

    with torch.no_grad():
        for key, target in targets.items():
            target.copy_(tensors[key])


def load_strict(
    method: str,
    expected: Mapping[str, "torch.Tensor"],
    tensors: Mapping[str, Any],
    hint: Callable[[str, tuple, tuple], str] | None = None,
) -> None:
    """Load ``tensors`` into ``expected`` (the attached adapter's own state dict) after :func:`check_fit`."""
    check_fit(method, {k: tuple(v.shape) for k, v in expected.items()}, tensors, hint)
    copy_into(expected, tensors)


def saved_copy(
    name: str, base: "torch.Tensor", tensors: Mapping[str, "torch.Tensor"], prefix: str = PEFT_PREFIX
) -> "torch.Tensor | None":
    """For the streaming merge: the adapter's full value of base tensor ``name`` (a ``modules_to_save``
    copy's), cast to the base's dtype and device; ``None`` when the adapter holds no such tensor."""
    value = tensors.get(prefix + name)
    if value is None:
        return None
    if tuple(value.shape) != tuple(base.shape):
        raise InvalidInput(f"'{prefix + name}' has shape {tuple(value.shape)}, base '{name}' has {tuple(base.shape)}")
    return value.to(device=base.device, dtype=base.dtype, copy=True)
