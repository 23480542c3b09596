"""Checks that run on the caller's thread, so bad input fails loudly and nothing is half-written."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

#: One character set every backend accepts: segments of letters, digits, ``_ . -``
#: joined by single ``/`` (MLflow's rules are the strictest; W&B and ClearML accept it).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9_.\-]+)*\Z")
#: Path segments MLflow refuses (a name must equal its own ``posixpath.normpath``), and
#: with them the whole batch the name rides in: so tracelet refuses them up front.
DOT_SEGMENTS = frozenset({".", ".."})
MAX_NAME_LENGTH = 250
RESERVED_PREFIXES = ("tracelet/", "tracelet.")
#: the system metrics' prefix (MLflow's for its own): reserved for metrics tracelet samples
SYSTEM_PREFIX = "system/"


def check_name(name: Any, what: str) -> str:
    """Return ``name`` if every backend accepts it; otherwise raise naming it."""
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a str, not {type(name).__name__} ({name!r})")
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid {what} name {name!r}: use letters, digits, '_', '.', '-' in segments joined by "
            f"single '/', starting with a letter or digit, at most {MAX_NAME_LENGTH} characters"
        )
    if any(segment in DOT_SEGMENTS for segment in name.split("/")):
        raise ValueError(f"invalid {what} name {name!r}: a '.' or '..' segment is a path step, not a name")
    if name.startswith(RESERVED_PREFIXES):
        raise ValueError(f"invalid {what} name {name!r}: the prefix 'tracelet' is reserved")
    if what == "metric" and name.startswith(SYSTEM_PREFIX):
        raise ValueError(
            f"invalid metric name {name!r}: the prefix {SYSTEM_PREFIX!r} is reserved for the system "
            "metrics tracelet samples (TRACELET_SYSTEM_METRICS); log it under another prefix"
        )
    return name


_OUTSIDE_CHARSET = re.compile(r"[^A-Za-z0-9_.\-/]")


def safe_name(name: str) -> str:
    """A name from elsewhere (a TensorBoard tag, a Lightning key) made one that :func:`check_name` accepts.

    Kept as spelled where possible. Any character outside the set becomes ``_``;
    empty, ``.`` and ``..`` segments are dropped; a name that does not start with a
    letter or digit, or starts with the reserved ``tracelet`` or ``system/``, gets ``tb/`` in front;
    one over :data:`MAX_NAME_LENGTH` is cut and ends in ``-`` and 8 hex digits of its hash.
    """
    cleaned = _OUTSIDE_CHARSET.sub("_", str(name))
    mapped = "/".join(s for s in cleaned.split("/") if s not in ("", ".", ".."))
    if not mapped or not mapped[0].isalnum() or mapped.startswith(("tracelet", SYSTEM_PREFIX)):
        mapped = f"tb/{mapped}" if mapped else "tb"
    if len(mapped) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(mapped.encode()).hexdigest()[:8]
        mapped = f"{mapped[: MAX_NAME_LENGTH - 9].rstrip('/')}-{digest}"
    return check_name(mapped, "mapped")


def check_step(iteration: Any) -> int:
    """Steps are non-negative integers (Python or numpy ints, not bools)."""
    if type(iteration) is int:
        value = iteration
    elif (
        not isinstance(iteration, bool)
        and type(iteration).__module__ == "numpy"
        and hasattr(iteration, "dtype")
        and iteration.dtype.kind in "iu"
    ):
        value = int(iteration)
    else:
        raise TypeError(f"iteration must be an int or None, not {type(iteration).__name__}")
    if value < 0:
        raise ValueError(f"iteration must be >= 0, got {value}")
    return value


def coerce_value(name: str, value: Any) -> Any:
    """A metric value as it is *now*: numbers as Python numbers, tensors as snapshots.

    A one-element tensor on an accelerator is detached and cloned: an asynchronous
    copy on the device, so the training thread never waits for the device; ``.item()``
    runs later on the writer thread. A CPU tensor has no device to wait for: reading
    its one number *is* the copy, and costs a tenth of a clone (0.15 µs against 1.5 µs).
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    module = type(value).__module__
    if module == "numpy" and hasattr(value, "dtype") and getattr(value, "shape", None) == ():
        if value.dtype.kind in "biuf":
            return value.item()
    elif module.startswith("torch") and hasattr(value, "numel") and hasattr(value, "detach"):
        if value.numel() != 1:
            raise TypeError(
                f"metric {name!r}: value must be a one-element tensor, got shape {tuple(value.shape)}"
            )
        if value.is_complex():
            raise TypeError(f"metric {name!r}: value must be real, got dtype {value.dtype}")
        if value.is_cpu:
            return value.item()
        return value.detach().clone()
    raise TypeError(
        f"metric {name!r}: value must be an int, float, bool, numpy scalar or one-element tensor, "
        f"not {type(value).__name__}"
    )


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become ``a/b`` keys; every value becomes a string."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict, not {type(params).__name__}")
    flat: dict[str, str] = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"param names must be str, got {type(key).__name__} ({key!r})")
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"param {full!r} is an empty dict: nothing to log")
            flat.update(flatten_params(value, f"{full}/"))
        else:
            flat[check_name(full, "param")] = str(value)
    return flat
