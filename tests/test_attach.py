"""`adapterhub.attach(model, ref or directory)`: the one-liner peft users expect, for a registry ref and a
directory, checked against peft's own `PeftModel.from_pretrained` and against the base fingerprint."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub.errors import BaseMismatch, InvalidInput, NotFound


@pytest.fixture
def stored(cli, tmp_path):
    """A tiny Llama base directory, a PEFT LoRA trained-looking adapter (random B), pushed as acme/chat."""
    from peft import LoraConfig, get_peft_model
    from tinymodels import save_tiny_llama_base
    from transformers import AutoModelForCausalLM

    base = save_tiny_llama_base(tmp_path / "base")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    r = cli("push", tmp_path / "adapter", "acme/chat", "--base", base)
    assert r.exit_code == 0, r.output
    return base, str(tmp_path / "adapter")


def _logits(model):
    ids = torch.tensor([[2, 5, 9, 11, 4, 7]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_attach_a_registry_ref_equals_peft_and_detach_restores(stored):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter = stored
    expected = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter))
    model = AutoModelForCausalLM.from_pretrained(base)
    before = _logits(model)
    handle = adapterhub.attach(model, "acme/chat")
    assert handle.ref == "acme/chat:1"
    assert handle.method.name == "lora"
    assert handle.base_fingerprint == handle.manifest["base"]["fingerprint"]
    got = _logits(model)
    assert not torch.equal(got, before)  # the adapter does something
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    handle.detach()
    assert torch.equal(_logits(model), before)


def test_attach_a_directory_and_an_explicit_base(stored):
    from transformers import AutoModelForCausalLM

    base, adapter = stored
    model = AutoModelForCausalLM.from_pretrained(base)
    model.config._name_or_path = ""  # as if built in memory: the base must then be named
    with pytest.raises(InvalidInput, match="pass base=DIR"):
        adapterhub.attach(model, "acme/chat")
    handle = adapterhub.attach(model, "acme/chat", base=base)
    handle.detach()
    handle = adapterhub.attach(model, adapter)  # a PEFT directory records no fingerprint: nothing to check
    assert handle.ref is None and handle.base_fingerprint is None
    handle.detach()


def test_attach_refuses_another_base_unless_allowed(stored, tmp_path):
    from tinymodels import save_tiny_llama_base
    from transformers import AutoModelForCausalLM

    base, _ = stored
    other = save_tiny_llama_base(tmp_path / "other")
    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 0] += 1  # one changed value: another fingerprint
    model.save_pretrained(other)
    model = AutoModelForCausalLM.from_pretrained(other)
    with pytest.raises(BaseMismatch, match="the adapter expects base sha256:"):
        adapterhub.attach(model, "acme/chat")
    adapterhub.attach(model, "acme/chat", allow_base_mismatch=True).detach()


def test_attach_an_unknown_ref(stored):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stored[0])
    with pytest.raises(NotFound):
        adapterhub.attach(model, "acme/nope")


def test_importing_adapterhub_stays_cheap():
    import subprocess
    import sys

    code = "import adapterhub, sys; assert callable(adapterhub.attach); print('torch' in sys.modules, 'sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
