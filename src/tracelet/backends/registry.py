"""Which backend names exist: the built-ins plus the ``tracelet.backends`` entry-point group.

Looking a name up imports only tracelet's thin backend module, never the store's
package, so asking for an absent backend can fail with a clear install hint.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

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
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_backends() -> list[str]:
    """Every known backend name, installed or not: built-ins first, then entry points."""
    names = list(BUILTIN_BACKENDS)
    names += sorted(n for n in _entry_point_targets() if n not in BUILTIN_BACKENDS)
    return names


def get_backend_class(name: str) -> type[Backend]:
    """The backend class for ``name``; ``UnknownBackendError`` lists the known names."""
    target = BUILTIN_BACKENDS.get(name) or _entry_point_targets().get(name)
    if target is None:
        raise UnknownBackendError(f"unknown backend {name!r}; known backends: {available_backends()}")
    return _load(target)
