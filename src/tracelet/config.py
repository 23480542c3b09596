"""Settings: the call's arguments first, then ``TRACELET_*`` variables, then documented defaults.

==========================  ==============================================  ============
variable                    meaning                                          default
==========================  ==============================================  ============
TRACELET_BACKEND            backend name(s), comma separated                ``local``
TRACELET_PROJECT            project (MLflow experiment, W&B/ClearML project) ``default``
TRACELET_EXPERIMENT_NAME    run name                                         generated
TRACELET_LOG_LEVEL          level of the ``tracelet`` logger                 unchanged
TRACELET_STRICT             ``1``: ``stop_logging`` raises unless all landed ``0``
TRACELET_HANDLE_SIGNALS     ``0``: do not install SIGTERM/SIGINT handlers    ``1``
TRACELET_FLUSH_TIMEOUT      seconds ``stop_logging`` waits for delivery      ``60``
TRACELET_SPOOL_DIR          where overflow and leftovers are spooled         user cache
TRACELET_ARTIFACT_STAGE_MB  artifact snapshots on their way, at most (MiB);  ``2048``
                            then ``log_artifact`` waits; ``0``: no bound
TRACELET_DELIVERY           ``agent``: a (warm) delivery process;           ``agent``
                            ``thread``: writer threads in this process
TRACELET_START              ``wait``: ``start_logging`` returns once every   ``background``
                            run is open, and raises what opening raised
TRACELET_AGENT_TIMEOUT      seconds the agent may take to open the runs      ``120``
TRACELET_AGENT_DRAIN        seconds the agent delivers after trainer death   ``30``
TRACELET_AGENT_IDLE         seconds an idle agent waits for the next run     ``60``
TRACELET_AGENT_NICE         added to the agent's niceness (0: none)          ``10``
TRACELET_EXTRA_BACKENDS     ``name=module:Class,...``: unpackaged backends   none
TRACELET_LOCAL_DIR          where the ``local`` backend writes its runs      ``./tracelet-runs``
TRACELET_TRACK_GIT          ``0``: record no git commit/branch/remote       ``1``
TRACELET_TRACK_TENSORBOARD  ``0``: do not capture ``SummaryWriter`` calls   ``1``
TRACELET_REDACT             extra secret words/patterns; ``off``: none       built-in
TRACELET_SYSTEM_METRICS     ``0``: record no ``system/`` metrics             ``1``
TRACELET_SYSTEM_INTERVAL    seconds between system samples (at least 1)      ``10``
TRACELET_LAG_WARN           a WARNING when a store is this many seconds      ``60``
                            behind (and one when it catches up); ``0``: none
==========================  ==============================================  ============

Every ``TRACELET_*`` variable is read here. Most are read once per run by :func:`resolve`;
the few read where they act (:func:`spool_dir`, :func:`local_dir`, :func:`extra_backends`,
:func:`agent_nice`, :func:`redact_rules`) are read there at the moment they act, because the
delivery agent takes on each run's environment and reads them for that run.

The default backend is ``local`` (a JSONL directory, ``./tracelet-runs``): it needs
no optional package, so a run with nothing configured still lands somewhere visible.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_BACKEND = "local"
DEFAULT_PROJECT = "default"
DEFAULT_FLUSH_TIMEOUT = 60.0
#: Long enough for a cold ``mlflow server`` (its first sqlite migration) and a first wandb-core start.
DEFAULT_AGENT_TIMEOUT = 120.0
DEFAULT_AGENT_DRAIN = 30.0
#: An idle agent holds its stores' clients (an MLflow agent: about 250 MB of RSS) for the next run of a
#: sweep; a minute covers the gap between trials of a sweep or the tests of a suite.
DEFAULT_AGENT_IDLE = 60.0
#: MiB of artifact snapshots staged on their way to the stores before ``log_artifact`` waits: two
#: checkpoints of a billion float16 parameters, or a few of a smaller model, in flight at once
DEFAULT_ARTIFACT_STAGE_MB = 2048
#: seconds between two samples of the system metrics: MLflow's own default
DEFAULT_SYSTEM_INTERVAL = 10.0
MIN_SYSTEM_INTERVAL = 1.0
#: seconds a store may fall behind before a WARNING says so
DEFAULT_LAG_WARN = 60.0
DELIVERY_MODES = ("agent", "thread")
START_MODES = ("background", "wait")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_flag(name: str, default: bool) -> bool:
    """A boolean variable; anything but a clear yes/no is a ``ValueError`` naming it."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use 1 or 0)")


def parse_backends(value: str | Sequence[str] | None) -> list[str]:
    """``"mlflow, wandb"`` or ``["mlflow", "wandb"]`` → ``["mlflow", "wandb"]`` (order kept, no repeats)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"backend names must be strings, got {type(item).__name__}")
        name = item.strip().lower()
        if name and name not in names:
            names.append(name)
    return names


def default_run_name() -> str:
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Settings:
    """Everything ``start_logging`` resolved, ready to build the backends."""

    backends: list[str]
    project: str
    run_name: str
    strict: bool
    handle_signals: bool
    flush_timeout: float
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``agent`` (a delivery process, the default) or ``thread`` (writer threads in this process)
    delivery: str = "agent"
    agent_timeout: float = DEFAULT_AGENT_TIMEOUT
    agent_drain: float = DEFAULT_AGENT_DRAIN
    agent_idle: float = DEFAULT_AGENT_IDLE
    #: return from ``start_logging`` only once every run is open (and raise what opening raised)
    wait: bool = False
    #: record the git commit, branch, dirty flag and (credential-free) remote
    track_git: bool = True
    #: capture ``torch.utils.tensorboard.SummaryWriter`` calls while the run is active
    track_tensorboard: bool = True
    #: bytes of artifact snapshots staged on their way before ``log_artifact`` waits (0: no bound)
    artifact_stage_bytes: int = DEFAULT_ARTIFACT_STAGE_MB << 20
    #: seconds between two samples of the ``system/`` metrics; ``None``: none are recorded
    system_interval: float | None = DEFAULT_SYSTEM_INTERVAL
    #: seconds behind after which a WARNING says a store lags (0: never)
    lag_warn: float = DEFAULT_LAG_WARN


#: the process-wide variables, read where they act (see the module's docstring)
ENV_SPOOL_DIR = "TRACELET_SPOOL_DIR"
ENV_LOCAL_DIR = "TRACELET_LOCAL_DIR"
ENV_EXTRA_BACKENDS = "TRACELET_EXTRA_BACKENDS"
ENV_AGENT_NICE = "TRACELET_AGENT_NICE"
ENV_REDACT = "TRACELET_REDACT"
DEFAULT_AGENT_NICE = 10


def spool_dir() -> str | None:
    """``TRACELET_SPOOL_DIR``, when set (the spool then lives there, not in the user cache)."""
    return os.environ.get(ENV_SPOOL_DIR) or None


def local_dir() -> str | None:
    """``TRACELET_LOCAL_DIR``, when set (the ``local`` backend's runs live there)."""
    return os.environ.get(ENV_LOCAL_DIR) or None


def extra_backends() -> str:
    """``TRACELET_EXTRA_BACKENDS`` as written (``name=module:Class,...``; the registry parses it)."""
    return os.environ.get(ENV_EXTRA_BACKENDS, "")


def agent_nice() -> int:
    """``TRACELET_AGENT_NICE``: added to the agent's niceness (a bad value is said, then the default)."""
    raw = os.environ.get(ENV_AGENT_NICE)
    if raw is None or not raw.strip():
        return DEFAULT_AGENT_NICE
    try:
        return int(raw)
    except ValueError:
        log.warning("tracelet: %s=%r is not an integer; using %d", ENV_AGENT_NICE, raw, DEFAULT_AGENT_NICE)
        return DEFAULT_AGENT_NICE


def redact_rules() -> str:
    """``TRACELET_REDACT`` as written (extra words and patterns, or ``off``; redaction parses it)."""
    return os.environ.get(ENV_REDACT, "").strip()


def _mebibytes(name: str, default: int) -> int:
    """A size in MiB (fractions allowed), as bytes."""
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw and raw.strip() else float(default)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of MiB") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return int(value * (1 << 20))


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value


def resolve(
    *,
    exp_name: str | None,
    project: str | None,
    backend: str | Sequence[str] | None,
    backend_options: Mapping[str, Mapping[str, Any]] | None,
    wait: bool | None = None,
) -> Settings:
    """Merge the call with the environment. Bad values raise errors that name them."""
    names = parse_backends(backend)
    if backend is not None and not names:
        raise ValueError(f"backend={backend!r} names no backend")
    if not names:
        raw = os.environ.get("TRACELET_BACKEND")
        names = parse_backends(raw)
        if raw is not None and raw.strip() and not names:
            raise ValueError(f"TRACELET_BACKEND={raw!r} names no backend")
    if not names:
        names = [DEFAULT_BACKEND]
    options: dict[str, dict[str, Any]] = {}
    for name, opts in (backend_options or {}).items():
        if name not in names:
            raise TypeError(
                f"backend_options has key {name!r}, which is not one of the selected backends {names}"
            )
        if not isinstance(opts, Mapping):
            raise TypeError(f"backend_options[{name!r}] must be a mapping, not {type(opts).__name__}")
        options[name] = dict(opts)
    project = project or os.environ.get("TRACELET_PROJECT") or DEFAULT_PROJECT
    run_name = exp_name or os.environ.get("TRACELET_EXPERIMENT_NAME") or default_run_name()
    for arg, value in (("project", project), ("exp_name", run_name)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{arg} must be a non-empty string, got {value!r}")
    level = os.environ.get("TRACELET_LOG_LEVEL")
    if level:
        logging.getLogger("tracelet").setLevel(level.upper())
    flush_timeout = _seconds("TRACELET_FLUSH_TIMEOUT", DEFAULT_FLUSH_TIMEOUT)
    delivery = (os.environ.get("TRACELET_DELIVERY") or "agent").strip().lower()
    if delivery not in DELIVERY_MODES:
        raise ValueError(f"TRACELET_DELIVERY={delivery!r} is not one of {DELIVERY_MODES}")
    if wait is not None and not isinstance(wait, bool):
        raise TypeError(f"wait must be True or False, not {type(wait).__name__}")
    start = (os.environ.get("TRACELET_START") or "background").strip().lower()
    if start not in START_MODES:
        raise ValueError(f"TRACELET_START={start!r} is not one of {START_MODES}")
    return Settings(
        backends=names,
        project=project,
        run_name=run_name,
        strict=env_flag("TRACELET_STRICT", False),
        handle_signals=env_flag("TRACELET_HANDLE_SIGNALS", True),
        flush_timeout=flush_timeout,
        backend_options=options,
        delivery=delivery,
        agent_timeout=_seconds("TRACELET_AGENT_TIMEOUT", DEFAULT_AGENT_TIMEOUT),
        agent_drain=_seconds("TRACELET_AGENT_DRAIN", DEFAULT_AGENT_DRAIN),
        agent_idle=_seconds("TRACELET_AGENT_IDLE", DEFAULT_AGENT_IDLE),
        wait=wait if wait is not None else start == "wait",
        track_git=env_flag("TRACELET_TRACK_GIT", True),
        track_tensorboard=env_flag("TRACELET_TRACK_TENSORBOARD", True),
        artifact_stage_bytes=_mebibytes("TRACELET_ARTIFACT_STAGE_MB", DEFAULT_ARTIFACT_STAGE_MB),
        system_interval=_system_interval(),
        lag_warn=_seconds("TRACELET_LAG_WARN", DEFAULT_LAG_WARN),
    )


def _system_interval() -> float | None:
    """``TRACELET_SYSTEM_INTERVAL`` (at least 1 s), or ``None`` when ``TRACELET_SYSTEM_METRICS=0``."""
    if not env_flag("TRACELET_SYSTEM_METRICS", True):
        return None
    interval = _seconds("TRACELET_SYSTEM_INTERVAL", DEFAULT_SYSTEM_INTERVAL)
    if interval < MIN_SYSTEM_INTERVAL:
        raise ValueError(
            f"TRACELET_SYSTEM_INTERVAL={os.environ.get('TRACELET_SYSTEM_INTERVAL')!r} is below "
            f"{MIN_SYSTEM_INTERVAL:g} second"
        )
    return interval
