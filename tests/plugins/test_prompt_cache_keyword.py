"""Prompt and prefix tuning on models whose forward takes the KV cache as ``cache``, as transformers 5.24 and
later name it (``past_key_values`` before). The test environment pins an older transformers for the oracle's
sake (peft 0.21 still looks for ``past_key_values``), so a tiny Llama with the new keyword stands in."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))
import tinymodels as tm  # noqa: E402
from oracle import quiet  # noqa: E402,F401  (autouse)
from test_prompt import CAUSAL, METHODS, TOL, _randomise  # noqa: E402

from adapterhub.errors import InvalidInput  # noqa: E402


def _cache_keyword_llama():
    """tiny Llama whose forward takes its KV cache as ``cache``, as transformers 5.24 and later name it (the test
    environment pins an older transformers for peft's sake): same weights as ``tm.tiny_llama()``."""
    from transformers import LlamaForCausalLM

    class CacheKeywordLlama(LlamaForCausalLM):
        def forward(
            self,
            input_ids=None,
            attention_mask=None,
            position_ids=None,
            cache=None,
            inputs_embeds=None,
            labels=None,
            use_cache=None,
            **kwargs,
        ):
            assert "past_key_values" not in kwargs  # renamed on the way in, as transformers 5.24 does
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                **kwargs,
            )

    plain = tm.tiny_llama()
    model = CacheKeywordLlama(plain.config)
    model.load_state_dict(plain.state_dict())
    return model.eval()


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_models_that_take_the_cache_as_cache(kind):
    """transformers 5.24 renamed ``past_key_values`` to ``cache``: the prefix goes in under the model's own
    keyword, a caller's cache is read under either, and the logits equal those of the older keyword's model."""
    method = METHODS[kind]
    old, new = tm.tiny_llama(), _cache_keyword_llama()
    for model in (old, new):
        method.attach(model, method.make_config(CAUSAL))
        _randomise(model)
    ids = tm.inputs_for("llama")["input_ids"]
    with torch.no_grad():
        full = new(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert (full - old(input_ids=ids, attention_mask=torch.ones_like(ids)).logits).abs().max() <= TOL
        first = new(input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]), use_cache=True)
        step = dict(
            input_ids=ids[:, -1:],
            attention_mask=torch.ones_like(ids),
            position_ids=torch.full((2, 1), ids.shape[1] - 1),
            use_cache=True,
        )
        for keyword in ("cache", "past_key_values"):
            cache = copy.deepcopy(first.past_key_values)
            got = new(**step, **{keyword: cache}).logits[:, -1]
            assert (got - full[:, -1]).abs().max() <= TOL, keyword
        with pytest.raises(InvalidInput, match="given twice"):
            new(**step, cache=first.past_key_values, past_key_values=first.past_key_values)
