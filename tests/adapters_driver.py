"""Run AdapterHub's ``adapters`` library on a batch of jobs: the oracle side of tests/test_adapters_oracle.py.

Run by the python of the ``adapters`` virtual environment (``.venv-adapters``, built by ``.ci/adapters-venv``;
``adapters`` pins an older transformers than adapterhub), never imported by adapterhub's tests:

    .venv-adapters/bin/python tests/adapters_driver.py jobs.json

``jobs.json`` is a list of jobs, each a dict; every job writes ``<out>/logits.safetensors`` (the model's
``logits``, or ``last_hidden_state`` for a headless encoder) for ``inputs``:

* ``{"op": "make", ...}``: add an adapter of ``config`` (``{"class": "SeqBnConfig", "kwargs": {...}}``), move
  every adapter parameter (and a static head) off its init by ``N(0, 0.05)`` noise seeded with ``seed``, and
  ``save_adapter`` it to ``<out>/adapter`` (``pytorch_adapter.bin``, or safetensors with ``safetensors``);
* ``{"op": "train", "steps": N, ...}``: the same adapter trained ``N`` Adam steps in ``adapters``
  (``train_adapter``: the base frozen) on ``inputs`` (labels ``labels`` for seq-cls, the ids for causal LM);
* ``{"op": "load", "adapter": DIR, ...}``: ``load_adapter(DIR, use_safetensors=True)`` into a fresh model.

Common keys: ``model`` (a model directory), ``head`` (``seq-cls``, ``causal-lm`` or ``base``), ``out``;
``flex_head`` (``add_classification_head`` keyword arguments) loads ``AutoAdapterModel`` with that head instead.
"""

from __future__ import annotations

import json
import os
import sys

import torch

NAME = "oracle"


def load_model(job):
    import transformers

    if job.get("flex_head") is not None:  # adapters' own model class with a flexible prediction head
        from adapters import AutoAdapterModel

        return AutoAdapterModel.from_pretrained(job["model"], local_files_only=True, torch_dtype=torch.float32).eval()
    auto = {
        "seq-cls": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "base": transformers.AutoModel,
    }[job["head"]]
    model = auto.from_pretrained(job["model"], local_files_only=True, torch_dtype=torch.float32)
    import adapters

    adapters.init(model)
    return model.eval()


def make_config(spec):
    import adapters

    return getattr(adapters, spec["class"])(**spec.get("kwargs", {}))


def output(model, job):
    ids = torch.tensor(job["inputs"])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    value = getattr(out, "logits", None)
    return value if value is not None else out.last_hidden_state


@torch.no_grad()
def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if f".{NAME}." in name or name.startswith(("classifier.", "score.")):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def train(model, job):
    model.train_adapter(NAME)
    if job["head"] == "seq-cls":  # train_adapter freezes the static head too; adapterhub trains it (SEQ_CLS)
        for n, p in model.named_parameters():
            if n.startswith(("classifier.", "score.")):
                p.requires_grad_(True)
    torch.manual_seed(job.get("seed", 0))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    ids = torch.tensor(job["inputs"])
    model.train()
    for _ in range(job["steps"]):
        if job["head"] == "seq-cls":
            loss = model(input_ids=ids, labels=torch.tensor(job["labels"])).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def run(job):
    from safetensors.torch import save_file

    os.makedirs(job["out"], exist_ok=True)
    model = load_model(job)
    if job["op"] == "load":
        name = model.load_adapter(job["adapter"], use_safetensors=True, with_head=True)
        model.set_active_adapters(name)
    else:
        model.add_adapter(NAME, config=make_config(job["config"]))
        if job.get("flex_head") is not None:
            model.add_classification_head(NAME, **job["flex_head"])
        if job["op"] == "train":
            train(model, job)
        else:
            perturb(model, job.get("seed", 0))
        model.set_active_adapters(NAME)
        model.save_adapter(os.path.join(job["out"], "adapter"), NAME, use_safetensors=job.get("safetensors", False))
    save_file({"logits": output(model, job).contiguous()}, os.path.join(job["out"], "logits.safetensors"))


def main(path):
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    with open(path) as f:
        jobs = json.load(f)
    failed = 0
    for job in jobs:
        try:
            run(job)
        except Exception as exc:  # one failing job must not hide the others: reported, exit status 1
            failed += 1
            os.makedirs(job["out"], exist_ok=True)
            with open(os.path.join(job["out"], "error.txt"), "w") as f:
                f.write(f"{type(exc).__name__}: {exc}\n")
    print(json.dumps({"jobs": len(jobs), "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
