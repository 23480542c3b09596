"""tracelet's test matrix: one backend × one framework set per session, plus unit, lint, typecheck, summary.

The matrix is data (below). Each ``e2e-<backend>-<framework>`` session installs the
project with exactly those two extras, so the extras themselves are what gets
tested, and an absent optional package is absent for real. The E2E suite then
checks that what is importable is exactly the declared set, and audits its skips.

    nox -s e2e-mlflow-torch      # one cell
    nox                          # everything, then the merged summary in reports/
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_missing_interpreters = True

# -- the matrix ------------------------------------------------------------------------------
E2E_PYTHON = "3.11"
#: pytest-xdist workers per E2E session ("auto": one per CPU); ``nox -s <cell> -- -n 0`` runs serially
E2E_WORKERS = "auto"
UNIT_PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: pytest-xdist workers per unit session (the suite is independent per test: its own spool, its own
#: fakes' directories, its own agents); ``nox -s unit-3.11 -- -n 0`` runs serially
UNIT_WORKERS = "auto"
#: backend axis: name -> pip extras (none at all for ``none``; ``all`` is the three side by side)
BACKENDS: dict[str, tuple[str, ...]] = {
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
    "clearml": ("clearml",),
    "all": ("mlflow", "wandb", "clearml"),
    "none": (),
}
#: backend values offered with some framework sets only (the rest of the row is not a cell)
ONLY_WITH: dict[str, tuple[str, ...]] = {"all": ("torch",)}
#: what a backend's cell selects from the suite. A store's cell tests that store: the ``local``
#: store's tests (which need no package) run in the ``none`` row, once per framework set, instead of
#: again beside every store. The ``all`` cell: the workflows and tests of the three stores in one run;
#: every other test already ran in the single-backend cells.
PYTEST_ARGS: dict[str, tuple[str, ...]] = {
    "mlflow": ("--e2e-exclude-backends=local",),
    "wandb": ("--e2e-exclude-backends=local",),
    "clearml": ("--e2e-exclude-backends=local",),
    "all": ("--e2e-backends=all", "-m", "e2e_basic or e2e_together"),
}
#: framework axis: name -> (pip extra, constraints file with the exact pins)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "requirements/constraints.txt"),
    "lightning": ("lightning", "requirements/constraints.txt"),
    "pytorch_lightning": ("pytorch-lightning", "requirements/constraints.txt"),
    "vision": ("vision", "requirements/constraints-vision.txt"),
}
#: what each axis value makes importable: the install set the E2E suite verifies
PROVIDES: dict[str, tuple[str, ...]] = {
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
    "clearml": ("clearml",),
    "all": ("mlflow", "wandb", "clearml"),
    "none": (),
    "torch": ("torch", "tensorboard"),
    # the `lightning` distribution itself requires `pytorch-lightning`: both are importable
    "lightning": ("torch", "lightning", "pytorch_lightning", "tensorboard"),
    "pytorch_lightning": ("torch", "pytorch_lightning", "tensorboard"),
    "vision": ("torch", "torchvision"),
}

# -- the version ranges: floors and newest (not in the default run) -----------------------------
#: ``e2e-<backend>-torch-oldest`` (tag ``oldest``): the backend at its floor, the lowest version its
#: extra allows, pinned in OLDEST_CONSTRAINTS; today's pins for everything else, except what the
#: floor cannot run with (FLOOR_HOLDS). ``nox -t oldest`` runs these cells and ``unit-oldest``.
FLOOR_BACKENDS: tuple[str, ...] = ("mlflow", "wandb", "clearml")
OLDEST_CONSTRAINTS = "requirements/constraints-oldest.txt"
#: what a floor cannot run with at today's pin, and its own metadata does not forbid: these take
#: their pins from OLDEST_CONSTRAINTS too (each with a comment there saying why), and are installed
FLOOR_HOLDS: dict[str, tuple[str, ...]] = {
    "mlflow": ("numpy", "tensorboard", "sqlalchemy", "setuptools"),
    "wandb": (),
    "clearml": (),
}
#: ``unit-oldest``: the unit suite on the oldest Python, tracelet's own dependencies at their floors
UNIT_FLOORS: tuple[str, ...] = ("numpy", "psutil")
OLDEST_PYTHON = UNIT_PYTHONS[0]
#: ``e2e-<backend>-torch-latest`` (tag ``latest``): the backend's newest release the registry can
#: install, unpinned, with the newest of everything it pulls in; only these keep today's pin
LATEST_BACKENDS: tuple[str, ...] = ("mlflow", "wandb", "clearml")
LATEST_KEEP_PINNED: tuple[str, ...] = ("torch",)
#: the framework set of the floor and newest cells, and the part of the suite they run: what a
#: store's version can break (basic workflows, lifecycle, read-back of every record, faults, secrets)
VERSION_CELL_FRAMEWORK = "torch"
VERSION_CELL_ARGS: tuple[str, ...] = ("-m", "e2e_floor")
# ---------------------------------------------------------------------------------------------

ROOT = Path(__file__).parent
REPORTS = ROOT / "reports"
TEST_REQUIREMENTS = "requirements/test.txt"
#: what mypy needs beside the tests' requirements to check the noxfile, bench and tools
TYPECHECK_REQUIREMENTS = ("nox==2026.10.20", "types-psutil==7.2.2.20261122", "types-PyYAML==6.0.12.20261122")
CELLS = [(b, f) for b in BACKENDS for f in FRAMEWORKS if f in ONLY_WITH.get(b, FRAMEWORKS)]
E2E_SESSIONS = [f"e2e-{b}-{f}" for b, f in CELLS]
nox.options.sessions = ["lint", "typecheck", "unit", *E2E_SESSIONS, "summary"]

# uv ignores pip's configuration: hand it pip's local wheel directory (the CPU torch build),
# and never let it download an interpreter (a missing Python must be an error, not a skip).
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
if os.environ.get("PIP_FIND_LINKS") and not os.environ.get("UV_FIND_LINKS"):
    os.environ["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "WANDB_SILENT": "true",
    "PYTHONFAULTHANDLER": "1",
}

_VERSIONS_SCRIPT = """
import importlib.metadata as m, json, platform, sys
names = {names!r}
out = {{}}
for n in names:
    try:
        out[n] = m.version(n)
    except m.PackageNotFoundError:
        pass
print(json.dumps({{"installed": out, "python": platform.python_version(), "platform": sys.platform}}))
"""


def _extras(backend: str, framework: str) -> list[str]:
    return [*BACKENDS[backend], FRAMEWORKS[framework][0]]


def declared_set(backend: str, framework: str) -> list[str]:
    """The optional packages a session declares: exactly what its two axis values provide."""
    return sorted(set(PROVIDES[backend]) | set(PROVIDES[framework]))


#: compiles every installed module into the session's bytecode cache (a file that does not
#: compile, such as a package's Python 2 example, is skipped: nothing imports it)
WARM_BYTECODE = (
    "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_path('purelib'), quiet=2, workers=0)"
)


def bytecode_env(session: nox.Session) -> dict[str, str]:
    """Let the session's processes cache bytecode, inside the session's own virtualenv.

    Machines and images often export ``PYTHONDONTWRITEBYTECODE=1``. Then every process
    compiles every module it imports from source again: ``import mlflow`` takes 3.7 s
    instead of 1.4 s here, and the E2E suite starts hundreds of processes (each run's
    delivery agent, every ``mlflow server``, every trainer subprocess). The cache lives
    under the virtualenv (``PYTHONPYCACHEPREFIX``), so the checkout stays clean and a
    fresh virtualenv starts from nothing. An empty value means "unset" to Python.
    """
    return {
        "PYTHONDONTWRITEBYTECODE": "",
        "PYTHONPYCACHEPREFIX": str(Path(session.virtualenv.location) / "pycache"),
    }


def cell_name(backend: str, framework: str, versions: str = "pinned") -> str:
    """``e2e-<backend>-<framework>``, with ``-oldest`` or ``-latest`` for the version cells."""
    return f"e2e-{backend}-{framework}" + ("" if versions == "pinned" else f"-{versions}")


def _requirement_name(line: str) -> str:
    """The normalised project name a requirement or pin line is about ("" for a comment)."""
    text = line.split("#", 1)[0].strip()
    for i, char in enumerate(text):
        if not (char.isalnum() or char in "-_."):
            text = text[:i]
            break
    return text.lower().replace("_", "-").replace(".", "-")


def _pins(path: str | Path) -> dict[str, str]:
    """A constraints file's pins, by normalised name (comments dropped)."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    return {
        _requirement_name(line): line.split("#", 1)[0].strip() for line in lines if _requirement_name(line)
    }


def composed_constraints(session: nox.Session, today: str, floors: Sequence[str]) -> Path:
    """Today's pins, with the packages in ``floors`` pinned from OLDEST_CONSTRAINTS instead.

    Written into the session's virtualenv: the checkout stays clean.
    """
    oldest = _pins(OLDEST_CONSTRAINTS)
    missing = [name for name in floors if name not in oldest]
    if missing:
        session.error(f"{OLDEST_CONSTRAINTS} pins no version of {', '.join(missing)}")
    pins = {name: pin for name, pin in _pins(today).items() if name not in floors}
    pins.update({name: oldest[name] for name in floors})
    path = Path(session.virtualenv.location) / "constraints-composed.txt"
    path.write_text("\n".join(pins.values()) + "\n", encoding="utf-8")
    return path


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def newest_release(session: nox.Session, package: str) -> str | None:
    """The newest release of ``package`` the registry offers for the session's Python (None: none)."""
    python = str(
        Path(session.virtualenv.location) / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    )
    found = subprocess.run(
        [*_uv(), "pip", "compile", "--no-deps", "--no-header", "--no-annotate", "--python", python, "-"],
        input=package,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in found.stdout.splitlines():
        if _requirement_name(line) == package and "==" in line:
            return line.split("==", 1)[1].strip()
    session.warn(f"no release of {package} found: {found.stderr.strip()[-500:]}")
    return None


def _install_latest(session: nox.Session, backend: str, framework: str) -> list[str]:
    """Install the backend's newest release the registry can install; notes on what could not be.

    The newest release is tried first. When it cannot be installed here (a wheel or a dependency
    the registry lacks), that is noted and the resolver picks the newest release that can.
    """
    (package,) = BACKENDS[backend]
    notes: list[str] = []
    today = _pins(FRAMEWORKS[framework][1])
    constraints = Path(session.virtualenv.location) / "constraints-latest.txt"
    constraints.write_text("\n".join(today[name] for name in LATEST_KEEP_PINNED) + "\n", encoding="utf-8")
    requirements = ["-c", str(constraints), f".[{','.join(_extras(backend, framework))}]"]
    requirements += ["-r", TEST_REQUIREMENTS]
    target = package
    newest = newest_release(session, package)
    if newest is not None:
        # resolved first, without installing: a newest release that cannot be installed is noted
        env = {**os.environ, "VIRTUAL_ENV": session.virtualenv.location}
        trial = subprocess.run(
            [*_uv(), "pip", "install", "--dry-run", *requirements, f"{package}=={newest}"],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if trial.returncode == 0:
            target = f"{package}=={newest}"
        else:
            reason = " ".join(trial.stderr.split())[-600:]
            notes.append(f"{package} {newest}, the newest release, cannot be installed here: {reason}")
    session.install(*requirements, target)
    ran = _installed(session, (package,))["installed"]
    if isinstance(ran, dict) and ran.get(package) != newest:
        notes.append(f"ran {package} {ran.get(package)}, the newest release that can be installed here")
    for note in notes:
        session.warn(note)
    return notes


def run_e2e(session: nox.Session, backend: str, framework: str, versions: str = "pinned") -> None:
    """Install one backend and one framework set, run the E2E suite, and record the session.

    ``versions``: ``pinned`` (today's pins, the matrix), ``oldest`` (the backend at its floor) or
    ``latest`` (its newest release); the version cells run the ``e2e_floor`` part of the suite.
    """
    name = cell_name(backend, framework, versions)
    out = REPORTS / name
    if out.exists():
        for old in out.iterdir():
            if old.is_file():
                old.unlink()
        shutil.rmtree(out / "records", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    declared = declared_set(backend, framework)
    started = time.monotonic()
    status = "failed"
    notes: list[str] = []
    try:
        constraints = FRAMEWORKS[framework][1]
        project = f".[{','.join(_extras(backend, framework))}]"
        if versions == "oldest":
            floors = (*BACKENDS[backend], *FLOOR_HOLDS[backend])
            composed = composed_constraints(session, constraints, floors)
            session.install("-c", str(composed), project, "-r", TEST_REQUIREMENTS, *FLOOR_HOLDS[backend])
            _check_floors(session, floors)
        elif versions == "latest":
            notes = _install_latest(session, backend, framework)
        else:
            session.install("-c", constraints, project, "-r", TEST_REQUIREMENTS)
        env = {
            **QUIET_ENV,
            **bytecode_env(session),
            "TRACELET_E2E_INSTALL_SET": ",".join(declared),
            "TRACELET_E2E_AUDIT_FILE": str(out / "audit.json"),
            "COVERAGE_FILE": str(out / ".coverage"),
        }
        if versions == "pinned":  # what each store returned for the fixed-seed workflows: compared
            env["TRACELET_E2E_RECORDS_DIR"] = str(out / "records")  # by the summary, across the matrix
        pytest_args = [
            "tests/e2e",
            "-n",
            E2E_WORKERS,
            "-p",
            "no:cacheprovider",
            "--durations=10",
            f"--junitxml={out / 'junit.xml'}",
        ]
        pytest_args += ["-o", f"junit_suite_name={name}", "-o", "junit_family=xunit1"]
        pytest_args += [*PYTEST_ARGS.get(backend, ())]
        if versions != "pinned":
            pytest_args += VERSION_CELL_ARGS
        pytest_args += session.posargs
        # pytest-cov measures the controller, every xdist worker and (through coverage's own
        # ``patch = subprocess`` in pyproject.toml) every child process, and combines them into
        # COVERAGE_FILE; the summary merges the sessions' files.
        coverage = ["--cov=tracelet", f"--cov-config={ROOT / 'pyproject.toml'}", "--cov-report="]
        session.run("pytest", *coverage, *pytest_args, env=env)
        status = "passed"
    finally:
        meta = CellMeta(
            name, backend, framework, versions, declared, status, time.monotonic() - started, notes
        )
        _write_meta(session, out, meta)


def _installed(session: nox.Session, names: Sequence[str]) -> dict[str, object]:
    """What the session's virtualenv has: versions by distribution name, the Python, the platform."""
    printed = session.run("python", "-c", _VERSIONS_SCRIPT.format(names=list(names)), silent=True, log=False)
    if isinstance(printed, str) and printed.strip():
        facts = json.loads(printed.strip().splitlines()[-1])
        if isinstance(facts, dict):
            return facts
    return {"installed": {}, "python": None, "platform": sys.platform}


def _check_floors(session: nox.Session, floors: Sequence[str]) -> None:
    """Fail the session unless every floor package is installed at exactly its pin: the floor ran."""
    oldest = _pins(OLDEST_CONSTRAINTS)
    installed = _installed(session, floors)["installed"]
    assert isinstance(installed, dict)
    for name in floors:
        pinned = oldest[name].split("==", 1)[1].strip()
        if installed.get(name) != pinned:
            session.error(
                f"{name}: the floor is {pinned}, but {installed.get(name) or 'nothing'} was installed"
            )


#: the packages whose versions every cell records (the summary's versions table)
VERSION_NAMES: tuple[str, ...] = (
    "tracelet",
    "mlflow",
    "wandb",
    "clearml",
    "torch",
    "lightning",
    "pytorch-lightning",
    "torchvision",
    "tensorboard",
    "numpy",
    "protobuf",
    "sqlalchemy",
    "pillow",
    "psutil",
)


@dataclass(frozen=True)
class CellMeta:
    """What a cell's ``meta.json`` says besides the installed versions and the skip audit."""

    session: str
    backend: str
    framework: str
    versions: str
    declared: list[str]
    status: str
    duration: float
    notes: list[str]


def _write_meta(session: nox.Session, out: Path, cell: CellMeta) -> None:
    """``reports/<session>/meta.json``: what the summary reads (never nox's own --report)."""
    facts: dict[str, object] = {"installed": {}, "python": None, "platform": sys.platform}
    try:
        facts = _installed(session, VERSION_NAMES)
    except Exception as exc:  # the venv may not exist when the install itself failed
        session.warn(f"could not read installed versions: {exc}")
    audit_file = out / "audit.json"
    audit = json.loads(audit_file.read_text()) if audit_file.is_file() else {"verdict": "missing"}
    meta = {
        "session": cell.session,
        "backend": cell.backend,
        "framework": cell.framework,
        "versions": cell.versions,
        "declared": cell.declared,
        **facts,
        "duration_s": round(cell.duration, 2),
        "status": cell.status,
        "notes": cell.notes,
        "audit": audit,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def _make_e2e(backend: str, framework: str, versions: str = "pinned") -> None:
    def session_fn(session: nox.Session) -> None:
        run_e2e(session, backend, framework, versions)

    extras = "+".join(_extras(backend, framework))
    provides = ", ".join(declared_set(backend, framework))
    doc = {
        "pinned": f"E2E suite with exactly [{extras}] installed ({provides}).",
        "oldest": f"The e2e_floor tests with {backend} at its floor ({OLDEST_CONSTRAINTS}) and [{extras}].",
        "latest": f"The e2e_floor tests with {backend}'s newest release and [{extras}] (torch pinned).",
    }
    session_fn.__doc__ = doc[versions]
    # the version cells carry no "e2e" tag: CI's OS x Python fan-out lists the sessions tagged "e2e"
    tags = ["e2e", backend, framework] if versions == "pinned" else [versions, backend]
    nox.session(name=cell_name(backend, framework, versions), python=E2E_PYTHON, tags=tags)(session_fn)


for _backend, _framework in CELLS:
    _make_e2e(_backend, _framework)
for _backend in FLOOR_BACKENDS:
    _make_e2e(_backend, VERSION_CELL_FRAMEWORK, "oldest")
for _backend in LATEST_BACKENDS:
    _make_e2e(_backend, VERSION_CELL_FRAMEWORK, "latest")


def run_unit(session: nox.Session) -> None:
    """The unit suite, in parallel, with the session's own bytecode cache."""
    session.run(
        "pytest",
        "tests/unit",
        "-n",
        UNIT_WORKERS,
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={**QUIET_ENV, **bytecode_env(session)},
    )


@nox.session(python=UNIT_PYTHONS)
def unit(session: nox.Session) -> None:
    """Unit tests: no optional package installed, fakes and subprocesses only."""
    session.install(".", "-r", TEST_REQUIREMENTS)
    run_unit(session)


@nox.session(name="unit-oldest", python=OLDEST_PYTHON, tags=["oldest"])
def unit_oldest(session: nox.Session) -> None:
    """Unit tests on the oldest Python with tracelet's own dependencies (UNIT_FLOORS) at their floors."""
    composed = composed_constraints(session, "requirements/constraints.txt", UNIT_FLOORS)
    session.install("-c", str(composed), ".", "-r", TEST_REQUIREMENTS)
    _check_floors(session, UNIT_FLOORS)
    run_unit(session)


@nox.session(python=E2E_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=E2E_PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library and everything around it: tests, tools, bench and this file.

    The E2E framework, the summary and the benchmarks pass typed results between modules; checking them
    is what keeps those contracts honest. nox and the stubs of psutil and PyYAML are installed for it.
    """
    session.install("mypy==2.4.1", ".", "-r", TEST_REQUIREMENTS, *TYPECHECK_REQUIREMENTS)
    session.run("mypy")


@nox.session(python=E2E_PYTHON)
def docs(session: nox.Session) -> None:
    """The docs site (not in the default run): ``docs/`` and the API reference, into reports/site/.

    ``--strict``: a broken relative link, a missing page or an unresolved API reference fails it.
    ``nox -s docs -- serve`` serves the site while you edit it.
    """
    session.install("-r", "requirements/docs.txt")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(python=E2E_PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite (not in the default run): every store against its native client.

    Writes reports/bench/results.json, report.md and PNG plots, then compares with the committed
    baseline of this machine's key. ``-- --quick`` for the reduced suite, ``-- --update-baseline``
    to commit a new baseline, ``-- --strict`` to fail on a regression or a newly missed target
    (``bench/targets.py``), ``-- --only overhead,latency`` for a part of it.
    """
    session.install(
        "-c",
        "requirements/constraints.txt",
        ".[mlflow,wandb,clearml,torch]",
        "-r",
        "requirements/bench.txt",
    )
    # every measurement is a fresh process: without a bytecode cache each would compile mlflow from source
    env = {**QUIET_ENV, **bytecode_env(session)}
    # Filled before the first measurement: else whichever side imports a store's client first
    # (the first rep's first process) compiles it for everyone after, and pays seconds the other
    # side never does (a first ClearML run of 2.5-3.1 s against 1.3-1.6 s in the later reps).
    session.run("python", "-c", WARM_BYTECODE, env=env, silent=True)
    session.run("python", "bench/suite.py", "--out", str(REPORTS / "bench"), *session.posargs, env=env)


@nox.session(python=E2E_PYTHON)
def summary(session: nox.Session) -> None:
    """Merge every session's JUnit XML and coverage into reports/summary.md (works after failures)."""
    session.install(".", "-r", TEST_REQUIREMENTS)  # tracelet.testing compares the stores' records
    session.run(
        "python",
        "tools/e2e_summary.py",
        "--reports",
        str(REPORTS),
        *session.posargs,
    )
