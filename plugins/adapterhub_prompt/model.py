"""Attaching prompt tuning / prefix tuning to a plain transformers model, and PEFT-named state dicts.

Nothing in the model is wrapped. ``attach`` adds the prompt encoder as the submodule ``prompt_encoder`` (so
``model.parameters()`` and ``model.to(...)`` see it), freezes every base parameter, makes trained copies of
``modules_to_save`` (the SEQ_CLS head), and registers one forward pre-hook (with kwargs) that rewrites the
inputs of each call exactly as PEFT's ``PeftModelForCausalLM`` / ``PeftModelForSequenceClassification`` /
``PeftModelForFeatureExtraction`` forward does:

* prompt tuning (on the top-level model): the ``num_virtual_tokens`` prompt embeddings are prepended to
  ``inputs_embeds`` (computed from ``input_ids`` when needed; ``input_ids`` is then dropped), the attention mask
  gets ``num_virtual_tokens`` leading ones, CAUSAL_LM labels get ``num_virtual_tokens`` leading -100 and
  SEQ_CLS token_type_ids leading zeros. The output therefore has ``num_virtual_tokens`` extra leading
  positions (logits / hidden states), as PEFT's does.
* prefix tuning (on the top-level model when its ``forward`` takes a KV cache, else on the first
  ``PreTrainedModel`` child that does, e.g. ``bert`` under ``BertForSequenceClassification``, like PEFT): a
  ``DynamicCache`` holding the per-layer key/value prefix (``num_key_value_heads`` heads for GQA) is passed as
  the cache and the attention mask gets leading ones. The output has no extra positions. The cache keyword is
  the model's own: ``cache`` from transformers 5.24 on, ``past_key_values`` before; a caller's cache is read
  under either.

A call that brings a non-empty ``Cache`` is a generation step: the virtual tokens are already in that cache, so
only the attention mask is extended; ``position_ids`` are shifted by ``num_virtual_tokens`` (``cache_position``,
when given, is recomputed from the cache length). CAUSAL_LM ``token_type_ids`` are dropped with a warning, as
PEFT does. PEFT drops ``position_ids`` for prompt tuning; we shift them instead, which gives the same numbers
for the positions PEFT's models compute and stays right for left-padded batches.

Checkpoint keys are PEFT's (``get_peft_model_state_dict``)::

    prompt_embeddings                  (num_virtual_tokens, token_dim)                 prompt tuning
    prompt_embeddings                  (num_virtual_tokens, num_layers * 2 * token_dim) prefix tuning
    base_model.<module path>.<param>   modules_to_save: the trained copy's full state dict
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from adapterhub import tuning as tuners
from adapterhub.errors import InvalidInput

from .config import EMBEDDING_KEY, PrefixTuningConfig, PromptTuningConfig, prompt_shape
from .config import SAVED_PREFIX as PREFIX

ENCODER_NAME = "prompt_encoder"
_STATE_ATTR = "_adapterhub_prompt"


# -- prompt encoders (parameters in fp32, like PEFT's; cast to the base dtype at use) --------------------
class PromptEmbedding(nn.Module):
    """Prompt tuning's learned virtual-token embeddings: ``forward() -> (num_virtual_tokens, token_dim)``."""

    def __init__(self, num_virtual_tokens: int, token_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)  # N(0, 1): PEFT's RANDOM init

    def forward(self) -> torch.Tensor:
        return self.embedding.weight

    def saved(self) -> torch.Tensor:
        return self.embedding.weight.detach()

    def load(self, value: torch.Tensor) -> None:
        with torch.no_grad():
            self.embedding.weight.copy_(value)


class PrefixEncoder(nn.Module):
    """Prefix tuning's key/value prefix: ``forward() -> (num_virtual_tokens, num_layers * 2 * token_dim)``.

    With ``prefix_projection`` it is ``transform(embedding)`` (PEFT's 2-layer tanh MLP); what is saved, as PEFT
    saves it, is that projected prefix. Loading a saved prefix drops the MLP: the prefix is then held (and
    trained further) directly, since the MLP cannot be recovered from its output.
    """

    def __init__(self, config: PrefixTuningConfig) -> None:
        super().__init__()
        nvt, dim, flat = config.num_virtual_tokens, config.token_dim, config.num_layers * 2 * config.token_dim
        self.transform: nn.Module | None = None
        if config.prefix_projection:  # same construction order as PEFT: same random init for the same seed
            self.embedding = nn.Embedding(nvt, dim)
            self.transform = nn.Sequential(
                nn.Linear(dim, config.encoder_hidden_size), nn.Tanh(), nn.Linear(config.encoder_hidden_size, flat)
            )
            if config.init_weights == "zero":
                nn.init.zeros_(self.transform[-1].weight)
                nn.init.zeros_(self.transform[-1].bias)
        else:
            self.embedding = nn.Embedding(nvt, flat)
            if config.init_weights == "zero":
                nn.init.zeros_(self.embedding.weight)
        self.flat_shape = (nvt, flat)

    def forward(self) -> torch.Tensor:
        weight = self.embedding.weight
        return weight if self.transform is None else self.transform(weight)

    def saved(self) -> torch.Tensor:
        if self.transform is None:
            return self.embedding.weight.detach()
        with torch.no_grad():
            return self.forward()

    def load(self, value: torch.Tensor) -> None:
        if self.transform is not None:
            weight = self.embedding.weight
            self.embedding = nn.Embedding(*self.flat_shape, device=weight.device, dtype=weight.dtype)
            self.embedding.weight.requires_grad_(weight.requires_grad)
            self.transform = None
        with torch.no_grad():
            self.embedding.weight.copy_(value)


# -- bookkeeping -------------------------------------------------------------------------------------------
@dataclass
class Attached(tuners.Attached):
    """What :func:`attach` changed (see :class:`adapterhub.tuning.Attached`), plus the hook handles and the
    pending init error."""

    handles: list = field(default_factory=list)
    pending: str | None = None  # why the requested init could not run (cleared by load_state_dict)

    def encoder(self, model: nn.Module) -> nn.Module:
        return getattr(model, ENCODER_NAME)

    def check_ready(self) -> None:
        if self.pending is not None:
            raise InvalidInput(self.pending)


def attached(model: nn.Module, method: str | None = None) -> Attached:
    return tuners.attached(model, _STATE_ATTR, method, family="prompt")


# -- dimensions (PEFT's _prepare_prompt_learning_config) ---------------------------------------------------
def _first(d: dict, keys: tuple[str, ...], what: str) -> int:
    for key in keys:
        if d.get(key) is not None:
            return d[key]
    raise InvalidInput(f"cannot infer {what} from the model config (none of {', '.join(keys)}); set it in the config")


def infer_dims(model: nn.Module, prefix: bool) -> dict[str, int]:
    """``token_dim``, ``num_layers``, ``num_attention_heads`` as PEFT infers them; for prefix tuning on a model
    with ``num_key_value_heads`` (GQA), ``token_dim = head_dim * num_key_value_heads`` and
    ``num_attention_heads = num_key_value_heads``."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise InvalidInput(f"{type(model).__name__} has no transformers config; prompt methods need one")
    d = cfg.to_dict()
    if isinstance(d.get("text_config"), dict):
        d = d["text_config"]
    layers = getattr(cfg, "num_hidden_layers", None) or _first(
        d, ("num_hidden_layers", "num_layers", "n_layer"), "num_layers"
    )
    dim = _first(d, ("hidden_size", "n_embd", "d_model"), "token_dim")
    heads = _first(d, ("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"), "num_attention_heads")
    if prefix and d.get("num_key_value_heads") is not None:
        if d.get("global_head_dim") is not None or d.get("per_layer_config") is not None:
            raise InvalidInput("prefix tuning does not support models whose layers have different key/value shapes")
        head_dim = d.get("head_dim") or dim // heads
        heads = d["num_key_value_heads"]
        dim = head_dim * heads
    return {"token_dim": dim, "num_layers": layers, "num_attention_heads": heads}


def _resolve(model: nn.Module, config: Any, prefix: bool) -> tuple[Any, list[str]]:
    """The effective config (dimensions filled in, SEQ_CLS head added) and the modules_to_save paths."""
    dims = infer_dims(model, prefix)
    for name, value in dims.items():
        given = getattr(config, name)
        if given is not None and given != value:
            raise InvalidInput(
                f"{name}={given} in the config but the model has {name}={value}; "
                "the adapter was made for a different model architecture"
            )
    mts = tuners.with_seq_cls_heads(config.modules_to_save, config.task_type)
    saved = tuners.modules_to_save_paths(model, mts)
    extra: dict[str, Any] = {}
    if prefix and config.encoder_hidden_size is None:
        extra["encoder_hidden_size"] = dims["token_dim"]  # PEFT's default
    return dataclasses.replace(config, modules_to_save=mts, **dims, **extra), saved


# -- prompt tuning init ------------------------------------------------------------------------------------
def _text_init_ids(config: PromptTuningConfig, tokenizer: Any, vocab_size: int) -> list[int]:
    """PEFT's TEXT init: the tokenized text truncated, or repeated then truncated, to num_virtual_tokens."""
    ids = list(tokenizer(config.prompt_tuning_init_text)["input_ids"])
    if not ids:
        raise InvalidInput("prompt_tuning_init_text tokenizes to no tokens")
    n = config.num_virtual_tokens
    ids = (ids * math.ceil(n / len(ids)))[:n]
    bad = [i for i in ids if not 0 <= int(i) < vocab_size]
    if bad:
        raise InvalidInput(
            f"the tokenizer gave token id {bad[0]}, outside the model's vocabulary of {vocab_size}: "
            "use the tokenizer that belongs to the model"
        )
    return [int(i) for i in ids]


def _load_tokenizer(config: PromptTuningConfig) -> Any:
    from transformers import AutoTokenizer

    kwargs = dict(config.tokenizer_kwargs or {})
    kwargs.pop("trust_remote_code", None)  # never run code from a checkpoint's config (PEFT does the same)
    return AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)


def _init_prompt(
    encoder: PromptEmbedding, config: PromptTuningConfig, word_embeddings: nn.Embedding, tokenizer: Any
) -> str | None:
    """Initialise the prompt as PEFT does; returns why it could not (TEXT without a loadable tokenizer)."""
    if config.prompt_tuning_init == "RANDOM":
        return None
    weight = word_embeddings.weight
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        ids = torch.randint(0, word_embeddings.num_embeddings, (config.num_virtual_tokens,), dtype=torch.long)
    else:
        if tokenizer is None:
            try:
                tokenizer = _load_tokenizer(config)
            except Exception as exc:  # noqa: BLE001 - any loader failure means "no tokenizer here"
                return (
                    f"prompt_tuning_init TEXT could not load tokenizer '{config.tokenizer_name_or_path}' "
                    f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); pass "
                    "init_tokenizer= to attach, or load trained prompt weights with load_state_dict"
                )
        ids = torch.tensor(_text_init_ids(config, tokenizer, word_embeddings.num_embeddings), dtype=torch.long)
    with torch.no_grad():
        encoder.embedding.weight.copy_(word_embeddings(ids.to(weight.device)).detach().to(torch.float32))
    return None


# -- attach / detach -------------------------------------------------------------------------------------
#: the keyword of a transformers model's KV cache: ``cache`` from transformers 5.24 on (which still renames a
#: ``past_key_values`` argument until 5.40), ``past_key_values`` before
CACHE_KWARGS = ("cache", "past_key_values")


def _cache_kwarg(module: nn.Module) -> str | None:
    """The keyword ``module.forward`` takes its KV cache by, if any."""
    params = inspect.signature(module.forward).parameters
    return next((k for k in CACHE_KWARGS if k in params), None)


def _cache_arg(kw: dict, name: str | None) -> Any:
    """The caller's cache, under either keyword, moved to ``name`` (the forward's own keyword) when there is one."""
    given = [k for k in CACHE_KWARGS if k in kw]
    values = [kw[k] for k in given if kw[k] is not None]
    if len(values) > 1:
        raise InvalidInput("a cache was given twice (as cache and as past_key_values); pass one")
    if name is None:
        return values[0] if values else None
    for k in given:
        del kw[k]
    if given:
        kw[name] = values[0] if values else None
    return kw.get(name)


def _cache_owner(model: nn.Module) -> nn.Module:
    """The module whose forward takes the KV cache (PEFT's rule for prefix tuning)."""
    if _cache_kwarg(model):
        return model
    from transformers import PreTrainedModel

    for _, child in model.named_children():
        if isinstance(child, PreTrainedModel):
            if _cache_kwarg(child):
                return child
            break
    raise InvalidInput(f"{type(model).__name__} does not take a KV cache (past_key_values), which prefix tuning needs")


def attach(model: nn.Module, config: Any, method: str | None = None, init_tokenizer: Any = None) -> Any:
    """Attach prompt tuning (a :class:`PromptTuningConfig`) or prefix tuning (a :class:`PrefixTuningConfig`) in
    place, freeze every base parameter, and return the effective config."""
    prefix = isinstance(config, PrefixTuningConfig)
    method = method or ("prefix_tuning" if prefix else "prompt_tuning")
    tuners.check_free(model, _STATE_ATTR)
    if hasattr(model, ENCODER_NAME):
        raise InvalidInput(f"the model already has an attribute '{ENCODER_NAME}'; cannot attach {method}")
    get_in = getattr(model, "get_input_embeddings", None)
    word_embeddings = get_in() if callable(get_in) else None
    if not isinstance(word_embeddings, nn.Embedding):
        raise InvalidInput(f"{type(model).__name__} has no input embedding layer; {method} needs a transformers model")
    effective, saved_paths = _resolve(model, config, prefix)
    if prefix:
        owner = _cache_owner(model)
        if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
            raise InvalidInput("prefix tuning does not work with gradient checkpointing (as in PEFT); turn it off")
    elif effective.token_dim != word_embeddings.embedding_dim:
        raise InvalidInput(
            f"the input embeddings are {word_embeddings.embedding_dim} wide but the model's hidden size is "
            f"{effective.token_dim}; prompt tuning needs them equal"
        )
    if not prefix and effective.prompt_tuning_init == "TEXT":
        if init_tokenizer is not None and not effective.tokenizer_name_or_path:
            name = getattr(init_tokenizer, "name_or_path", None)
            effective = dataclasses.replace(effective, tokenizer_name_or_path=name or None)
        if not effective.tokenizer_name_or_path:
            raise InvalidInput(
                "prompt_tuning_init TEXT needs a tokenizer: set tokenizer_name_or_path, or pass init_tokenizer= "
                "(a tokenizer with a name_or_path, recorded so that PEFT can load the adapter)"
            )

    device = word_embeddings.weight.device
    if prefix:
        encoder: nn.Module = PrefixEncoder(effective).to(device)
        pending = None
    else:  # may still refuse (a tokenizer that does not fit the model): nothing is changed before this
        encoder = PromptEmbedding(effective.num_virtual_tokens, effective.token_dim).to(device)
        pending = _init_prompt(encoder, effective, word_embeddings, init_tokenizer)
    flags = tuners.freeze(model)
    model.add_module(ENCODER_NAME, encoder)
    saved = tuners.train_copies(model, saved_paths)
    state = Attached(method, effective, saved, flags, pending=pending)
    if prefix:
        hook = _PrefixHook(model, owner, state)
        state.handles.append(owner.register_forward_pre_hook(hook, with_kwargs=True))
    else:
        hook = _PromptHook(model, state)
        state.handles.append(model.register_forward_pre_hook(hook, with_kwargs=True))
    model.__dict__[_STATE_ATTR] = state
    return effective


def detach(model: nn.Module, method: str | None = None) -> None:
    """Remove the hook, the prompt encoder and the trained copies; put back the ``requires_grad`` flags."""
    state = attached(model, method)
    for handle in state.handles:
        handle.remove()
    delattr(model, ENCODER_NAME)
    tuners.release(model, _STATE_ATTR, state)


# -- the forward pre-hooks ---------------------------------------------------------------------------------
def _binder(module: nn.Module) -> Callable[[tuple, dict], dict]:
    """Turns a forward call's ``(args, kwargs)`` into keyword arguments only."""
    sig = inspect.signature(module.forward)
    var_kw = next((p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    def bind(args: tuple, kwargs: dict) -> dict:
        if not args:
            return dict(kwargs)
        try:
            arguments = dict(sig.bind_partial(*args, **kwargs).arguments)
        except TypeError as exc:
            raise InvalidInput(f"cannot read the arguments of {type(module).__name__}.forward: {exc}") from None
        if var_kw is not None and var_kw in arguments:
            arguments.update(arguments.pop(var_kw))
        return arguments

    return bind


def _past_length(cache: Any) -> int:
    if cache is None:
        return 0
    from transformers import Cache

    if isinstance(cache, Cache):
        return int(cache.get_seq_length())
    raise InvalidInput(
        "prompt methods need the KV cache (cache / past_key_values) as a transformers Cache "
        "(e.g. DynamicCache), not a tuple"
    )


def _batch_and_length(kw: dict) -> tuple[int, int]:
    ids, embeds = kw.get("input_ids"), kw.get("inputs_embeds")
    x = embeds if embeds is not None else ids
    if x is None:
        raise InvalidInput("prompt methods need input_ids or inputs_embeds")
    return x.shape[0], x.shape[1]


def _common(kw: dict, state: Attached, batch: int, past: int, new: int) -> None:
    """Attention mask, positions and token types, shared by both methods (``past`` counts the virtual tokens
    already in the cache; ``new`` is the length of this call's input after the rewrite)."""
    nvt = state.config.num_virtual_tokens
    mask = kw.get("attention_mask")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise InvalidInput("prompt methods need a 2-D attention mask (batch, sequence) over the real tokens")
        kw["attention_mask"] = torch.cat((mask.new_ones(batch, nvt), mask), dim=1)
    if kw.get("cache_position") is not None:
        kw["cache_position"] = torch.arange(past, past + new, device=kw["cache_position"].device)
    if state.config.task_type == "CAUSAL_LM" and kw.get("token_type_ids") is not None:
        warnings.warn(
            "token_type_ids are not supported by prompt methods for CAUSAL_LM; ignoring them (as PEFT)", stacklevel=2
        )
        kw["token_type_ids"] = None


class _PromptHook:
    """Prompt tuning: prepend the virtual tokens' embeddings (see the module docstring)."""

    def __init__(self, model: nn.Module, state: Attached) -> None:
        self.model, self.state, self.bind = model, state, _binder(model)
        self.cache_kw = _cache_kwarg(model)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        state, kw = self.state, self.bind(args, kwargs)
        nvt, task = state.config.num_virtual_tokens, state.config.task_type
        batch, length = _batch_and_length(kw)
        past = _past_length(_cache_arg(kw, self.cache_kw))
        positions = kw.get("position_ids")
        if past == 0:  # a fresh sequence: the virtual tokens go in front
            state.check_ready()
            embeds = kw.get("inputs_embeds")
            if embeds is None:
                embeds = self.model.get_input_embeddings()(kw["input_ids"])
            prompts = getattr(self.model, ENCODER_NAME)().to(embeds.dtype)  # (nvt, token_dim)
            kw["inputs_embeds"] = torch.cat((prompts.unsqueeze(0).expand(batch, -1, -1), embeds), dim=1)
            kw["input_ids"] = None
            labels = kw.get("labels")
            if labels is not None:
                if task == "CAUSAL_LM":
                    kw["labels"] = torch.cat((labels.new_full((batch, nvt), -100), labels), dim=1)
                elif task != "SEQ_CLS":
                    raise InvalidInput(f"prompt_tuning cannot align labels for task_type {task}; set task_type")
            types = kw.get("token_type_ids")
            if types is not None and task != "CAUSAL_LM":
                kw["token_type_ids"] = torch.cat((types.new_zeros(batch, nvt), types), dim=1)
            if positions is not None:
                head = torch.arange(nvt, device=positions.device, dtype=positions.dtype)
                kw["position_ids"] = torch.cat((head.expand(*positions.shape[:-1], nvt), positions + nvt), dim=-1)
            length += nvt
        elif positions is not None:  # a generation step: the cache already holds the virtual tokens
            kw["position_ids"] = positions + nvt
        _common(kw, state, batch, past, length)
        return (), kw


class _PrefixHook:
    """Prefix tuning: pass the key/value prefix as the model's KV cache (see the module docstring)."""

    def __init__(self, model: nn.Module, owner: nn.Module, state: Attached) -> None:
        self.model, self.state, self.bind = model, state, _binder(owner)
        self.cache_kw = _cache_kwarg(owner)

    def prefix(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Per layer a ``(2, batch, heads, num_virtual_tokens, head_dim)`` key/value pair (PEFT's get_prompt)."""
        cfg = self.state.config
        flat = getattr(self.model, ENCODER_NAME)().to(dtype)  # (nvt, layers * 2 * token_dim)
        heads = cfg.num_attention_heads
        kv = flat.repeat(batch, 1, 1).view(batch, cfg.num_virtual_tokens, cfg.num_layers * 2, heads, -1)
        return kv.permute([2, 0, 3, 1, 4]).split(2)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        from transformers import Cache, DynamicCache

        state, kw = self.state, self.bind(args, kwargs)
        nvt = state.config.num_virtual_tokens
        batch, length = _batch_and_length(kw)
        cache = _cache_arg(kw, self.cache_kw)
        past = _past_length(cache)
        if past == 0:  # a fresh sequence: put the prefix in the cache
            state.check_ready()
            dtype = self.model.get_input_embeddings().weight.dtype
            layers = self.prefix(batch, dtype)
            if isinstance(cache, Cache):  # an empty cache from generate(): fill it in place
                positions = torch.arange(nvt, device=layers[0].device)
                for i, (key, value) in enumerate(layers):
                    cache.update(key, value, i, cache_kwargs={"cache_position": positions})
            else:
                kw[self.cache_kw] = DynamicCache(layers)
            past = nvt
        if kw.get("position_ids") is not None:
            kw["position_ids"] = kw["position_ids"] + nvt
        _common(kw, state, batch, past, length)
        return (), kw


# -- state dicts -----------------------------------------------------------------------------------------
def _expected_shapes(model: nn.Module, state: Attached) -> dict[str, tuple[int, ...]]:
    shapes = {EMBEDDING_KEY: prompt_shape(state.config)}
    shapes.update({k: tuple(v.shape) for k, v in tuners.saved_tensors(model, state.saved, PREFIX).items()})
    return shapes


def state_dict(model: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's checkpoint key names (detached; not copied where they are stored)."""
    state = attached(model, method)
    state.check_ready()
    return {EMBEDDING_KEY: state.encoder(model).saved(), **tuners.saved_tensors(model, state.saved, PREFIX)}


def load_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], method: str | None = None) -> None:
    """Strict inverse of :func:`state_dict`: every key present, no extra key, every shape equal."""
    state = attached(model, method)
    tuners.check_fit(state.method, _expected_shapes(model, state), tensors)
    state.encoder(model).load(tensors[EMBEDDING_KEY])
    tuners.copy_into(tuners.saved_tensors(model, state.saved, PREFIX), tensors)
    state.pending = None
