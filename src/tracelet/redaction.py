"""Secrets never reach a store, the spool or a log: values under secret-looking keys become ``***``.

A key is secret when one of its *segments* is a secret word, or a known compound.
Keys are split on ``_ . - /`` and at camelCase boundaries, case-insensitively:
``db/password``, ``wandbApiKey``, ``AWS_SECRET_ACCESS_KEY`` and ``auth.token`` are
secret; ``max_tokens``, ``tokenizer``, ``author`` and ``key_dim`` are ordinary
hyperparameters and keep their values, since no whole segment is a secret word.

Credentials written into a URL (``https://user:token@host/...``) are removed from any
value, secret key or not.

``TRACELET_REDACT`` extends the rules with a comma list of extra words or ``fnmatch``
patterns (``TRACELET_REDACT="ssn,*_pin"``): a word matches a whole segment, a pattern
the whole lower-cased key. ``TRACELET_REDACT=off`` turns redaction off, explicitly.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracelet import config

MASK = "***"

#: Whole segments that make a key secret.
SECRET_WORDS = frozenset(
    {
        "token",
        "secret",
        "secrets",
        "password",
        "passwd",
        "passphrase",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "apikey",
        "accesskey",
        "secretkey",
        "privatekey",
        "signingkey",
        "sessionkey",
        "clientsecret",
    }
)
#: Two adjacent segments that together make a key secret (``api_key``, ``access-key``, ``privateKey``).
SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("access", "key"),
        ("secret", "key"),
        ("private", "key"),
        ("signing", "key"),
        ("session", "key"),
        ("client", "secret"),
        ("ssh", "key"),
    }
)

_SPLIT = re.compile(r"[_.\-/\s]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
#: ``scheme://userinfo@`` inside any text; the user-info part is removed.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]+@")
_OFF = {"0", "off", "false", "no"}


def segments(key: str) -> list[str]:
    """``"wandbApiKey"`` → ``["wandb", "api", "key"]``; ``"AWS_SECRET_KEY"`` → ``["aws", "secret", "key"]``"""
    parts: list[str] = []
    for chunk in _SPLIT.split(key):
        parts.extend(p.lower() for p in _CAMEL.split(chunk) if p)
    return parts


@dataclass(frozen=True)
class Redactor:
    """The rules in force: built-in, plus the user's words and patterns; none when ``enabled`` is False."""

    enabled: bool = True
    words: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> Redactor:
        raw = config.redact_rules()
        if raw.lower() in _OFF and raw:
            return cls(enabled=False)
        extra = [item.strip().lower() for item in raw.split(",") if item.strip()]
        words = frozenset(e for e in extra if not any(c in e for c in "*?["))
        patterns = tuple(e for e in extra if any(c in e for c in "*?["))
        return cls(enabled=True, words=words, patterns=patterns)

    def is_secret(self, key: str) -> bool:
        """True when ``key`` names a secret (see the module docstring)."""
        if not self.enabled:
            return False
        parts = segments(key)
        if any(p in SECRET_WORDS or p in self.words for p in parts):
            return True
        if any(pair in SECRET_PAIRS for pair in itertools.pairwise(parts)):
            return True
        lowered = key.lower()
        return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in self.patterns)

    def value(self, key: str, value: Any) -> Any:
        """``value`` with secrets removed: ``***`` under a secret key, and at any depth inside it."""
        if not self.enabled:
            return value
        if self.is_secret(key):
            return MASK
        if isinstance(value, Mapping):
            return {k: self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(key, v) for v in value)
        if isinstance(value, str):
            return strip_url_userinfo(value)
        return value

    def without_secrets(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` with secret keys *left out* (at any depth) and URL credentials removed.

        For what is kept to reopen a run later (the spool): a masked ``***`` would be sent
        to the store as if it were the credential; left out, the store's client falls back
        to its own environment variables (``MLFLOW_TRACKING_TOKEN``, ``WANDB_API_KEY``, ...).
        """
        kept: dict[str, Any] = {}
        for key, value in options.items():
            if self.enabled and self.is_secret(str(key)):
                continue
            if isinstance(value, Mapping):
                kept[key] = self.without_secrets(value)
            else:
                kept[key] = self.value(str(key), value)
        return kept

    def text(self, value: str) -> str:
        """Free text (an error message, a URL): credentials inside URLs removed."""
        return strip_url_userinfo(value) if self.enabled else value


def strip_url_userinfo(text: str) -> str:
    """``"see https://u:tok@host/x"`` → ``"see https://host/x"``."""
    return _URL_USERINFO.sub(r"\1", text)


__all__ = ["MASK", "Redactor", "segments", "strip_url_userinfo"]
