"""Writing one of our adapters as a directory the ``adapters`` library loads: bottleneck, Compacter, LoRA, (IA)³.

``adapterhub export REF --format adapters --out DIR`` writes ``adapter_config.json`` (a full ``BnConfig`` or
``LoRAConfig``),
``adapter.safetensors`` under adapters' weight names and, for a ``SEQ_CLS`` adapter, the static head
(``head_config.json`` + ``model_head.safetensors``). Load it with
``model.load_adapter(DIR, use_safetensors=True)`` (adapterhub never writes pickles).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from adapterhub.errors import AdapterhubError, InvalidInput
from adapterhub.tuning import PEFT_PREFIX as PREFIX
from adapterhub.tuning import adapter_width

from . import layout as L

#: adapters' class-name stem per family, for the head's ``model_class`` (``BertForSequenceClassification``)
CLASS_STEMS = {"bert": "Bert", "llama": "Llama", "gpt2": "GPT2"}


def adapters_name(ref_name: str) -> str:
    """The adapter name inside adapters' weight names: the last part of the registry name, as an identifier."""
    stem = ref_name.rstrip("/").split("/")[-1].split(":")[0].split("@")[0]
    return re.sub(r"[^A-Za-z0-9_]", "_", stem) or "adapter"


def _family_of(paths: list[str]) -> tuple[L.Family, dict[str, tuple[str, str]]]:
    """The family whose projections the adapted paths are, and ``path -> (layer, adapters location)``."""
    for family in L.FAMILIES.values():
        back = {proj: loc for loc, proj in family.locations().items()}
        found = {}
        for path in paths:
            m = re.fullmatch(r"((?:.*\.)?\d+)\.(" + "|".join(re.escape(p) for p in back) + ")", path)
            if m is None:
                break
            found[path] = (m.group(1), back[m.group(2)])
        else:
            return family, found
    raise InvalidInput(
        f"the adapter's modules ({paths[0]} ...) are not a BERT-, Llama- or GPT-2-like model's output "
        "projections, where the adapters library puts bottleneck adapters"
    )


def bn_config(config: Any, hidden: int, locations: set[str], family: L.Family) -> dict[str, Any]:
    """The full ``BnConfig`` dict equal to ``config`` (adapters' ``from_dict`` of an architecture-less config)."""
    compacter = hasattr(config, "phm_dim")
    b = config.bottleneck_for(hidden)
    rf = hidden / b
    while int(hidden // rf) != b:  # float floor division must give the bottleneck back
        rf = math.nextafter(rf, 0.0)
    rf = int(rf) if float(rf).is_integer() else rf
    if not config.residual:
        raise InvalidInput(
            "residual=false has no equivalent in the adapters library (its adapters always add their residual)"
        )
    out = {
        "mh_adapter": family.attention_layer in locations,
        "output_adapter": family.ffn_layer in locations,
        "reduction_factor": rf,
        "non_linearity": config.non_linearity,
        "original_ln_before": config.original_ln_before,
        "original_ln_after": config.original_ln_after,
        "ln_before": config.ln_before,
        "ln_after": config.ln_after,
        "init_weights": config.init if config.init in ("bert", "mam_adapter", "houlsby") else "bert",
        "init_weights_seed": None,
        "is_parallel": config.is_parallel,
        "scaling": float(config.scaling),
        "use_gating": False,
        "residual_before_ln": config.residual_before_ln,
        "adapter_residual_before_ln": config.adapter_residual_before_ln,
        "inv_adapter": None,
        "inv_adapter_reduction_factor": None,
        "cross_adapter": False,
        "leave_out": list(config.leave_out),
        "dropout": float(config.dropout),
        "phm_layer": compacter,
        "phm_dim": 4,
        "factorized_phm_W": True,
        "shared_W_phm": False,
        "shared_phm_rule": True,
        "factorized_phm_rule": False,
        "phm_c_init": "normal",
        "phm_init_range": 0.0001,
        "learn_phm": True,
        "hypercomplex_nonlinearity": "glorot-uniform",
        "phm_rank": 1,
        "phm_bias": True,
        "stochastic_depth": 0.0,
    }
    if compacter:
        out.update({k: getattr(config, k) for k in L.PHM_KEYS})
        out["hypercomplex_nonlinearity"] = config.phm_w_init
        out["init_weights"] = "bert"
    return out


def export(loaded: Any, ref_name: str, tmp: str, base_name: str | None) -> dict[str, Any]:
    """Write ``loaded`` (a :class:`~adapterhub.files.checkpoint.LoadedAdapter`) into the directory ``tmp``."""
    from safetensors.torch import save_file

    method = loaded.method.name
    name = adapters_name(ref_name)
    tensors = {k: loaded.tensors[k] for k in loaded.tensors}
    if method in ("bottleneck", "compacter"):
        ours, cfg, family, hidden, head = _bottleneck(loaded.config, name, tensors)
    elif method in ("lora", "ia3"):
        ours, cfg, family, hidden, head = _lora(method, loaded.config, name, tensors)
    else:
        raise AdapterhubError(
            f"method '{method}' cannot be exported in the adapters library's format (bottleneck, "
            "compacter, lora and ia3 can; use --format peft for the other PEFT methods)"
        )
    stem = CLASS_STEMS[family.placement.family]
    seq_cls = loaded.config.task_type == "SEQ_CLS"
    model_class = f"{stem}ForSequenceClassification" if seq_cls else f"{stem}Model"
    meta = {
        "config": cfg,
        "hidden_size": hidden,
        "model_class": model_class,
        "model_name": base_name,
        "model_type": family.placement.family,
        "name": name,
        "version": f"adapters.{L.LIBRARY_VERSION}",
    }
    save_file({k: v.contiguous() for k, v in ours.items()}, os.path.join(tmp, L.SAFE_WEIGHTS))
    _write_json(os.path.join(tmp, L.CONFIG), meta)
    if head:
        if not seq_cls:
            raise InvalidInput(
                f"the adapter saves modules ({', '.join(sorted(head)[:3])}) that the adapters library "
                "has no place for outside a sequence-classification head"
            )
        classifier = head.get("classifier.weight", head.get("score.weight"))
        save_file({k: v.contiguous() for k, v in head.items()}, os.path.join(tmp, L.SAFE_HEAD))
        labels = classifier.shape[0] if classifier is not None else None
        _write_json(
            os.path.join(tmp, L.HEAD_CONFIG),
            {
                "config": None,
                "hidden_size": hidden,
                "label2id": {f"LABEL_{i}": i for i in range(labels or 0)},
                "model_class": model_class,
                "model_name": base_name,
                "model_type": family.placement.family,
                "name": None,
                "num_labels": labels,
                "version": f"adapters.{L.LIBRARY_VERSION}",
            },
        )
    return {"name": name, "model_class": model_class, "tensors": len(ours), "head_tensors": len(head)}


def _bottleneck(config: Any, name: str, tensors: dict[str, Any]) -> tuple[dict, dict, L.Family, int, dict]:
    """adapters' weights and ``BnConfig`` for a bottleneck / Compacter adapter; the rest is the head."""
    marker = ".adapter."
    paths = sorted({k[len(PREFIX) :].split(marker)[0] for k in tensors if marker in k})
    family, where = _family_of(paths)
    ours: dict[str, Any] = {}
    head: dict[str, Any] = {}
    phm = hasattr(config, "phm_dim")
    for key, value in tensors.items():
        if key == PREFIX + "phm_rule":
            layer = where[paths[0]][0]
            base = layer[: -len(re.search(r"\d+$", layer).group(0))]  # "bert.encoder.layer."
            base = base[: -len(family.container + ".")] if base.endswith(family.container + ".") else ""
            ours[f"{base}shared_parameters.{name}.phm_rule"] = value
        elif marker in key:
            path, param = key[len(PREFIX) :].split(marker)
            layer, loc = where[path]
            ours[f"{layer}.{loc}.adapters.{name}.{L.ours_to_adapters_param(param, config.ln_before, phm)}"] = value
            if config.ln_before and param.startswith("norm_before."):  # adapters keeps it in the Sequential too
                ours[f"{layer}.{loc}.adapters.{name}.adapter_down.0.{param.split('.', 1)[1]}"] = value.clone()
        else:
            head[key[len(PREFIX) :]] = value
    _check_every_layer(config, family, where)
    first = f"{PREFIX}{paths[0]}{marker}"
    hidden = adapter_width(
        {k[len(first) :]: v for k, v in tensors.items() if k.startswith(first)}, config.phm_dim if phm else 1
    )
    return ours, bn_config(config, hidden, {loc for _, loc in where.values()}, family), family, hidden, head


def _check_every_layer(config: Any, family: L.Family, where: dict[str, tuple[str, str]]) -> None:
    """adapters puts an adapter at each of its locations in every layer not in ``leave_out`` (newly initialised,
    not the identity, where the directory has none): refuse an adapter that skips layers another way."""
    p = family.placement
    standard = {p.regex([p.attention.projection]), p.regex([p.ffn.projection]), p.pattern("houlsby")}
    if isinstance(config.target_layers, str) and config.target_layers not in standard:
        raise InvalidInput(
            f"cannot export this adapter in the adapters library's format: target_layers "
            f"{config.target_layers!r} is not one of its locations (it adapts every layer not in "
            "leave_out at the attention and/or FFN output)"
        )
    at: dict[int, set[str]] = {}
    for layer, loc in where.values():
        at.setdefault(int(re.search(r"(\d+)$", layer).group(1)), set()).add(loc)
    locations = set().union(*at.values())
    for i in range(max(at) + 1):
        if i in config.leave_out:
            continue
        if at.get(i) != locations:
            raise InvalidInput(
                f"cannot export this adapter in the adapters library's format: layer {i} lacks an "
                f"adapter at {sorted(locations - at.get(i, set()))[0]} (adapters adapts every layer "
                "not in leave_out the same way)"
            )


def _lora(method: str, config: Any, name: str, tensors: dict[str, Any]) -> tuple[dict, dict, L.Family, Any, dict]:
    """adapters' weights and ``LoRAConfig`` / ``IA3Config`` for a LoRA or (IA)³ adapter on the modules the
    adapters library can adapt (every layer's q/k/v, intermediate, output)."""
    suffixes = (".lora_A.weight", ".lora_B.weight") if method == "lora" else (".ia3_l",)
    adapted: dict[str, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    for key, value in tensors.items():
        end = next((s for s in suffixes if key.endswith(s)), None)
        if end is None:
            head[key[len(PREFIX) :]] = value
        else:
            adapted.setdefault(key[len(PREFIX) : -len(end)], {})[end] = value
    problems = []
    if method == "lora":
        for field_, neutral in (
            ("use_dora", False),
            ("use_rslora", False),
            ("rank_pattern", {}),
            ("alpha_pattern", {}),
        ):
            if getattr(config, field_) != neutral:
                problems.append(f"{field_}={getattr(config, field_)!r}")
    elif config.feedforward_modules:
        problems.append(f"feedforward_modules={config.feedforward_modules!r} (adapters' IA3 scales outputs only)")
    family, roles = None, {}
    for fam in L.FAMILIES.values():
        back = {module: role for role, module in fam.lora_modules.items()}
        found = {}
        for path in adapted:
            m = (
                re.fullmatch(r"((?:.*\.)?(\d+))\.(" + "|".join(re.escape(x) for x in back) + ")", path)
                if back
                else None
            )
            if m is None:
                break
            found[path] = (int(m.group(2)), back[m.group(3)])
        else:
            family, roles = fam, found
            break
    if family is None:
        problems.append(
            f"modules such as '{sorted(adapted)[0]}' that the adapters library's {method} does not adapt "
            "(it adapts the attention's q/k/v and the FFN's intermediate and output projections of "
            "BERT- and Llama-like models)"
        )
    if problems:
        raise InvalidInput(
            f"cannot export this {method} adapter in the adapters library's format: " + "; ".join(problems)
        )
    layers = {i for i, _ in roles.values()}
    used = {r for _, r in roles.values()}
    missing = [f"layer {i} {r}" for i in sorted(layers) for r in sorted(used) if (i, r) not in set(roles.values())]
    if missing:
        raise InvalidInput(
            f"cannot export this {method} adapter in the adapters library's format: it adapts the same "
            f"modules in every layer it touches; {missing[0]} is not adapted"
        )
    ours: dict[str, Any] = {}
    hidden = None
    for path, t in adapted.items():
        if method == "lora":
            ours[f"{path}.loras.{name}.lora_A"] = t[".lora_A.weight"]
            ours[f"{path}.loras.{name}.lora_B"] = t[".lora_B.weight"]
            if roles[path][1] in ("q", "k", "v"):
                hidden = t[".lora_A.weight"].shape[1]
        else:
            ours[f"{path}.loras.{name}.lora_B"] = t[".ia3_l"].reshape(-1, 1)
    attn = sorted(r for r in used if r in ("q", "k", "v"))
    cfg = {
        "architecture": "lora",
        "selfattn_lora": bool(attn),
        "intermediate_lora": "intermediate" in used,
        "output_lora": "output" in used,
        "leave_out": sorted(set(range(max(layers) + 1)) - layers),
        "attn_matrices": attn,
        "init_weights_seed": None,
        "use_gating": False,
        "use_dora": False,
        "vera_d": None,
        "vera_b": None,
        "dtype": None,
    }
    if method == "lora":
        cfg.update(
            {
                "r": config.r,
                "alpha": config.lora_alpha,
                "dropout": float(config.lora_dropout),
                "composition_mode": "add",
                "init_weights": "lora",
            }
        )
    else:
        cfg.update({"r": 1, "alpha": 1, "dropout": 0.0, "composition_mode": "scale", "init_weights": "ia3"})
    return ours, cfg, family, hidden, head


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
