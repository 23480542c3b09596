"""Secrets land nowhere: not in a store, the spool, tracelet's logs or the store's own logs.

A config with secret-looking keys (nested, and inside a list), a tag holding a URL with a
token, and (for the MLflow server) a tracking URI with credentials go to the real store.
The run is read back (masked values, ordinary hyperparameters intact), then every file
the store and the spool wrote, and everything logged, is searched for each secret.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tests.e2e.framework import e2e_framework, files_holding
from tests.e2e.params import environments

pytestmark = [pytest.mark.e2e_advanced, pytest.mark.e2e_floor]

SECRETS = {
    "api_key": "sk-live-4f9a0c21",
    "nested_token": "hf_tok_77b3e1",
    "listed_password": "pw-in-a-list-5d2",
    "url_token": "ghp_url_token_91ac",
    "uri_password": "uri-pass-c4e8",
}
CONFIG = {
    "lr": 0.01,
    "max_tokens": 512,  # not a secret: its value lands
    "tokenizer": "bpe",
    "openai": {"api_key": SECRETS["api_key"], "model": "gpt"},
    "hub": {"auth": {"token": SECRETS["nested_token"]}},
    "replicas": [{"host": "db1", "password": SECRETS["listed_password"]}],
}


@pytest.mark.parametrize("environment", environments())
def test_secrets_land_nowhere(
    environment: str,
    isolated_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TRACELET_LOG_LEVEL", "DEBUG")  # the agent logs at DEBUG too, to stderr
    caplog.set_level(logging.DEBUG, logger="tracelet")
    secrets = list(SECRETS.values())
    with e2e_framework.backend_environment(environment, project="secrets") as config:
        env = config.store
        options = dict(config.backend_options)
        if environment == "mlflow_server":  # credentials in the tracking URI: MLflow sends them as basic auth
            uri = options["mlflow"]["tracking_uri"].replace(
                "http://", f"http://ci-user:{SECRETS['uri_password']}@"
            )
            options = {"mlflow": {**options["mlflow"], "tracking_uri": uri}}
        exp = tracelet.start_logging(
            exp_name="secrets",
            project="secrets",
            backend=config.backend_name,
            backend_options=options,
            config=CONFIG,
            tags={"endpoint": f"https://bot:{SECRETS['url_token']}@git.example.invalid/org/repo"},
        )
        exp.log_metric("loss", 0.5, 0)
        assert exp.flush(30)
        in_flight = files_holding(secrets, [tmp_path / "spool"])  # the spool while the run is open
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])
        at_rest = files_holding(secrets, [*env.stored_roots(), tmp_path / "spool"])

    assert record.params == {
        "lr": "0.01",
        "max_tokens": "512",
        "tokenizer": "bpe",
        "openai/api_key": "***",
        "openai/model": "gpt",
        "hub/auth": "***",  # a secret key masks its whole value, whatever lies beneath
        "replicas": "[{'host': 'db1', 'password': '***'}]",
    }
    assert record.tags == {"endpoint": "https://git.example.invalid/org/repo"}
    assert in_flight == {}
    assert at_rest == {}
    assert "delivered" in caplog.text  # the logs were captured, and hold no secret
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert [s for s in secrets if s in logged] == [], [
        line for line in logged.splitlines() if any(s in line for s in secrets)
    ]


@pytest.mark.framework_only("torch")  # store behaviour: once per store, not per framework set
@pytest.mark.parametrize("environment", environments(["mlflow", "mlflow_server"]))
def test_a_copied_run_carries_no_secret(
    environment: str, isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run MLflow's own client wrote with a token in a param and a URL with credentials in a tag,
    copied (from a tracking URI with credentials, for the server) to local: neither lands, nor is logged."""
    import subprocess
    import sys

    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    from tests.e2e.environments import child_env
    from tracelet.testing import read_run

    secrets = [SECRETS["api_key"], SECRETS["url_token"], SECRETS["uri_password"]]
    with e2e_framework.backend_environment(environment, project="secrets") as config:
        uri = config.store.reader_options()["tracking_uri"]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("secrets") or client.get_experiment(
            client.create_experiment("secrets")
        )
        run = client.create_run(experiment.experiment_id, run_name="native-secrets")
        client.log_batch(
            run.info.run_id,
            params=[Param("api_key", SECRETS["api_key"]), Param("lr", "0.01")],
            tags=[RunTag("endpoint", f"https://bot:{SECRETS['url_token']}@git.example.invalid/org/repo")],
        )
        client.log_metric(run.info.run_id, "loss", 0.5, step=0)
        client.set_terminated(run.info.run_id, "FINISHED")
        if environment == "mlflow_server":  # the source named with credentials, as a user might
            uri = uri.replace("http://", f"http://ci-user:{SECRETS['uri_password']}@")
        target = tmp_path / "copied"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tracelet",
                "copy",
                f"mlflow:{uri}#{run.info.run_id}",
                f"local:{target}",
                "--json",
            ],
            cwd=tmp_path,
            env=child_env(TRACELET_LOG_LEVEL="DEBUG"),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        copied_id = json.loads(done.stdout)["target"].rpartition("#")[2]
        copied = read_run("local", copied_id, root=target)
        at_rest = files_holding(secrets, [target, tmp_path / "spool"])
    assert copied.params == {"api_key": "***", "lr": "0.01"}
    assert copied.tags == {"endpoint": "https://git.example.invalid/org/repo"}
    assert SECRETS["uri_password"] not in copied.system_tags["tracelet.copied_from"]
    assert at_rest == {}
    logged = done.stdout + done.stderr
    assert [s for s in secrets if s in logged] == [], logged
