"""Built-in plugin: the prompt-learning methods ``prompt_tuning`` and ``prefix_tuning``, numerically identical to PEFT.

Importing this package does not import torch (the plugin manager may load it for ``adapterhub plugins``);
the torch-side code lives in :mod:`adapterhub_prompt.model` and is imported on first use.

* ``prompt_tuning``: PEFT ``peft_type="PROMPT_TUNING"``: ``num_virtual_tokens`` learned embeddings prepended to
  the input embeddings. Init RANDOM, TEXT (the embeddings of ``prompt_tuning_init_text``, tokenized by
  ``tokenizer_name_or_path`` or by the ``init_tokenizer`` passed to :meth:`PromptTuningMethod.attach`) or
  SAMPLE_VOCAB (embeddings of random vocabulary tokens).
* ``prefix_tuning``: PEFT ``peft_type="PREFIX_TUNING"`` (P-tuning v2): learned key/value prefixes at every layer,
  passed to the model as a ``DynamicCache``; grouped-query attention models get ``num_key_value_heads``-wide
  prefixes; ``prefix_projection`` trains them through an MLP.

Both work on a plain transformers model (``...ForCausalLM``, ``...ForSequenceClassification``, or a headless
encoder): ``attach`` adds the submodule ``prompt_encoder``, freezes the base, trains copies of ``modules_to_save``
(SEQ_CLS adds the ``classifier`` / ``score`` head, as PEFT does) and registers a forward pre-hook that rewrites
each call's inputs the way PEFT's model wrappers do; ``detach`` removes all of it and restores the base outputs
exactly. What a caller must know:

* prompt tuning adds ``num_virtual_tokens`` leading positions to the *output* (logits, hidden states) exactly as
  PEFT does: the real tokens' outputs are ``[:, num_virtual_tokens:]``. CAUSAL_LM ``labels`` are padded with -100
  for them, so ``outputs.loss`` is right as it stands. Prefix tuning adds no positions.
* attention masks must be 2-D over the real tokens; leading ones are added for the virtual tokens.
* a call that brings a non-empty transformers ``Cache`` is taken for a generation step whose cache already holds
  the virtual tokens (``model.generate`` works); legacy tuple caches are refused.
* CAUSAL_LM ``token_type_ids`` are dropped with a warning, as PEFT does.

Unlike LoRA, these methods cannot start as a no-op: any prompt (even a zero prefix, which still takes softmax
mass) changes the outputs, so there is no "default init leaves outputs unchanged"; ``detach`` restores them.
They cannot merge into base weights either (the base-class ``merge_tensor`` error says so).

Checkpoints use PEFT's key names (``prompt_embeddings``; the head as ``base_model.<path>.<param>``), so an adapter
directory is a PEFT adapter directory. With ``prefix_projection`` the saved tensor is the projected prefix (as
PEFT saves it): loading it holds the prefix directly, and further training updates it without the MLP.
``attach`` returns and records the *effective* config (dimensions inferred from the model, the SEQ_CLS head,
the TEXT tokenizer's name); save that one.
"""

from __future__ import annotations

from typing import Any

import adapterhub
from adapterhub.errors import InvalidInput
from adapterhub.tuning import TunerMethod

from .config import (
    EMBEDDING_KEY,
    SAVED_PREFIX,
    PrefixTuningConfig,
    PromptTuningConfig,
    from_peft_dict,
    prompt_shape,
    to_peft_dict,
)

__all__ = ["PromptTuningConfig", "PrefixTuningConfig", "PromptTuningMethod", "PrefixTuningMethod", "register_methods"]


class _PromptLearningMethod(TunerMethod):
    """What both prompt methods share: the torch side (:mod:`adapterhub_prompt.model`) and PEFT configs.
    :meth:`attach` works in place and freezes the base; it returns the effective config."""

    model_module = "adapterhub_prompt.model"

    def to_peft_config(self, config: Any, base_model_name_or_path: str | None = None) -> dict[str, Any]:
        """PEFT's ``adapter_config.json``; pass the effective config (its dimensions are filled in)."""
        return to_peft_dict(self._config(config), base_model_name_or_path)

    def from_peft_config(self, peft_config: dict[str, Any]) -> Any:
        return from_peft_dict(peft_config, self.config_class)

    def check_tensors(self, tensors: Any, config: Any, base: Any = None) -> None:
        """``prompt_embeddings`` present, of the config's shape (its width where the config states the dimensions,
        as the effective config does); with ``base``, each saved head copy (``base_model.<name>``) of the shape of
        the base's ``<name>`` where the base has it."""
        super().check_tensors(tensors, config, base)
        if EMBEDDING_KEY not in tensors:
            raise InvalidInput(f"the {self.name} adapter lacks '{EMBEDDING_KEY}'")
        got = tuple(tensors[EMBEDDING_KEY].shape)
        rows, width = prompt_shape(self._config(config))
        if len(got) != 2 or got[0] != rows or width not in (None, got[1]):
            want = f"({rows}, {width})" if width is not None else f"({rows}, width)"
            raise InvalidInput(
                f"adapter tensor '{EMBEDDING_KEY}' has shape {got}, expected {want} (num_virtual_tokens={rows})"
            )
        for key in sorted(k for k in tensors if k.startswith(SAVED_PREFIX)):
            original = None if base is None else base.get(key[len(SAVED_PREFIX) :])
            if original is not None and tuple(original.shape) != tuple(tensors[key].shape):
                raise InvalidInput(
                    f"adapter tensor '{key}' has shape {tuple(tensors[key].shape)}, but the base's "
                    f"'{key[len(SAVED_PREFIX) :]}' has {tuple(original.shape)}"
                )


class PromptTuningMethod(_PromptLearningMethod):
    """Prompt tuning: learned virtual-token embeddings prepended to the input."""

    name = "prompt_tuning"
    config_class = PromptTuningConfig
    peft_type = "PROMPT_TUNING"

    def attach(self, model: Any, config: Any, *, init_tokenizer: Any = None) -> PromptTuningConfig:
        """Attach in place and freeze the base; returns the effective config.

        ``init_tokenizer``: the tokenizer for ``prompt_tuning_init="TEXT"`` (any callable returning
        ``{"input_ids": [...]}``); without it ``tokenizer_name_or_path`` is loaded with ``AutoTokenizer``. The
        effective config records the tokenizer's ``name_or_path``. If the tokenizer cannot be loaded, attach still
        succeeds (so that a trained adapter can be loaded with :meth:`load_state_dict`), and the first forward or
        ``state_dict`` call before such a load raises the loading error."""
        return self._model().attach(model, self._config(config), self.name, init_tokenizer=init_tokenizer)


class PrefixTuningMethod(_PromptLearningMethod):
    """Prefix tuning / P-tuning v2: learned key/value prefixes at every attention layer."""

    name = "prefix_tuning"
    config_class = PrefixTuningConfig
    peft_type = "PREFIX_TUNING"


@adapterhub.hookimpl
def register_methods(register) -> None:
    register(PromptTuningMethod())
    register(PrefixTuningMethod())
