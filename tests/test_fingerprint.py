"""Base-model fingerprints (adapterhub.files.fingerprint): layout independence, sensitivity, cache, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from adapterhub.errors import InvalidInput
from adapterhub.files.fingerprint import Fingerprint, find_weight_files, fingerprint


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((16, 8), dtype=np.float32),
        "layers.0.attn.q.weight": rng.standard_normal((8, 8), dtype=np.float32),
        "layers.0.attn.q.bias": rng.standard_normal((8,), dtype=np.float32),
        "layers.1.mlp.up.weight": rng.standard_normal((8, 4)).astype(np.float16),
        "lm_head.weight": rng.standard_normal((16, 8), dtype=np.float32),
        "position_ids": np.arange(12, dtype=np.int64).reshape(1, 12),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def _save_sharded(d, weights: dict, shards: list[list[str]], names=None, index=True, metadata=None):
    """Write ``weights`` split into ``shards`` (lists of tensor names), with an index if asked."""
    os.makedirs(d, exist_ok=True)
    wmap = {}
    for i, keys in enumerate(shards):
        fname = names[i] if names else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: weights[k] for k in keys}, os.path.join(d, fname), metadata=metadata)
        wmap.update({k: fname for k in keys})
    if index:
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": wmap}, f)
    return str(d)


def _write_raw(path, entries: dict[str, tuple[str, list[int], bytes]], header_extra=None):
    """Write a safetensors file by hand: name -> (dtype, shape, raw bytes)."""
    header, data, pos = {}, b"", 0
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(raw)]}
        data += raw
        pos += len(raw)
    header.update(header_extra or {})
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def _reference(files) -> str:
    """An independent computation of the definition, via safetensors.safe_open + numpy."""
    lines = []
    for path in files:
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                arr = f.get_tensor(name)
                dtype = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64"}[str(arr.dtype)]
                digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
                lines.append((name, f"{name}\t{dtype}\t{json.dumps(list(arr.shape))}\t{digest}\n"))
    return "sha256:" + hashlib.sha256("".join(line for _, line in sorted(lines)).encode()).hexdigest()


@pytest.fixture
def model(tmp_path):
    w = _weights()
    return _save_sharded(tmp_path / "single", w, [list(w)], names=["model.safetensors"], index=False)


def test_same_weights_same_fingerprint_whatever_the_layout(tmp_path, model):
    w = _weights()
    keys = list(w)
    ref = fingerprint(model)
    assert isinstance(ref, Fingerprint)
    assert ref.digest.startswith("sha256:") and len(ref.digest) == 71
    assert ref.tensors == len(w)
    assert ref.bytes == sum(a.nbytes for a in w.values())
    assert ref.to_dict() == {"fingerprint": ref.digest, "tensors": ref.tensors, "bytes": ref.bytes}
    assert ref.digest == _reference(find_weight_files(model))

    layouts = [
        _save_sharded(tmp_path / "sharded", w, [keys[:3], keys[3:5], keys[5:]]),
        _save_sharded(
            tmp_path / "renamed", w, [keys[::2], keys[1::2]], names=["b.safetensors", "a.safetensors"], index=False
        ),
        _save_sharded(
            tmp_path / "meta",
            w,
            [keys[::-1]],
            names=["x.safetensors"],
            index=False,
            metadata={"format": "pt", "note": "anything"},
        ),
        _save_sharded(tmp_path / "meta-sharded", w, [keys[4:], keys[:4]], metadata={"format": "np"}),
    ]
    for d in layouts:
        assert fingerprint(d) == ref, d
    assert fingerprint(layouts[0], workers=1) == fingerprint(layouts[0], workers=8) == ref


def test_any_change_gives_another_fingerprint(tmp_path, model):
    base = fingerprint(model).digest
    w = _weights()

    def variant(label, weights):
        return fingerprint(_save_sharded(tmp_path / label, weights, [list(weights)], index=False)).digest

    changed_value = dict(w, **{"lm_head.weight": w["lm_head.weight"].copy()})
    changed_value["lm_head.weight"][3, 5] = np.nextafter(changed_value["lm_head.weight"][3, 5], np.float32(9))
    same_bytes_other_dtype = dict(w, **{"embed.weight": w["embed.weight"].view(np.int32)})
    same_bytes_other_shape = dict(w, **{"embed.weight": w["embed.weight"].reshape(8, 16)})
    renamed = {("embed.weights" if k == "embed.weight" else k): v for k, v in w.items()}
    dropped = {k: v for k, v in w.items() if k != "empty"}
    digests = [
        variant("value", changed_value),
        variant("dtype", same_bytes_other_dtype),
        variant("shape", same_bytes_other_shape),
        variant("name", renamed),
        variant("dropped", dropped),
    ]
    assert len(set(digests + [base])) == len(digests) + 1


def test_matches_reference_on_sharded_transformers_model(tmp_path):
    import torch as torch
    import transformers as transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    m = transformers.LlamaForCausalLM(cfg)
    m.save_pretrained(tmp_path / "one")
    m.save_pretrained(tmp_path / "many", max_shard_size="8KB")
    many = find_weight_files(tmp_path / "many")
    assert len(many) > 2 and os.path.exists(tmp_path / "many" / "model.safetensors.index.json")
    fp = fingerprint(str(tmp_path / "many"))
    assert fp == fingerprint(str(tmp_path / "one"))
    assert fp.digest == _reference(many)
    assert fp.tensors == len(m.state_dict())


def test_cache_hit_miss_and_corruption(tmp_path, model):
    cache = tmp_path / "cache"
    first = fingerprint(model, cache_dir=str(cache))
    entries = sorted(cache.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".json"

    t0 = time.perf_counter()
    assert fingerprint(model, cache_dir=str(cache)) == first
    assert time.perf_counter() - t0 < 0.5  # the benchmark checks the real figure (< 50 ms)

    # the cache really is read: a recognisable edit of its lines shows up in the result
    doc = json.loads(entries[0].read_text())
    doc["lines"] = [line[:-65] + "0" * 64 + "\n" for line in doc["lines"]]
    entries[0].write_text(json.dumps(doc))
    forged = fingerprint(model, cache_dir=str(cache))
    assert forged != first and forged.tensors == first.tensors
    assert fingerprint(model) == first  # without the cache: the truth

    # a corrupt cache file is ignored and rewritten
    entries[0].write_text("{not json")
    assert fingerprint(model, cache_dir=str(cache)) == first
    assert json.loads(entries[0].read_text())["lines"]

    # new content with the same size and a new mtime: recomputed, not served from the cache
    path = find_weight_files(model)[0]
    w = _weights()
    w["embed.weight"][0, 0] += 1
    st = os.stat(path)
    save_file(w, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert os.path.getsize(path) == st.st_size
    changed = fingerprint(model, cache_dir=str(cache))
    assert changed != first and changed == fingerprint(model)
    assert fingerprint(model, cache_dir=str(cache)) == changed


def test_progress_reports_every_byte(tmp_path, model):
    seen = []
    fp = fingerprint(model, cache_dir=str(tmp_path / "c"), progress=seen.append)
    assert sum(seen) == fp.bytes
    seen.clear()
    fingerprint(model, cache_dir=str(tmp_path / "c"), progress=seen.append)  # cached: reported at once
    assert sum(seen) == fp.bytes


def test_find_weight_files(tmp_path):
    w = _weights()
    keys = list(w)
    d = _save_sharded(tmp_path / "m", w, [keys[:4], keys[4:]])
    save_file({"x": np.zeros(2, np.float32)}, os.path.join(d, "stray.safetensors"))  # not in the index
    assert [os.path.basename(f) for f in find_weight_files(d)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert all(os.path.isabs(f) for f in find_weight_files(d))
    os.remove(os.path.join(d, "model.safetensors.index.json"))
    assert len(find_weight_files(d)) == 3


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "no such directory"),
        ("file", "not a directory"),
        ("empty", "no weights found"),
        ("pickle", "pickle.*convert them to safetensors"),
        ("truncated", "truncated"),
        ("overclaim", "truncated"),
        ("tiny", "not a safetensors file"),
        ("missing-shard", "names shard 'model-00002-of-00002.safetensors' but it does not exist"),
        ("wrong-shard", "puts tensor 'b' in"),
        ("unlisted", "'c' in .* is not listed"),
        ("duplicate", "tensor 'a' is in both a.safetensors and b.safetensors"),
        ("bad-index", "not a valid index"),
        ("escape", "outside the model directory"),
        ("tab-name", "invalid tensor name"),
    ],
)
def test_bad_inputs(tmp_path, case, match):
    a = ("F32", [2], np.ones(2, np.float32).tobytes())
    b = ("F16", [1, 2], np.ones(2, np.float16).tobytes())
    d = tmp_path / case
    if case == "file":
        d.write_text("x")
    elif case != "missing":
        d.mkdir()
    index = d / "model.safetensors.index.json"
    if case == "pickle":
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04fake pickle")
        (d / "config.json").write_text("{}")
    elif case in ("truncated", "overclaim"):
        _write_raw(d / "model.safetensors", {"a": a, "b": b})
        data = (d / "model.safetensors").read_bytes()
        if case == "truncated":
            (d / "model.safetensors").write_bytes(data[:-3])
        else:  # the header says b ends past the end of the file
            _write_raw(d / "model.safetensors", {"a": a, "b": ("F16", [1, 4], b[2] * 2)})
            (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[: len(data)])
    elif case == "tiny":
        (d / "model.safetensors").write_bytes(b"\x01\x02")
    elif case in ("missing-shard", "wrong-shard", "unlisted"):
        _write_raw(d / "model-00001-of-00002.safetensors", {"a": a, **({"c": a} if case == "unlisted" else {})})
        wmap = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        if case != "missing-shard":
            _write_raw(d / "model-00002-of-00002.safetensors", {"b": b})
        if case == "wrong-shard":
            wmap["b"] = "model-00001-of-00002.safetensors"
        index.write_text(json.dumps({"weight_map": wmap}))
    elif case == "duplicate":
        _write_raw(d / "a.safetensors", {"a": a})
        _write_raw(d / "b.safetensors", {"a": a, "b": b})
    elif case == "bad-index":
        _write_raw(d / "model.safetensors", {"a": a})
        index.write_text('{"metadata": {}}')
    elif case == "tab-name":
        _write_raw(d / "model.safetensors", {"a\tF32": a})
    elif case == "escape":
        _write_raw(tmp_path / "outside.safetensors", {"a": a})
        index.write_text(json.dumps({"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(InvalidInput, match=match) as info:
        fingerprint(str(d))
    assert "\n" not in str(info.value)


def test_file_changed_while_hashing(model):
    path = find_weight_files(model)[0]

    def touch(_n):  # called mid-hash: the file gets a new mtime
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1_000_000_000))

    with pytest.raises(InvalidInput, match="changed while being fingerprinted"):
        fingerprint(model, workers=1, progress=touch)
