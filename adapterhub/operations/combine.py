"""Combining stored adapter versions into a new version (``adapterhub combine``); the maths is in
:mod:`adapterhub.tuning.combine`, where method plugins find it too."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Iterable, Sequence

from ..errors import InvalidInput
from ..tuning.combine import HOWS, check_options  # noqa: F401  (HOWS: the choices, for the CLI)


# -- the registry operation ----------------------------------------------------------------------------------
def combine(
    reg: Any,
    refs: Sequence[str],
    name: str,
    *,
    how: str,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    rank: int | None = None,
    seed: int | None = None,
    aliases: Iterable[str] = (),
    plugins: Any = None,
    home: str | None = None,
):
    """Combine the adapter versions ``refs`` (one method, one base) into a new version of ``name``.

    The new version has a ``combined_from`` edge to each input with details ``{"weight", "how",
    "density", "rank", "seed"}``; its manifest records the same under ``combine``. Returns
    :class:`~adapterhub.registry.registry.Published` with ``extra["combine"]``.
    """
    from ..api import push
    from ..files.checkpoint import save_adapter
    from ..plugins import get_plugins
    from ..registry.refs import validate_alias, validate_name
    from ..registry.registry import ParentSpec
    from .stored import check_name_kind, common_base, load_version

    validate_name(name)
    aliases = [validate_alias(a) for a in aliases]
    opts = check_options(how, len(refs), weights, density, rank, seed)
    check_name_kind(reg, name, "adapter")
    plugins = plugins or get_plugins()
    tmp = tempfile.mkdtemp(prefix="adapterhub-combine-")
    try:
        loaded = [load_version(reg, ref, plugins, tmp) for ref in refs]
        infos = [i for i, _ in loaded]
        methods = {la.method.name for _, la in loaded}
        if len(methods) > 1:
            desc = ", ".join(f"{i.ref} ({la.method.name})" for i, la in loaded)
            raise InvalidInput(f"cannot combine adapters of different methods: {desc}")
        base = common_base(infos)
        method = loaded[0][1].method
        if "combine" not in method.capabilities():
            raise InvalidInput(f"method '{method.name}' cannot combine adapters")
        config, tensors = method.combine(
            [(la.config, la.tensors) for _, la in loaded],
            opts["weights"],
            how,
            density=opts["density"],
            rank=opts["rank"],
            seed=opts["seed"],
        )
        import dataclasses

        details = [
            {"weight": w, "how": how, "density": opts["density"], "rank": opts["rank"], "seed": opts["seed"]}
            for w in opts["weights"]
        ]
        record = {**opts, "inputs": [{"ref": i.ref, "digest": i.digest, **d} for i, d in zip(infos, details)]}
        manifest: dict[str, Any] = {"method": method.name, "config": dataclasses.asdict(config), "combine": record}
        if base:
            manifest["base"] = base
        task = {i.task for i in infos if i.task}
        if len(task) == 1:
            manifest["task"] = task.pop()
        out = os.path.join(tmp, "combined")
        save_adapter(out, manifest, tensors, peft_config=method.to_peft_config(config, (base or {}).get("name")))
        parents = [ParentSpec("combined_from", ref=i.ref, details=d) for i, d in zip(infos, details)]
        pub = push(reg, out, name, parents=parents, aliases=aliases, plugins=plugins, home=home)
        pub.extra["combine"] = record
        return pub
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
