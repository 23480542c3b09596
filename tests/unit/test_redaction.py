"""Secret-looking keys are masked, ordinary hyperparameters are not, URL credentials are removed."""

from __future__ import annotations

import pytest

import tracelet
from tests.unit.fakes import run_view
from tracelet.redaction import MASK, Redactor, segments

SECRET_KEYS = [
    "api_key",
    "apiKey",
    "wandbApiKey",
    "APIKEY",
    "token",
    "hf_token",
    "auth.token",
    "AWS_SECRET_ACCESS_KEY",
    "aws-access-key",
    "db/password",
    "passwd",
    "client_secret",
    "private_key",
    "privateKey",
    "ssh_key",
    "credentials",
    "Authorization",
    "auth",
]
ORDINARY_KEYS = [
    "max_tokens",
    "tokenizer",
    "author",
    "key_dim",
    "num_keys",
    "authority",
    "tokens_per_batch",
    "lr",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_are_recognized(key: str) -> None:
    assert Redactor().is_secret(key)


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_ordinary_hyperparameters_are_not_secrets(key: str) -> None:
    assert not Redactor().is_secret(key)


def test_segments_split_on_separators_and_camel_case() -> None:
    assert segments("wandbApiKey") == ["wandb", "api", "key"]
    assert segments("AWS_SECRET_ACCESS_KEY") == ["aws", "secret", "access", "key"]
    assert segments("HTTPServer.url") == ["http", "server", "url"]


def test_values_are_masked_at_any_depth_and_url_credentials_removed() -> None:
    params = {
        "model": {"depth": 4, "hub": {"token": "hf_live_123"}},
        "servers": [{"host": "a", "password": "pw1"}],
        "tracking": "https://user:sk-live-9@mlflow.example/api",
        "max_tokens": 512,
    }
    assert Redactor().value("", params) == {
        "model": {"depth": 4, "hub": {"token": MASK}},
        "servers": [{"host": "a", "password": MASK}],
        "tracking": "https://mlflow.example/api",
        "max_tokens": 512,
    }


def test_redact_env_extends_and_turns_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACELET_REDACT", "ssn,*_pin")
    redactor = Redactor.from_env()
    assert redactor.is_secret("user_ssn")
    assert redactor.is_secret("card_pin")
    assert redactor.is_secret("api_key")  # the built-in rules stay
    assert not redactor.is_secret("pinned")
    monkeypatch.setenv("TRACELET_REDACT", "off")
    assert not Redactor.from_env().is_secret("api_key")


def test_spool_options_leave_secrets_out() -> None:
    options = {"tracking_uri": "https://u:p@host", "settings": {"api_key": "k", "mode": "offline"}}
    assert Redactor().without_secrets(options) == {
        "tracking_uri": "https://host",
        "settings": {"mode": "offline"},
    }


def test_secrets_never_reach_the_backend() -> None:
    exp = tracelet.start_logging(
        backend="memory",
        config={"lr": 0.1, "openai": {"api_key": "sk-live-abc"}, "max_tokens": 64},
        tags={"endpoint": "https://bot:ghp_tok@git.example/x", "auth_token": "t0k"},
    )
    exp.log_params({"openai": {"api_key": "sk-rotated"}})  # masked, it is the same value: nothing changes
    with pytest.raises(ValueError, match="param 'lr'") as err:
        exp.log_params({"lr": 0.2, "openai": {"api_key": "sk-other"}})
    assert "sk-" not in str(err.value)
    assert tracelet.stop_logging().ok
    text = repr(run_view(exp.runs["memory"]).events)
    for secret in ("sk-live-abc", "sk-rotated", "ghp_tok", "t0k"):
        assert secret not in text
    assert "openai/api_key" in text
    assert "'max_tokens': '64'" in text
