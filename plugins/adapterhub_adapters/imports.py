"""Reading a directory saved by the ``adapters`` library (``save_adapter``) as one of our adapters.

:func:`convert` maps its config and tensors onto ``bottleneck`` / ``compacter`` (bottleneck configs, with the
placement options), ``lora`` or ``ia3`` (``LoRAConfig`` / ``IA3Config``) and its sequence-classification head
onto ``modules_to_save``, and writes ``adapterhub.json`` + ``adapter_model.safetensors``. Whatever it cannot
map exactly is refused, naming each option or tensor; nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from adapterhub.errors import InvalidInput
from adapterhub.tuning import PEFT_PREFIX as PREFIX
from adapterhub.tuning import SEQ_CLS_HEADS

from . import layout as L


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{os.path.basename(path)} is not readable JSON: {exc}") from None


def _weights(files: dict[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in files:
            return files[n]
    return None


def convert(src: str, files: dict[str, str], out: str) -> dict[str, Any]:
    """Write the adapter of the ``adapters`` directory ``src`` (``files``: relative name -> readable path) into
    ``out`` as an adapter directory; returns its manifest."""
    from safetensors.torch import load_file, save_file

    meta = read_json(os.path.join(src, L.CONFIG))
    cfg = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(cfg, dict):
        raise InvalidInput(f"{L.CONFIG} in {src} has no 'config' object (not an adapters directory)")
    weights = _weights(files, L.WEIGHTS)
    if weights is None:
        raise InvalidInput(
            f"{src} has {L.CONFIG} but no adapter.safetensors (or pytorch_adapter.bin with --import-bin)"
        )
    architecture = cfg.get("architecture")
    if architecture not in (None, "lora"):
        raise InvalidInput(
            f"cannot import the adapters adapter in {src}: its architecture is "
            f"{L.ARCHITECTURES.get(architecture, repr(architecture))}, which adapterhub does not map "
            "(bottleneck adapters, Compacter, LoRA and IA3 are)"
        )
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{L.CONFIG} in {src} has no adapter 'name' (its tensors are named after it)")
    family = L.family_of(meta.get("model_type"))
    tensors = load_file(weights)
    head_tensors, head_values, notes = _head(src, files, meta, family, load_file)
    if architecture is None:
        if family is None:
            raise InvalidInput(
                f"cannot import the adapters bottleneck adapter in {src}: model_type "
                f"{meta.get('model_type')!r} is not one whose layers adapterhub maps "
                f"({', '.join(sorted(L.MODEL_TYPES))})"
            )
        method, values, ours = _bottleneck(cfg, meta, family, name, tensors)
    else:
        method, values, ours = _lora(cfg, name, tensors)
    values.update(head_values)
    ours.update(head_tensors)
    manifest = {
        "method": method,
        "config": values,
        "base": {"fingerprint": None, "name": meta.get("model_name")},
        "task": "seq-cls" if values.get("task_type") == "SEQ_CLS" else None,
        "imported": {
            "format": "adapters",
            "version": meta.get("version"),
            "name": name,
            "model_class": meta.get("model_class"),
            "config": cfg,
            **({"notes": notes} if notes else {}),
        },
    }
    save_file(
        {k: v.contiguous() for k, v in ours.items()},
        os.path.join(out, "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    with open(os.path.join(out, "adapterhub.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


# -- bottleneck / compacter ---------------------------------------------------------------------------------
def _refuse(src_what: str, problems: list[str]) -> None:
    if problems:
        raise InvalidInput(f"cannot import {src_what}: " + "; ".join(problems))


def _bottleneck(cfg: dict, meta: dict, family: L.Family, name: str, tensors: dict) -> tuple[str, dict, dict]:
    problems = []
    known = (
        set(L.PLACEMENT_KEYS)
        | set(L.PHM_KEYS)
        | set(L.BOTTLENECK_NEUTRAL)
        | L.IGNORED
        | {
            "mh_adapter",
            "output_adapter",
            "reduction_factor",
            "non_linearity",
            "init_weights",
            "scaling",
            "leave_out",
            "dropout",
            "phm_layer",
            "hypercomplex_nonlinearity",
        }
    )
    for key, neutral in L.BOTTLENECK_NEUTRAL.items():
        if key in cfg and cfg[key] != neutral and not (key == "stochastic_depth" and not cfg[key]):
            problems.append(f"{key}={cfg[key]!r} ({L.BOTTLENECK_WHY[key]})")
    problems += [f"{k}={cfg[k]!r} (an option adapterhub does not know)" for k in sorted(set(cfg) - known)]
    phm = bool(cfg.get("phm_layer"))
    values: dict[str, Any] = {k: cfg[k] for k in L.PLACEMENT_KEYS if k in cfg}
    values["leave_out"] = list(cfg.get("leave_out") or [])
    values["dropout"] = float(cfg.get("dropout") or 0.0)
    scaling = cfg.get("scaling", 1.0)
    if isinstance(scaling, str):
        problems.append(f"scaling={scaling!r} (a learned scaling)")
    else:
        values["scaling"] = scaling
    act = str(cfg.get("non_linearity", "")).lower()
    if act not in L.NON_LINEARITY:
        problems.append(
            f"non_linearity={cfg.get('non_linearity')!r} (adapterhub has {', '.join(sorted(L.NON_LINEARITY))})"
        )
    else:
        values["non_linearity"] = L.NON_LINEARITY[act]
    mh, out = bool(cfg.get("mh_adapter")), bool(cfg.get("output_adapter"))
    if not (mh or out):
        problems.append("neither mh_adapter nor output_adapter is set (no adapter location)")
    values["style"] = "pfeiffer" if out and not mh else "houlsby"
    if mh and not out:
        values["target_layers"] = family.placement.regex([family.placement.attention.projection])
    hidden = meta.get("hidden_size")
    rf = cfg.get("reduction_factor")
    if isinstance(rf, dict):
        problems.append(f"reduction_factor={rf!r} (a per-layer reduction factor)")
    elif not isinstance(hidden, int) or isinstance(rf, bool) or not isinstance(rf, (int, float)) or rf <= 0:
        problems.append(f"reduction_factor={rf!r} with hidden_size={hidden!r} (no bottleneck size follows)")
    else:
        size = max(1, int(hidden // rf))
        if float(rf).is_integer() and hidden // int(rf) == size:
            values["reduction_factor"] = int(rf)
        else:
            values["bottleneck_size"] = size
    init = cfg.get("init_weights", "bert")
    if phm:
        values.update({k: cfg[k] for k in L.PHM_KEYS if k in cfg})
        w_init = cfg.get("hypercomplex_nonlinearity", "glorot-uniform")
        if w_init in ("glorot-uniform", "glorot-normal", "normal"):
            values["phm_w_init"] = w_init
        if init != "bert":
            problems.append(f"init_weights={init!r} on PHM layers (adapters itself only supports 'bert' there)")
        values["init"] = "bert"
    elif init in ("bert", "mam_adapter", "houlsby"):
        values["init"] = init
    else:
        problems.append(f"init_weights={init!r}")
    _refuse(f"the adapters adapter '{name}'", problems)

    pattern = L.bottleneck_key(family, name)
    locations = family.locations()
    ours: dict[str, Any] = {}
    unknown = []
    for key, value in tensors.items():
        shared = re.fullmatch(r"(?:.*\.)?shared_parameters\." + re.escape(name) + r"\.(.+)", key)
        if shared:
            if shared.group(1) != "phm_rule":
                unknown.append(key)
            ours[PREFIX + "phm_rule"] = value
            continue
        m = pattern.fullmatch(key)
        param = L.adapter_param(m.group("param"), bool(values.get("ln_before"))) if m else "?"
        if param is None:  # ln_before's LayerNorm under the Sequential's name: the same tensor again
            continue
        if param == "?":
            unknown.append(key)
            continue
        ours[f"{PREFIX}{m.group('layer')}.{locations[m.group('loc')]}.adapter.{param}"] = value
    if unknown:
        raise InvalidInput(
            f"cannot import the adapters adapter '{name}': {len(unknown)} tensor(s) adapterhub does not "
            f"map, e.g. {unknown[0]}"
        )
    if not ours:
        raise InvalidInput(
            f"the adapters adapter '{name}' has no bottleneck tensors for a {family.placement.family}-like model"
        )
    if phm and values.get("shared_phm_rule", True) and PREFIX + "phm_rule" not in ours:
        raise InvalidInput(
            f"the adapters Compacter adapter '{name}' shares one PHM rule, but its directory lacks it "
            f"(shared_parameters.{name}.phm_rule; adapters 1.3 does not save it from a model without a "
            "head): save it from a model with a head, or use shared_phm_rule=False"
        )
    return ("compacter" if phm else "bottleneck"), values, ours


# -- LoRA / IA3 -----------------------------------------------------------------------------------------------
def _lora(cfg: dict, name: str, tensors: dict) -> tuple[str, dict, dict]:
    problems = []
    mode = cfg.get("composition_mode", "add")
    for key, neutral, why in (
        ("use_gating", False, "gated LoRA"),
        ("use_dora", False, "adapters' DoRA"),
        ("vera_d", None, "VeRA"),
        ("vera_b", None, "VeRA"),
    ):
        if cfg.get(key, neutral) != neutral:
            problems.append(f"{key}={cfg[key]!r} ({why})")
    if mode not in ("add", "scale"):
        problems.append(f"composition_mode={mode!r}")
    r, alpha = cfg.get("r", 8), cfg.get("alpha", 8)
    _refuse(f"the adapters LoRA adapter '{name}'", problems)
    pattern = re.compile(r"(?P<path>.+)\.loras\." + re.escape(name) + r"\.(?P<param>lora_A|lora_B)")
    paths: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        m = pattern.fullmatch(key)
        if m is None:
            raise InvalidInput(
                f"cannot import the adapters LoRA adapter '{name}': tensor {key} is not a LoRA factor "
                "of a single Linear (merged or shared LoRA layers are not mapped)"
            )
        paths.setdefault(m.group("path"), {})[m.group("param")] = value
    targets = sorted(paths)
    ours: dict[str, Any] = {}
    if mode == "scale":  # IA3: the output scaled by lora_B * alpha / r (r = 1)
        factor = alpha / r
        for path, t in paths.items():
            if "lora_B" not in t:
                raise InvalidInput(f"the adapters IA3 adapter '{name}' has no lora_B for {path}")
            ours[f"{PREFIX}{path}.ia3_l"] = (t["lora_B"].reshape(-1, 1) * factor).float()
        values = {"target_modules": targets, "feedforward_modules": [], "init_ia3_weights": True}
        return "ia3", values, ours
    for path, t in paths.items():
        if set(t) != {"lora_A", "lora_B"}:
            raise InvalidInput(
                f"the adapters LoRA adapter '{name}' lacks {({'lora_A', 'lora_B'} - set(t)).pop()} for {path}"
            )
        ours[f"{PREFIX}{path}.lora_A.weight"] = t["lora_A"]
        ours[f"{PREFIX}{path}.lora_B.weight"] = t["lora_B"]
    values = {"r": r, "lora_alpha": alpha, "lora_dropout": float(cfg.get("dropout") or 0.0), "target_modules": targets}
    return "lora", values, ours


#: a sequence-classification head: trained and saved as PEFT's SEQ_CLS does (the effective config's names)
SEQ_CLS = {"task_type": "SEQ_CLS", "modules_to_save": list(SEQ_CLS_HEADS)}


# -- the prediction head ---------------------------------------------------------------------------------------
def _head(src: str, files: dict[str, str], meta: dict, family: L.Family | None, load_file) -> tuple[dict, dict, list]:
    """``(tensors, config values, notes)`` for the saved head: a sequence-classification head becomes the
    trained ``modules_to_save`` copy of ``SEQ_CLS`` (static: ``classifier`` / ``score``; a flex classification
    head on a BERT-like model: the pooler and the classifier)."""
    weights = _weights(files, L.HEAD_WEIGHTS)
    if weights is None:
        return {}, {}, []
    head_meta = read_json(os.path.join(src, L.HEAD_CONFIG)) if L.HEAD_CONFIG in files else {}
    head = head_meta.get("config") if isinstance(head_meta, dict) else None
    tensors = load_file(weights)
    model_class = str(meta.get("model_class") or "")
    if head is None:  # a static head: the model class's own
        if not model_class.endswith("ForSequenceClassification"):
            return (
                {},
                {},
                [
                    f"the static head of {model_class or 'the model'} ({', '.join(sorted(tensors))}) is the "
                    "base model's own and was not imported"
                ],
            )
        bad = [k for k in tensors if not k.startswith(("classifier.", "score."))]
        if bad:
            raise InvalidInput(f"cannot import the head of {src}: {bad[0]} is not a classifier/score tensor")
        return {PREFIX + k: v for k, v in tensors.items()}, dict(SEQ_CLS), []
    kind = head.get("head_type")
    layers, act, pooler = head.get("layers"), head.get("activation_function"), head.get("use_pooler")
    if kind == "classification" and family is not None and family.placement.family == "bert":
        stem = re.compile(r"(?:.*\.)?heads\.[^.]+\.(\d+)\.(weight|bias)")
        idx = {}
        for k, v in tensors.items():
            m = stem.fullmatch(k)
            if m is None:
                raise InvalidInput(f"cannot import the head of {src}: unexpected head tensor {k}")
            idx[(int(m.group(1)), m.group(2))] = v
        bert = _bert_prefix(meta)
        if layers == 2 and act == "tanh" and not pooler:
            mapped = {f"{bert}pooler.dense.{p}": idx[(1, p)] for p in ("weight", "bias")}
            mapped.update({f"classifier.{p}": idx[(4, p)] for p in ("weight", "bias") if (4, p) in idx})
            return (
                {PREFIX + k: v for k, v in mapped.items()},
                {**SEQ_CLS, "modules_to_save": ["pooler", *SEQ_CLS["modules_to_save"]]},
                [],
            )
        if layers == 1 and pooler:
            mapped = {f"classifier.{p}": idx[(1, p)] for p in ("weight", "bias") if (1, p) in idx}
            return {PREFIX + k: v for k, v in mapped.items()}, dict(SEQ_CLS), []
    raise InvalidInput(
        f"cannot import the prediction head of {src}: {kind!r} head with layers={layers!r}, "
        f"activation_function={act!r}, use_pooler={pooler!r} has no equivalent in a transformers "
        "sequence-classification model (adapterhub maps static heads and, on BERT-like models, "
        "classification heads with layers=2 + tanh or layers=1 + use_pooler)"
    )


def _bert_prefix(meta: dict) -> str:
    """The base model's attribute in a BERT-like head model: ``bert.``, ``roberta.`` ... (model_type)."""
    return {"xlm-roberta": "roberta"}.get(meta.get("model_type"), meta.get("model_type") or "bert") + "."
