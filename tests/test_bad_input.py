"""Bad input: each gets one clear 'Error:' line, exit code 1 or 2, no traceback, and nothing written."""

import json
import os
import pickle
import struct
import subprocess
import sys

import pytest
from conftest import assert_clean_error, make_base_dir, make_lora_dir, run_subprocess


def registry_is_empty(home):
    """No version, no blob and no temp file was left behind."""
    blobs = home / "blobs"
    tmp = home / "tmp"
    leftover = [p for d in (blobs, tmp) if d.exists() for p in d.rglob("*") if p.is_file()]
    if not (home / "registry.db").exists():
        return not leftover
    from adapterhub.api import open_registry

    return not leftover and open_registry(str(home)).list() == []


def test_nonexistent_and_empty_src(cli, home, tmp_path):
    assert_clean_error(cli("push", tmp_path / "nope", "acme/bot"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_clean_error(cli("push", tmp_path / "empty", "acme/bot"), "is empty")
    (tmp_path / "f.txt").write_text("x")
    assert_clean_error(cli("push", tmp_path / "f.txt", "acme/bot"), "not a directory")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    assert_clean_error(cli("push", tmp_path / "junk", "acme/bot"), "not an adapter directory")
    assert registry_is_empty(home)


def test_truncated_safetensors(cli, home, tmp_path):
    src = make_lora_dir(tmp_path / "a")
    f = os.path.join(src, "adapter_model.safetensors")
    data = open(f, "rb").read()
    open(f, "wb").write(data[:-10])
    assert_clean_error(cli("push", src, "acme/bot"), "adapter_model.safetensors", "truncated")
    open(f, "wb").write(data[:5])
    assert_clean_error(cli("push", src, "acme/bot"), "adapter_model.safetensors", "truncated")
    assert registry_is_empty(home)


def test_header_claims_more_bytes_than_file(cli, home, tmp_path):
    src = make_lora_dir(tmp_path / "a")
    f = os.path.join(src, "adapter_model.safetensors")
    data = bytearray(open(f, "rb").read())
    data[:8] = struct.pack("<Q", len(data) * 10)
    open(f, "wb").write(bytes(data))
    assert_clean_error(cli("push", src, "acme/bot"), "adapter_model.safetensors", "claims")
    assert registry_is_empty(home)


def test_corrupt_header_json_and_bad_offsets(cli, home, tmp_path):
    src = make_lora_dir(tmp_path / "a")
    f = os.path.join(src, "adapter_model.safetensors")
    data = bytearray(open(f, "rb").read())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    good = bytes(data)
    data[8] = ord("!")
    open(f, "wb").write(bytes(data))
    assert_clean_error(cli("push", src, "acme/bot"), "not valid JSON")
    # a tensor whose byte range does not fit its shape
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [999, 999]
    blob = json.dumps(header).encode()
    open(f, "wb").write(struct.pack("<Q", len(blob)) + blob + good[8 + n :])
    assert_clean_error(cli("push", src, "acme/bot"), name)
    assert registry_is_empty(home)


def test_pickle_refused_and_explicit_import(cli, home, tmp_path):
    import torch

    src = tmp_path / "bin"
    make_lora_dir(src)
    from safetensors.torch import load_file

    tensors = load_file(str(src / "adapter_model.safetensors"))
    os.remove(src / "adapter_model.safetensors")
    torch.save(tensors, src / "adapter_model.bin")
    assert_clean_error(cli("push", src, "acme/bot"), "adapter_model.bin", "pickle", "--import-bin")
    assert registry_is_empty(home)
    r = cli("push", src, "acme/bot", "--import-bin", "--json")
    assert r.exit_code == 0, r.output
    files = {f["path"] for f in cli("show", "acme/bot", "--json").json()["files"]}
    assert "adapter_model.safetensors" in files and "adapter_model.bin" not in files
    cli("pull", "acme/bot", "--out", tmp_path / "out")
    back = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert os.path.exists(src / "adapter_model.bin")  # the user's files are untouched


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/adapterhub-pwned",))


def test_malicious_pickle_is_refused_even_with_import_bin(cli, home, tmp_path):
    src = tmp_path / "evil"
    make_lora_dir(src)
    os.remove(src / "adapter_model.safetensors")
    with open(src / "adapter_model.bin", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    if os.path.exists("/tmp/adapterhub-pwned"):
        os.remove("/tmp/adapterhub-pwned")
    assert_clean_error(cli("push", src, "acme/bot", "--import-bin"), "weights_only")
    assert not os.path.exists("/tmp/adapterhub-pwned")
    assert registry_is_empty(home)


@pytest.mark.parametrize("name", ["../x", "A/B", "''", "acme/" + "x" * 80, "acme", "acme/bot/x", "acme/.."])
def test_invalid_names(cli, home, tmp_path, name):
    src = make_lora_dir(tmp_path / "a")
    assert_clean_error(cli("push", src, "" if name == "''" else name), "invalid name")
    assert registry_is_empty(home)


@pytest.mark.parametrize(
    "ref,msg",
    [
        ("acme/bot:7", "no version 7"),
        ("acme/bot@staging", "no alias 'staging'"),
        ("acme/nope", "no adapter named 'acme/nope'"),
        ("sha256:" + "0" * 64, "no version with digest"),
        ("acme/bot:zero", "invalid ref"),
        ("../../etc", "invalid ref"),
        ("sha256:12", "invalid digest"),
    ],
)
def test_unknown_and_invalid_refs(cli, tmp_path, ref, msg):
    cli("push", make_lora_dir(tmp_path / "a"), "acme/bot")
    for cmd in (("show", ref), ("pull", ref, "--out", tmp_path / "o"), ("lineage", ref)):
        assert_clean_error(cli(*cmd), msg)
    assert not (tmp_path / "o").exists()


def test_base_mismatch_names_both_fingerprints(cli, home, tmp_path):
    base = make_base_dir(tmp_path / "base", seed=1)
    other = make_base_dir(tmp_path / "other", seed=2)
    src = make_lora_dir(tmp_path / "a")
    r = cli("push", src, "acme/bot", "--base", base, "--json")
    fp = r.json()["base_fingerprint"]
    # an adapterhub.json recording the base it was trained on
    native = tmp_path / "native"
    make_lora_dir(native)
    (native / "adapterhub.json").write_text(
        json.dumps({"method": "lora", "config": {"r": 4}, "base": {"fingerprint": fp, "name": "tiny"}})
    )
    other_fp = cli("fingerprint", other).stdout.strip()
    r = cli("push", native, "acme/native", "--base", other)
    assert_clean_error(r, fp, other_fp, "tiny")
    assert cli("list", "--json").json()[0]["ref"] == "acme/bot:1" and len(cli("list", "--json").json()) == 1
    assert cli("push", native, "acme/native", "--base", base).exit_code == 0


def test_unsafe_paths_in_a_registry_are_refused_on_pull(cli, home, tmp_path):
    """A registry (e.g. a tampered remote) with a file path escaping the out dir never writes outside."""
    import sqlalchemy as sa

    cli("push", make_lora_dir(tmp_path / "a"), "acme/bot")
    from adapterhub.api import open_registry

    reg = open_registry(str(home))
    with reg.write() as conn:
        conn.execute(sa.text("UPDATE files SET path = '../../escape.txt' WHERE path = 'adapter_config.json'"))
    assert_clean_error(
        cli("pull", "acme/bot", "--out", tmp_path / "deep" / "out"), "../../escape.txt"
    )  # edited behind its back: refused
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "deep" / "out").exists()


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def _umount(path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_registry_directory_read_only(tmp_path):
    src = make_lora_dir(tmp_path / "a")
    home = tmp_path / "ro"
    mounted = _mount_tmpfs(home, "16m")
    try:
        env = {"ADAPTERHUB_HOME": str(home)}
        assert run_subprocess("push", src, "acme/bot", env=env).exit_code == 0
        before = run_subprocess("list", "--json", env=env).stdout
        if mounted:
            assert subprocess.run(["mount", "-o", "remount,ro", str(home)]).returncode == 0
        else:
            for root, dirs, files in os.walk(home):
                for n in dirs + files:
                    os.chmod(os.path.join(root, n), 0o555 if n in dirs else 0o444)
            os.chmod(home, 0o555)
        src2 = make_lora_dir(tmp_path / "b", seed=9)
        r = run_subprocess("push", src2, "acme/bot", env=env)
        assert_clean_error(r)
        assert "not writable" in r.output
        # reading a read-only registry still works
        assert run_subprocess("list", "--json", env=env).stdout == before
        assert run_subprocess("pull", "acme/bot", "--out", tmp_path / "ro-out", env=env).exit_code == 0
        assert_clean_error(run_subprocess("alias", "set", "acme/bot", "prod", "1", env=env), "not writable")
        if mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(home)])
        else:
            os.chmod(home, 0o755)
        assert run_subprocess("list", "--json", env=env).stdout == before
    finally:
        if mounted:
            _umount(home)


def test_disk_full_during_push(tmp_path):
    """A real full disk (a 1 MB tmpfs as root; a file-size limit otherwise): clear error, no version,
    no partial blob or temp file; after freeing space the same push succeeds."""
    import numpy as np
    from safetensors.numpy import save_file

    src = make_lora_dir(tmp_path / "a")
    save_file(
        {"big": np.random.default_rng(0).standard_normal((600_000,)).astype(np.float32)},
        os.path.join(src, "extra.safetensors"),
    )  # 2.4 MB: does not fit
    home = tmp_path / "small"
    mounted = _mount_tmpfs(home, "1m")
    env = {"ADAPTERHUB_HOME": str(home)}
    try:
        if mounted:
            r = run_subprocess("push", src, "acme/bot", env=env)
        else:
            code = (
                "import resource, signal, sys\n"
                "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
                "from adapterhub.cli import main\nmain(sys.argv[1:])\n"
            )
            p = subprocess.run(
                [sys.executable, "-c", code, "push", src, "acme/bot"],
                capture_output=True,
                text=True,
                env={**os.environ, **env},
            )
            from conftest import Result

            r = Result(p.returncode, p.stdout, p.stderr)
        assert_clean_error(r, "space")
        assert registry_is_empty(home) or not [p for p in (home / "tmp").glob("*")]
        assert run_subprocess("list", "--json", env=env).stdout.strip() in ("[]", "")
        assert not list((home / "tmp").glob("*")) if (home / "tmp").exists() else True
    finally:
        if mounted:
            _umount(home)
    os.remove(os.path.join(src, "extra.safetensors"))
    r = run_subprocess("push", src, "acme/bot", "--json", env={"ADAPTERHUB_HOME": str(tmp_path / "big")})
    assert r.exit_code == 0, r.output
