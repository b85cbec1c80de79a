"""Helpers shared by the method-plugin tests that check an adapter against an oracle (``peft`` or the model).

Import it like ``tinymodels`` (``sys.path`` holds ``tests/``). Each helper is the one piece of logic that the
LoRA, (IA)³, BitFit, prompt / prefix tuning, bottleneck and merge tests used to repeat: the case table's pytest
parameters and its conformance-suite classes (the suite, ``adapterhub.testing.conformance``, checks default init,
detach, the round trips, tensor checks, peft -> ours and merge parity), randomising an adapter's trainable
tensors, PEFT directories (made by peft, read back, written by us), output comparisons, the optimizer step and
gradient parity. The assertions inside are exactly the ones the tests made; a helper named ``assert_…`` makes them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import tinymodels as tm
import torch
from safetensors.torch import load_file, save_file

from adapterhub.errors import InvalidInput

#: the key prefix PEFT gives a model's own parameter names in an adapter's state dict
PREFIX = "base_model.model."


# -- the case table -----------------------------------------------------------------------------------------
def case_params(cases, keep=None):
    """pytest parameters for a ``{id: (..., slow?)}`` case table: one per case (id = the case id), marked
    ``slow`` where the row's last item is true; ``keep(row)``, where given, chooses the rows."""
    return [
        pytest.param(cid, id=cid, marks=[pytest.mark.slow] if row[-1] else [])
        for cid, row in cases.items()
        if keep is None or keep(row)
    ]


@pytest.fixture(autouse=True)
def quiet():
    """Autouse: every test of a module that imports it (``from oracle import quiet``) runs with warnings
    silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- the conformance suite over a case table ------------------------------------------------------------------
def add_conformance_classes(module_globals, base, cases, attributes):
    """Add to a test module (its ``globals()``, where pytest collects them) one subclass ``Test_<case id>`` of the
    conformance suite's class ``base`` (``adapterhub.testing.conformance``) per row of a ``{id: (..., slow?)}``
    case table, its class attributes (method, model, options, peft_config ...) given by ``attributes(row)``; a
    slow row's class is marked ``slow``."""
    for cid, row in cases.items():
        name = "Test_" + re.sub(r"\W", "_", cid)
        cls = type(name, (base,), dict(attributes(row), __module__=module_globals["__name__"]))
        module_globals[name] = pytest.mark.slow(cls) if row[-1] else cls


# -- randomising an adapter -----------------------------------------------------------------------------------
@torch.no_grad()
def perturb_trainable(model, update, seed=0):
    """For each trainable parameter in order, draw float32 noise of its shape from one generator seeded with
    ``seed`` (cast to the parameter's dtype) and call ``update(name, param, noise)`` to change it in place."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.requires_grad:
            update(name, p, torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype))


def _lora_update(name, p, noise):
    if "lora_B" in name:
        p.copy_(noise * 0.05)
    elif "lora_magnitude_vector" in name:
        p.mul_(1 + 0.1 * noise)
    elif "lora_A" not in name:
        p.add_(noise * 0.05)


def randomise_lora(model, seed=0):
    """lora_B ~ N(0, 0.05); DoRA magnitudes scaled by 1 ± 10 %; modules_to_save copies perturbed by N(0, 0.05);
    lora_A left as initialised."""
    perturb_trainable(model, _lora_update, seed)


# -- outputs ---------------------------------------------------------------------------------------------------
def out(model, name):
    """The model's output tensor (``tm.logits``) for ``tm.inputs_for(name)``, without gradients."""
    with torch.no_grad():
        return tm.logits(model, tm.inputs_for(name))


def pooled_loss(model, name):
    """Squared-mean loss of a forward on ``name``'s inputs: the logits (or the last hidden state of a headless
    encoder) plus, where the model has a pooler (MiniLM), its output, so that the pooler is trained too."""
    output = model(**tm.inputs_for(name))
    loss = (output.logits if hasattr(output, "logits") else output.last_hidden_state).pow(2).mean()
    if getattr(output, "pooler_output", None) is not None:
        loss = loss + output.pooler_output.pow(2).mean()
    return loss


def logits_loss(model, name):
    """Squared-mean of ``tm.logits`` on ``name``'s inputs (with gradients)."""
    return tm.logits(model, tm.inputs_for(name)).pow(2).mean()


# -- PEFT directories ------------------------------------------------------------------------------------------
class PeftDirs:
    """PEFT adapter directories made by peft itself, cached per case for the whole test session.

    ``build(case)`` returns ``(peft model, base name)``; it is randomised with ``randomise`` (seed 0) and saved
    to a fresh temporary directory; ``reference(peft_model, path, name)`` gives the logits stored alongside
    (by default the saved model's own ``out``)."""

    def __init__(self, build, randomise, reference=None):
        self.build, self.randomise = build, randomise
        self.reference = reference or (lambda pm, path, name: out(pm, name))
        self.cache = {}

    def __call__(self, case, tmp_path_factory):
        """``(directory, reference logits)`` for ``case``."""
        if case not in self.cache:
            pm, name = self.build(case)
            self.randomise(pm)
            path = tmp_path_factory.mktemp(case)
            pm.save_pretrained(str(path))
            self.cache[case] = (str(path), self.reference(pm, str(path), name))
        return self.cache[case]


def read_peft_dir(path):
    """``(adapter_config.json as a dict, adapter_model.safetensors tensors)`` of a PEFT directory."""
    with open(os.path.join(path, "adapter_config.json")) as f:
        cfg = json.load(f)
    return cfg, load_file(os.path.join(path, "adapter_model.safetensors"))


def write_peft_dir(path, method, config, tensors):
    """Write ``tensors`` (made contiguous) and ``method.to_peft_config(config, None)`` as a PEFT directory at
    ``path`` (a pathlib.Path); returns the tensors written."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(method.to_peft_config(config, None)))
    return tensors


def attach_and_write_peft_dir(method, model, opts, randomise, path, name, output=out):
    """Attach ``method`` with the options ``opts``, randomise the adapter (seed 1) and write it as a PEFT
    directory at ``path``; returns ``(effective config, output before attaching, output after randomising,
    tensors written)``."""
    base = output(model, name)
    effective = method.attach(model, method.make_config(opts))
    randomise(model, seed=1)
    ours = output(model, name)
    return effective, base, ours, write_peft_dir(path, method, effective, method.state_dict(model))


# -- snapshots -------------------------------------------------------------------------------------------------
def grad_flags(model):
    """``{parameter name: requires_grad}``."""
    return {n: p.requires_grad for n, p in model.named_parameters()}


def trainable(model):
    """The names of the trainable parameters."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def optimizer_step(model, loss_fn, optimizer=torch.optim.SGD, lr=0.1):
    """One step of ``optimizer`` (over the trainable parameters, at ``lr``) on ``loss_fn(model)`` in train
    mode; returns the names of the parameters whose values changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    loss_fn(model).backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


# -- shared checks ---------------------------------------------------------------------------------------------
def grads_of(models, loss_fn):
    """For each model: backward of ``loss_fn(model)``, then ``{name: grad}`` of its trainable parameters."""
    grads = []
    for model in models:
        loss_fn(model).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    return grads


def assert_grads_match(ours_g, theirs_g, allow_none=False):
    """Every gradient of ``theirs_g`` equals ours within 1e-5 relative to its largest entry (at least 1e-5
    absolute); with ``allow_none``, a parameter off the loss's path has no gradient on either side."""
    for key, g in theirs_g.items():
        if allow_none and g is None:  # e.g. MiniLM's pooler: not on the path to last_hidden_state
            assert ours_g[key] is None, key
            continue
        assert (ours_g[key] - g).abs().max() <= 1e-5 * max(1.0, g.abs().max().item()), key


def assert_load_refuses_missing_and_extra(method, model, sd, key):
    """``load_state_dict`` refuses ``sd`` without ``key`` (one missing key) and with an ``extra`` key."""
    with pytest.raises(InvalidInput, match="1 missing key"):
        method.load_state_dict(model, {k: v for k, v in sd.items() if k != key})
    with pytest.raises(InvalidInput, match="unexpected key.*extra"):
        method.load_state_dict(model, dict(sd, extra=torch.zeros(1)))


def assert_imports_without_torch(module):
    """Importing the plugin package ``module`` in a fresh interpreter does not import torch."""
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
