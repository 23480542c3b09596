"""Which backend names exist: the built-ins plus the ``tracelet.backends`` entry-point group.

Looking a name up imports only tracelet's thin backend module, never the store's
package, so asking for an absent backend can fail with a clear install hint.

``TRACELET_EXTRA_BACKENDS=name=module:Class,...`` adds backends without packaging
them (test fakes, a backend under development). It is an environment variable, so
the delivery agent, a separate process, sees the same backends as the trainer.
"""

from __future__ import annotations

import importlib

from tracelet import config
from tracelet.backends.base import Backend
from tracelet.errors import UnknownBackendError

ENTRY_POINT_GROUP = "tracelet.backends"

BUILTIN_BACKENDS: dict[str, str] = {
    "local": "tracelet.backends.local:LocalBackend",
    "mlflow": "tracelet.backends.mlflow:MLflowBackend",
    "wandb": "tracelet.backends.wandb:WandbBackend",
    "clearml": "tracelet.backends.clearml:ClearMLBackend",
}


def _load(target: str) -> type[Backend]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{target} is not a tracelet Backend subclass")
    return cls


def _entry_point_targets() -> dict[str, str]:
    # importlib.metadata costs ~35 ms to import (email, zipfile, csv...): only a name that is not
    # built in, or a listing of every name, pays it, and not every start of the delivery agent
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _extra_targets() -> dict[str, str]:
    """``TRACELET_EXTRA_BACKENDS``: ``name=module:Class`` pairs, comma separated."""
    targets: dict[str, str] = {}
    for item in config.extra_backends().split(","):
        if not item.strip():
            continue
        name, sep, target = item.partition("=")
        if not sep or ":" not in target:
            raise ValueError(f"{config.ENV_EXTRA_BACKENDS}: {item!r} is not name=module:Class")
        targets[name.strip()] = target.strip()
    return targets


def available_backends() -> list[str]:
    """Every known backend name, installed or not: built-ins first, then entry points."""
    names = list(BUILTIN_BACKENDS)
    extra = {**_entry_point_targets(), **_extra_targets()}
    names += sorted(n for n in extra if n not in BUILTIN_BACKENDS)
    return names


def get_backend_class(name: str) -> type[Backend]:
    """The backend class for ``name``; ``UnknownBackendError`` lists the known names."""
    target = BUILTIN_BACKENDS.get(name) or _extra_targets().get(name) or _entry_point_targets().get(name)
    if target is None:
        raise UnknownBackendError(f"unknown backend {name!r}; known backends: {available_backends()}")
    return _load(target)
