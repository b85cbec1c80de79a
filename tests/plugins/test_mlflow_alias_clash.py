"""``mlflow register`` never lets two different adapterhub aliases (``rc.1``, ``rc_1``) share one MLflow
alias: a real SQLite-backed MLflow store, read back with ``MlflowClient``."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/
from conftest import assert_clean_error, make_lora_dir  # noqa: E402


def test_aliases_mapping_to_one_mlflow_alias_are_refused(cli, home, tmp_path, monkeypatch):
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "ADAPTERHUB_TRACKER",
    ):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli("push", make_lora_dir(tmp_path / "a1", seed=1), "t/a", "--alias", "rc.1").exit_code == 0
    assert cli("push", make_lora_dir(tmp_path / "a2", seed=2), "t/a").exit_code == 0
    r = cli("mlflow", "register", "t/a:1", "--model-name", "ta", "--json")
    assert r.exit_code == 0, r.output
    assert r.json()["aliases"] == {"rc.1": "rc_1"}
    assert cli("push", make_lora_dir(tmp_path / "a3", seed=3), "t/a", "--alias", "rc_1").exit_code == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    v1 = client.get_model_version_by_alias("ta", "rc_1").version
    r = cli("mlflow", "register", "t/a:3", "--model-name", "ta")
    assert_clean_error(r, "'rc_1'", "'rc.1'")
    assert client.get_model_version_by_alias("ta", "rc_1").version == v1  # still t/a:1
    assert len(client.search_model_versions("name='ta'")) == 1  # nothing registered for t/a:3
    assert_clean_error(cli("mlflow", "register", "t/a:1", "--model-name", "ta"), "'rc_1'")  # either way round
