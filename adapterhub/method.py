"""The interface every PEFT method implements.

A method is registered by a plugin (``register_methods``). The core (training, merging, composing,
exporting) only ever calls these methods; it never switches on a method's name.
Tensors are ``torch.Tensor``; this module itself does not import torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from .errors import AdapterhubError, InvalidInput, PluginError
from .files.safetensors_header import FLOAT_DTYPES, dtype_name


def check_floating(tensors: Mapping[str, Any], keys: Any = None) -> None:
    """Refuse an adapter tensor (``keys`` of ``tensors``, default all) whose dtype is not floating point.
    ``tensors`` maps names to header entries (:class:`~adapterhub.files.safetensors_header.TensorInfo`: a
    safetensors ``dtype`` string) or to torch tensors."""
    for key in sorted(tensors if keys is None else keys):
        dtype = dtype_name(tensors[key].dtype)
        if dtype not in FLOAT_DTYPES:
            raise InvalidInput(
                f"adapter tensor '{key}' has dtype {dtype}: adapter tensors must be floating point "
                f"({', '.join(FLOAT_DTYPES)})"
            )


class Method:
    """Base class for PEFT methods. Subclasses set ``name`` and ``config_class`` and implement
    ``attach``/``state_dict``/``load_state_dict``/``detach``; the optional capabilities raise a clear
    error by default.

    Conventions the generic code relies on:

    * If the config has a ``task_type`` field, training sets it (``"CAUSAL_LM"`` or ``"SEQ_CLS"``, PEFT's
      names) before ``attach``. With ``SEQ_CLS`` the method trains and saves the classification head
      (``classifier`` / ``score``) as PEFT's ``modules_to_save`` does, so the saved adapter reproduces the
      trained model.
    * ``attach`` returns the *effective* config (defaults resolved, e.g. target modules or the head added
      to ``modules_to_save``); that one is saved. It never mutates the user's config object.
    * ``state_dict`` keys are PEFT's when PEFT implements the method (``base_model.model.<path>...``).
    * The config is a dataclass; ``dataclasses.asdict(config)`` is what ``adapterhub.json`` stores and
      ``make_config`` reads back.
    """

    #: the name users type (``"lora"``); lowercase, unique across plugins
    name: ClassVar[str] = ""
    #: a dataclass: defaults, validation (``__post_init__``) and help text (``metadata["help"]``)
    config_class: ClassVar[type] = object
    #: PEFT's ``peft_type`` for methods PEFT also implements (the directory is then a PEFT adapter)
    peft_type: ClassVar[str | None] = None
    #: the family whose adapters stack or route together in one model (DoRA and QLoRA with LoRA: ``"lora"``);
    #: ``None``: the method's own name
    multi_family: ClassVar[str | None] = None
    #: the learning rate ``train`` uses without ``--lr``
    default_learning_rate: ClassVar[float] = 2e-4
    #: whether ``train --quantize`` may load the base through a quantizer for this method (QLoRA)
    supports_quantized_base: ClassVar[bool] = False
    #: the quantizer ``train`` loads the base through without ``--quantize`` (QLoRA: ``"nf4"``); ``None``: none
    base_quantizer: ClassVar[str | None] = None

    # -- config --------------------------------------------------------------------------------
    def make_config(self, values: dict[str, Any] | None = None) -> Any:
        """Build a config from a dict, refusing unknown keys with the list of valid ones."""
        values = dict(values or {})
        fields = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise InvalidInput(
                f"unknown {self.name} option(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}"
            )
        try:
            return self.config_class(**values)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"invalid {self.name} config: {exc}") from None

    def config_from_manifest(self, values: dict[str, Any] | None) -> Any:
        """The typed config of a stored adapter (``adapterhub.json``'s ``config``). A method whose config gained
        fields whose defaults would change the meaning of older adapters overrides this to read a config written
        before with the values it was trained with; the default is :meth:`make_config`."""
        return self.make_config(values)

    def config_fields(self) -> list[dict[str, Any]]:
        """Each config field with its default and help text (for ``adapterhub methods``)."""
        out = []
        for f in dataclasses.fields(self.config_class):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            out.append({"name": f.name, "default": default, "help": f.metadata.get("help", "")})
        return out

    def capabilities(self) -> list[str]:
        """The optional capabilities this method implements: ``merge``, ``row-merge``, ``combine``, ``stack``,
        ``route`` (each an overridden method below) and ``quantized-base`` (:attr:`supports_quantized_base`)."""
        caps = [cap for cap, attr in _CAPABILITIES if overridden(self, Method, attr)]
        return caps + (["quantized-base"] if self.supports_quantized_base else [])

    @property
    def family(self) -> str:
        """:attr:`multi_family`, else the method's name."""
        return self.multi_family or self.name

    # -- PEFT interoperability (methods PEFT also implements) -----------------------------------
    def matches_peft_config(self, peft_config: dict[str, Any]) -> bool:
        """Whether a PEFT ``adapter_config.json`` describes an adapter of this method."""
        return self.peft_type is not None and peft_config.get("peft_type") == self.peft_type

    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any] | None:
        """The ``adapter_config.json`` that makes a saved directory a PEFT adapter; ``None`` when PEFT
        does not implement this method."""
        return None

    def from_peft_config(self, peft_config: dict[str, Any]) -> Any:
        """Our config from a PEFT ``adapter_config.json`` (import)."""
        raise AdapterhubError(f"method '{self.name}' cannot import PEFT adapters")

    # -- validation ----------------------------------------------------------------------------------
    def check_tensors(self, tensors: Mapping[str, Any], config: Any, base: Mapping[str, Any] | None = None) -> None:
        """Refuse tensors that cannot belong to an adapter of ``config``, before anything is stored or merged.
        Called when an adapter directory is read (``push``, merging or loading a directory) with each tensor's
        header entry (``tensors[key].dtype``: a safetensors dtype such as ``"F32"``, ``.shape``: a tuple), no
        data read; a script may pass torch tensors instead (:func:`check_floating` takes both). With a base model (``push --base``), ``base`` maps the base's tensor names, in the adapter's
        model naming (PEFT keys minus ``base_model.model.``), to their header entries: check that each module
        the adapter targets exists there and fits. Raises :class:`InvalidInput` with one line naming the tensor
        and the expected and actual shape or dtype. The default refuses non-floating tensors; methods add
        their own shape rules (and may call ``super()``)."""
        check_floating(tensors)

    # -- required ------------------------------------------------------------------------------
    def attach(self, model: Any, config: Any) -> Any:
        """Add this method's trainable modules to ``model`` in place and freeze everything else; with
        default init the model's outputs must not change. Returns the effective config."""
        raise PluginError(f"method '{self.name}' ({type(self).__name__}) does not implement attach")

    def state_dict(self, model: Any) -> dict[str, Any]:
        """The adapter's tensors, under PEFT's key names when PEFT implements the method."""
        raise PluginError(f"method '{self.name}' ({type(self).__name__}) does not implement state_dict")

    def load_state_dict(self, model: Any, tensors: dict[str, Any]) -> None:
        """Load tensors produced by :meth:`state_dict` into an attached model."""
        raise PluginError(f"method '{self.name}' ({type(self).__name__}) does not implement load_state_dict")

    def detach(self, model: Any) -> None:
        """Remove this method's modules, restoring the base model."""
        raise PluginError(f"method '{self.name}' ({type(self).__name__}) does not implement detach")

    # -- optional ------------------------------------------------------------------------------
    def merge_tensor(
        self, name: str, base_tensor: Any, adapter_tensors: dict[str, Any], config: Any, *, inplace: bool = False
    ) -> Any:
        """Return ``base_tensor`` with the adapter merged in, or ``None`` if the adapter does not touch
        it. Used by the streaming merge, one base tensor at a time. With ``inplace=True`` the caller owns
        ``base_tensor`` (a scratch buffer) and the method may merge into it and return it, sparing a
        full-size allocation per tensor; without it, ``base_tensor`` must be left unchanged. (The streaming merge
        always passes ``inplace=True``; a method may ignore it and return a new tensor.)"""
        raise AdapterhubError(
            f"method '{self.name}' cannot merge into base weights; export it and load it at run time instead"
        )

    def row_merger(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: Any,
        adapter_tensors: dict[str, Any],
        config: Any,
        blocks: list[tuple[int, int]],
    ) -> Any:
        """Optional fast path of the streaming merge: a function ``merge(block, i, j)`` that merges rows
        ``i:j`` of base tensor ``name`` (``shape``; ``block`` is a ``(j - i, ...)`` CPU tensor of ``dtype``;
        ``(i, j)`` is one of ``blocks``, the row ranges the writer will pass, in any order) in place, bit for
        bit what :meth:`merge_tensor` gives for those rows; or ``None`` (the default, or when those blocks
        cannot be merged exactly) to merge the whole tensor with :meth:`merge_tensor`. Blocks of about a MiB
        stay in cache from read to write."""
        return None

    def combine(
        self, adapters: list[tuple[Any, dict[str, Any]]], weights: list[float], how: str, **options: Any
    ) -> tuple[Any, dict[str, Any]]:
        """Combine several adapters of this method into a new ``(config, tensors)``."""
        raise AdapterhubError(f"method '{self.name}' cannot combine adapters")

    def attach_stack(self, model: Any, adapters: list[tuple[Any, dict[str, Any]]]) -> list[Any]:
        """Attach several adapters of this family (``(config, tensors)`` each) so that their effects add up in
        one forward pass (``compose``); inference only. Returns each adapter's effective config; undone by
        :meth:`detach_multi`."""
        raise AdapterhubError(f"method '{self.name}' cannot stack several adapters; stack at most one adapter of it")

    def attach_routed(self, model: Any, adapters: list[tuple[Any, dict[str, Any]]], route: Any) -> list[Any]:
        """Attach several adapters so that each batch row goes through the one ``route.ids`` names (``0``: none,
        ``i + 1``: ``adapters[i]``): mixed-adapter batches; inference only. Undone by :meth:`detach_multi`."""
        raise AdapterhubError(f"method '{self.name}' does not support per-row routing; serve it on its own model")

    def detach_multi(self, model: Any) -> None:
        """Undo :meth:`attach_stack` or :meth:`attach_routed`."""
        raise AdapterhubError(f"method '{self.name}' attaches no stacked or routed adapters")


def overridden(obj: Any, base: type, attr: str) -> bool:
    """Whether ``obj``'s class overrides ``base``'s ``attr``: how a contract's optional hooks become capabilities."""
    return getattr(type(obj), attr) is not getattr(base, attr)


#: (capability, the Method hook that provides it): a method has it when its class overrides the hook
_CAPABILITIES = (
    ("merge", "merge_tensor"),
    ("row-merge", "row_merger"),
    ("combine", "combine"),
    ("stack", "attach_stack"),
    ("route", "attach_routed"),
)
