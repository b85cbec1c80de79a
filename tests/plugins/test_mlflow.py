"""The MLflow tracker plugin against a real MLflow: a SQLite-backed store in-process, and a real
``mlflow server`` process on 127.0.0.1 (started once per module; the kill test starts its own).

Everything is read back through ``MlflowClient``: params, metric histories, artifact files, tags, the
registered model version, its source and aliases, and compared with what the registry says."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/
from conftest import assert_clean_error, make_lora_dir  # noqa: E402
from mlflowserver import MlflowServer, _free_port  # noqa: E402
from tinymodels import save_tiny_llama_base  # noqa: E402

MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "ADAPTERHUB_TRACKER",
    "ADAPTERHUB_MLFLOW_ARTIFACT_ROOT",
    "ADAPTERHUB_MLFLOW_RETRIES",
    "ADAPTERHUB_MLFLOW_TIMEOUT",
)


# -- a real MLflow tracking server (tests/mlflowserver.py) -------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    return save_tiny_llama_base(tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture
def mlflow_env(monkeypatch, home):
    """No MLflow setting of the developer's (or of another test) leaks in."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _rows(n=24):
    rows = []
    for i in range(n):
        if i % 2:
            rows.append({"prompt": "question what color is the sky answer", "completion": "blue"})
        else:
            rows.append({"text": "the cat sat on the mat and it was very happy"})
    return rows


def _train(cli, tmp_path, base, push="acme/tiny", *extra):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return cli(
        "train",
        "--base",
        base,
        "--method",
        "lora",
        "--task",
        "causal-lm",
        "--data",
        data,
        "--out",
        tmp_path / "adapter",
        "--set",
        "r=4",
        "--set",
        "target_modules=q_proj,v_proj",
        "--max-steps",
        "6",
        "--lr",
        "1e-2",
        "--batch-size",
        "4",
        "--push",
        push,
        "--track",
        "mlflow",
        "--json",
        *extra,
    )


def _check_run(client, cli, ref, base, tmp):
    """The run that trained ``ref`` holds its params, metric history, adapter files and registry tags."""
    show = cli("show", ref, "--json")
    assert show.exit_code == 0, show.output
    v = show.json()
    tracking = v["tracking"]
    assert tracking["tracker"] == "mlflow" and tracking["run_id"]
    run = client.get_run(tracking["run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["method"] == "lora" and p["task"] == "causal-lm"
    assert p["base_fingerprint"] == v["base_fingerprint"]
    assert p["config.r"] == "4" and json.loads(p["config.target_modules"]) == ["q_proj", "v_proj"]
    assert p["data.train"] == v["data"][0]["digest"] and p["train.max_steps"] == "6"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert len(losses) >= 2 and sorted(m.step for m in losses) == [m.step for m in sorted(losses, key=lambda m: m.step)]
    assert len({m.step for m in losses}) == len(losses)
    assert client.get_metric_history(run.info.run_id, "learning_rate")
    t = run.data.tags
    assert t["adapterhub.ref"] == v["ref"] and t["adapterhub.digest"] == v["digest"]
    assert t["adapterhub.method"] == "lora"
    # the adapter directory, never the base weights; the data-quality report as JSON
    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "data_check.json"} <= top
    names = {os.path.basename(f.path) for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter_model.safetensors", "adapter_config.json", "adapterhub.json"} <= names
    assert not names & set(os.listdir(base)) - {"adapter_config.json"}  # no model.safetensors, tokenizer ...
    registry_files = {f["path"]: f["size"] for f in v["files"]}
    sizes = {os.path.basename(f.path): f.file_size for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert sizes["adapter_model.safetensors"] == registry_files["adapter_model.safetensors"]
    local = client.download_artifacts(run.info.run_id, "data_check.json", str(tmp))
    assert isinstance(json.loads(pathlib.Path(local).read_text()), dict)
    return v, run


# -- no server: the plugin must stay cheap and the helpers correct -------------------------------------


def test_plugin_is_registered_and_does_not_import_mlflow(home):
    code = (
        "import sys\n"
        "from adapterhub.cli import add_plugin_commands, cli\n"
        "add_plugin_commands()\n"
        "from adapterhub.plugins import get_plugins\n"
        "assert get_plugins().names('trackers') == ['mlflow'], get_plugins().names('trackers')\n"
        "assert 'mlflow' in cli.commands and 'register' in cli.commands['mlflow'].commands\n"
        "bad = sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.') or m == 'torch')\n"
        "assert not bad, bad\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_params_are_sanitized_for_mlflow():
    from adapterhub_mlflow.tracker import MAX_PARAM_VALUE, mask_uri, sanitize_params, ui_url
    from mlflow.utils.validation import _validate_param_name

    params = sanitize_params(
        {
            "config.target_modules": ["q_proj", "v_proj"],
            "weird key (1)!": 1,
            "../up": "x",
            "a" * 400: "y" * 10000,
            "weird key (1)?": 2,
            "config.layers_to_transform": None,
        }
    )
    assert params["config.target_modules"] == '["q_proj","v_proj"]'
    assert params["weird key _1__"] == "1" and params["weird key _1___2"] == "2"  # a collision keeps both
    assert params["config.layers_to_transform"] == "None"
    for k, v in params.items():
        _validate_param_name(k)  # raises on an invalid key
        assert len(k) <= 250 and isinstance(v, str) and len(v) <= MAX_PARAM_VALUE
    assert params["a" * 250].endswith("[truncated]")
    assert mask_uri("https://bob:secret@mlflow.example.com:5000/x") == "https://mlflow.example.com:5000/x"
    assert ui_url("https://bob:secret@h:1/", "3", "abc") == "https://h:1/#/experiments/3/runs/abc"
    assert ui_url("sqlite:///m.db", "3", "abc") is None


def test_adapter_upload_skips_base_weights(tmp_path):
    from adapterhub_mlflow.tracker import adapter_files

    for name in (
        "adapter_model.safetensors",
        "adapterhub.json",
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "pytorch_model.bin",
        ".hidden",
        "sub/notes.txt",
    ):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [(os.path.basename(p), rel) for p, rel in adapter_files(tmp_path)] == [
        ("adapter_model.safetensors", ""),
        ("adapterhub.json", ""),
        ("notes.txt", "sub"),
    ]


def test_experiment_name_and_env_are_honoured(mlflow_env, tmp_path):
    from adapterhub_mlflow.tracker import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_env.setenv("MLFLOW_TRACKING_URI", uri)
    before = dict(os.environ)

    def run(experiment, tags=None):
        t = MlflowTracker()
        t.start("r", experiment, {"method": "lora"}, tags or {})
        t.end()
        return t

    assert run(None).experiment == "adapterhub"
    assert run("acme/bot").experiment == "acme/bot"
    mlflow_env.setenv("MLFLOW_EXPERIMENT_NAME", "team-exp")
    assert run(None).experiment == "team-exp"
    assert run("acme/bot", {"adapterhub.name": "acme/bot"}).experiment == "team-exp"  # the --push default
    t = run("mine", {"adapterhub.name": "acme/bot"})  # an explicit --experiment wins
    assert t.experiment == "mine"
    info = t.run_info()
    assert info["tracking_uri"] == uri and info["url"] is None and info["run_id"] == t.run_id
    exp = t.client.get_experiment(info["experiment_id"])
    assert exp.name == "mine" and exp.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    mlflow_env.delenv("MLFLOW_EXPERIMENT_NAME")
    # the fail-fast HTTP settings are applied per call only
    assert {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_NAME"} == {
        k: v for k, v in before.items() if k != "MLFLOW_EXPERIMENT_NAME"
    }


# -- (a) a SQLite-backed tracking store --------------------------------------------------------------


def test_train_tracked_in_sqlite_store_and_registered(cli, mlflow_env, tmp_path, llama_base):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_env.setenv("MLFLOW_TRACKING_URI", uri)
    r = _train(cli, tmp_path, llama_base)
    assert r.exit_code == 0, r.output
    assert "Warning" not in r.stderr, r.stderr
    d = r.json()
    assert d["tracking"]["run_id"] and d["tracking"]["tracking_uri"] == uri
    client = _client(uri)
    v, run = _check_run(client, cli, d["ref"], llama_base, tmp_path)
    assert v["tracking"]["run_id"] == d["tracking"]["run_id"]
    assert client.get_experiment(run.info.experiment_id).name == "acme/tiny"
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts next to the database, not in the cwd
    text = cli("show", d["ref"])
    assert f"tracked: mlflow run {run.info.run_id}" in text.stdout

    # mirror into the model registry: the source is the training run's adapter artifact
    assert cli("alias", "set", "acme/tiny", "candidate", "1").exit_code == 0
    reg = cli("mlflow", "register", "acme/tiny@candidate", "--json")
    assert reg.exit_code == 0, reg.output
    m = reg.json()
    assert m["model_name"] == "acme-tiny" and m["created"] and m["run_id"] == run.info.run_id and not m["run_created"]
    mv = client.get_model_version("acme-tiny", str(m["version"]))
    assert mv.source == run.info.artifact_uri.rstrip("/") + "/adapter" == m["source"]
    assert mv.run_id == run.info.run_id
    assert mv.tags["adapterhub.ref"] == "acme/tiny:1" and mv.tags["adapterhub.digest"] == v["digest"]
    assert client.get_model_version_by_alias("acme-tiny", "candidate").version == mv.version
    # the same digest again reuses the version
    again = cli("mlflow", "register", "acme/tiny:1", "--json").json()
    assert again["version"] == m["version"] and not again["created"]
    assert len(client.search_model_versions("name='acme-tiny'")) == 1
    assert "already registered" in cli("mlflow", "register", "acme/tiny:1").stdout


def test_register_version_without_a_run_logs_a_new_run(cli, mlflow_env, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_env.setenv("MLFLOW_TRACKING_URI", uri)
    src = make_lora_dir(tmp_path / "lora")
    assert cli("push", src, "acme/plain", "--alias", "staging").exit_code == 0
    digest = cli("show", "acme/plain:1", "--json").json()["digest"]
    r = cli("mlflow", "register", "acme/plain:1", "--model-name", "plain-bot", "--json")
    assert r.exit_code == 0, r.output
    m = r.json()
    assert m["run_created"] and m["created"] and m["aliases"] == {"staging": "staging"}
    client = _client(uri)
    run = client.get_run(m["run_id"])
    assert run.data.tags["adapterhub.digest"] == digest and run.info.status == "FINISHED"
    names = {os.path.basename(f.path) for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter_model.safetensors" in names
    mv = client.get_model_version_by_alias("plain-bot", "staging")
    assert mv.source == run.info.artifact_uri.rstrip("/") + "/adapter" and mv.tags["adapterhub.digest"] == digest
    assert cli("mlflow", "register", "acme/plain:1", "--model-name", "plain-bot", "--json").json()["version"] == int(
        mv.version
    )


def test_register_against_an_unreachable_server_is_a_clean_error(cli, mlflow_env, tmp_path):
    src = make_lora_dir(tmp_path / "lora")
    assert cli("push", src, "acme/plain").exit_code == 0
    mlflow_env.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    started = time.time()
    r = cli("mlflow", "register", "acme/plain:1")
    assert_clean_error(r, "MLflow at http://127.0.0.1")
    assert time.time() - started < 60  # fails fast, no minutes of retries
    assert_clean_error(cli("mlflow", "register", "acme/nope:1"), "acme/nope")


def test_tracking_server_down_from_the_start_costs_nothing(cli, mlflow_env, tmp_path, llama_base):
    mlflow_env.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    r = _train(cli, tmp_path, llama_base, "acme/untracked")
    assert r.exit_code == 0, r.output
    d = r.json()
    assert d["ref"] == "acme/untracked:1" and os.path.isfile(tmp_path / "adapter" / "adapter_model.safetensors")
    assert "tracker 'mlflow' failed in start" in r.stderr and "not logged to mlflow" in r.stderr
    assert d["tracking"]["run_id"] is None
    v = cli("show", "acme/untracked:1", "--json").json()
    assert v["tracking"]["run_id"] is None and "  tracked:" not in cli("show", "acme/untracked:1").stdout


# -- (b) a real MLflow tracking server ---------------------------------------------------------------


@pytest.mark.slow
def test_train_tracked_on_server_and_registered(cli, mlflow_env, tmp_path, llama_base, mlflow_server):
    mlflow_env.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    r = _train(cli, tmp_path, llama_base, "acme/served")
    assert r.exit_code == 0, r.output
    d = r.json()
    client = _client(mlflow_server.uri)
    v, run = _check_run(client, cli, d["ref"], llama_base, tmp_path)
    url = f"{mlflow_server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert v["tracking"]["url"] == d["tracking"]["url"] == url
    assert url in cli("show", d["ref"]).stdout
    # the artifacts went through the server into its artifact destination
    stored = list(mlflow_server.artifacts.rglob("adapter_model.safetensors"))
    assert len(stored) == 1 and not list(mlflow_server.artifacts.rglob("model.safetensors"))

    assert cli("alias", "set", "acme/served", "candidate", "1").exit_code == 0
    m = cli("mlflow", "register", "acme/served@candidate", "--json").json()
    mv = client.get_model_version_by_alias("acme-served", "candidate")
    assert mv.version == str(m["version"]) and mv.run_id == run.info.run_id
    assert mv.source == run.info.artifact_uri.rstrip("/") + "/adapter"
    assert mv.tags["adapterhub.digest"] == v["digest"] and mv.tags["adapterhub.ref"] == "acme/served:1"
    assert m["url"] == f"{mlflow_server.uri}/#/models/acme-served/versions/{mv.version}"
    assert cli("mlflow", "register", "acme/served:1", "--json").json()["created"] is False


@pytest.mark.slow
def test_server_killed_mid_training_loses_nothing(cli, mlflow_env, tmp_path, llama_base, monkeypatch):
    from adapterhub_mlflow.tracker import MlflowTracker

    server = MlflowServer(tmp_path / "server").start()
    try:
        mlflow_env.setenv("MLFLOW_TRACKING_URI", server.uri)
        logged = []
        original = MlflowTracker.log_metrics

        def log_then_crash(self, metrics, step):
            original(self, metrics, step)
            logged.append(step)
            if len(logged) == 1:
                server.kill()  # the tracking server dies after the first logged step

        monkeypatch.setattr(MlflowTracker, "log_metrics", log_then_crash)
        started = time.time()
        r = _train(cli, tmp_path, llama_base, "acme/crash")
        took = time.time() - started
    finally:
        server.stop()
    assert r.exit_code == 0, r.output
    assert len(logged) == 1 and took < 120, (logged, took)
    d = r.json()
    assert d["ref"] == "acme/crash:1" and os.path.isfile(tmp_path / "adapter" / "adapter_model.safetensors")
    assert "not logged to mlflow" in d["tracking_warning"] and "log_artifacts" in d["tracking_warning"]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("Warning:")]
    assert any("tracker 'mlflow' failed in log_metrics" in w for w in warnings), r.stderr
    assert any("not logged to mlflow" in w and "set_tags" in w for w in warnings), r.stderr
    # the pushed version is complete and still points at the (partial) run
    v = cli("show", "acme/crash:1", "--json").json()
    assert v["tracking"]["run_id"] == d["tracking"]["run_id"]
    assert any(f["path"] == "adapter_model.safetensors" for f in v["files"])
