"""Typed results: ``Registry.show`` (and the server client's) returns a :class:`VersionInfo` whose ``to_dict()``
is the JSON ``show --json`` prints and the server sends; ``from_dict`` reads it back unchanged."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import make_base_dir, make_lora_dir


def test_a_version_with_lineage_evaluations_tags_and_a_base_round_trips(cli, home, tmp_path):
    from adapterhub.api import local_registry
    from adapterhub.registry.entities import VersionInfo

    assert cli("push", make_lora_dir(tmp_path / "a", seed=0), "acme/a", "--alias", "staging").exit_code == 0
    r = cli(
        "push",
        make_lora_dir(tmp_path / "b", seed=1),
        "acme/b",
        "--parent",
        "acme/a:1",
        "--tag",
        "team=nlp",
        "--base",
        make_base_dir(tmp_path / "base"),
    )
    assert r.exit_code == 0, r.output
    reg = local_registry(str(home))
    reg.add_evaluation("acme/b:1", "sha256:" + "ab" * 32, {"loss": 1.5}, {"rows": 3})
    shown = cli("show", "acme/b:1", "--json").json()
    typed = reg.show("acme/b:1")
    d = typed.to_dict()
    assert {k: v for k, v in d.items() if k != "manifest"} == {k: shown[k] for k in d if k != "manifest"}
    assert list(d) == [
        "name",
        "version",
        "ref",
        "digest",
        "kind",
        "method",
        "config",
        "base_fingerprint",
        "base",
        "task",
        "files",
        "size",
        "aliases",
        "tags",
        "parents",
        "children",
        "metrics",
        "evaluations",
        "data",
        "created_at",
        "created_by",
        "manifest",
    ]
    info = VersionInfo.from_dict(d)
    assert info == typed and info.to_dict() == d
    assert (info.parents[0].ref, info.parents[0].relation, info.parents[0].external) == (
        "acme/a:1",
        "trained_from",
        False,
    )
    assert info.evaluations[0].metrics == {"loss": 1.5} and info.tags == {"team": "nlp"}
    assert info.base is not None and (info.base.name, info.base.tensors) == ("tiny-llama", 9)
    assert info.base.fingerprint == info.base_fingerprint
    assert [f.path for f in info.files] == [f["path"] for f in d["files"]]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.ref = "acme/b:2"  # type: ignore[misc]
    parent = VersionInfo.from_dict(cli("show", "acme/a:1", "--json").json() | {"manifest": {}})
    assert parent.aliases == ("staging",) and parent.children[0].ref == "acme/b:1"


def test_scripts_get_typed_versions_from_the_package_root(cli, home, tmp_path):
    """``adapterhub.open_registry()`` (what the README's Python API shows) hands scripts the typed result."""
    import adapterhub
    from adapterhub.registry.entities import Edge, VersionInfo

    cli("push", make_lora_dir(tmp_path / "a", seed=0), "acme/a")
    cli("push", make_lora_dir(tmp_path / "b", seed=1), "acme/b", "--parent", "acme/a")
    info = adapterhub.open_registry(str(home)).show("acme/b")
    assert isinstance(info, VersionInfo) and info.ref == "acme/b:1" and info.method == "lora"
    assert info.parents == (
        Edge("acme/a:1", adapterhub.open_registry(str(home)).show("acme/a").digest, "trained_from", None, False),
    )


def test_from_dict_refuses_what_is_not_a_version():
    from adapterhub.registry.entities import VersionInfo

    with pytest.raises(KeyError):
        VersionInfo.from_dict({"name": "acme/x"})


def test_list_rows_are_typed_and_print_as_before(cli, home, tmp_path):
    """``Registry.list`` gives :class:`VersionSummary` rows: ``list --json`` is their ``to_dict()``, key for key
    in the order it always had, and ``from_dict`` (the server client's reader) gives the same rows back."""
    from adapterhub.api import local_registry
    from adapterhub.registry.entities import VersionSummary

    assert cli("push", make_lora_dir(tmp_path / "a", seed=0), "acme/a", "--alias", "staging").exit_code == 0
    assert cli("push", make_lora_dir(tmp_path / "b", seed=1), "acme/a").exit_code == 0
    reg = local_registry(str(home))
    reg.add_evaluation("acme/a:2", "sha256:" + "ab" * 32, {"loss": 1.5}, {"rows": 3})
    rows = reg.list("acme/a")
    assert all(isinstance(r, VersionSummary) for r in rows)
    assert [(r.ref, r.aliases, r.evaluation) for r in rows] == [
        ("acme/a:1", ["staging"], None),
        ("acme/a:2", [], {"loss": 1.5}),
    ]
    printed = cli("list", "acme/a", "--json").json()
    assert printed == [r.to_dict() for r in rows]
    assert list(printed[0]) == [
        "name",
        "version",
        "ref",
        "digest",
        "kind",
        "method",
        "size",
        "base_fingerprint",
        "aliases",
        "evaluation",
        "created_at",
    ]
    assert [VersionSummary.from_dict(d) for d in printed] == rows
