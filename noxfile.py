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
import sys
import time
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


def run_e2e(session: nox.Session, backend: str, framework: str) -> None:
    """Install one backend and one framework set, run the E2E suite, and record the session."""
    name = f"e2e-{backend}-{framework}"
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
    try:
        constraints = FRAMEWORKS[framework][1]
        session.install(
            "-c", constraints, f".[{','.join(_extras(backend, framework))}]", "-r", TEST_REQUIREMENTS
        )
        env = {
            **QUIET_ENV,
            **bytecode_env(session),
            "TRACELET_E2E_INSTALL_SET": ",".join(declared),
            "TRACELET_E2E_AUDIT_FILE": str(out / "audit.json"),
            "COVERAGE_FILE": str(out / ".coverage"),
            # what each store returned for the fixed-seed workflows: the summary compares them
            "TRACELET_E2E_RECORDS_DIR": str(out / "records"),
        }
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
        pytest_args += [*PYTEST_ARGS.get(backend, ()), *session.posargs]
        # pytest-cov measures the controller, every xdist worker and (through coverage's own
        # ``patch = subprocess`` in pyproject.toml) every child process, and combines them into
        # COVERAGE_FILE; the summary merges the sessions' files.
        coverage = ["--cov=tracelet", f"--cov-config={ROOT / 'pyproject.toml'}", "--cov-report="]
        session.run("pytest", *coverage, *pytest_args, env=env)
        status = "passed"
    finally:
        _write_meta(session, out, name, backend, framework, declared, status, time.monotonic() - started)


def _write_meta(
    session: nox.Session,
    out: Path,
    name: str,
    backend: str,
    framework: str,
    declared: list[str],
    status: str,
    duration: float,
) -> None:
    """``reports/<session>/meta.json``: what the summary reads (never nox's own --report)."""
    names = [
        "tracelet",
        "mlflow",
        "wandb",
        "clearml",
        "torch",
        "lightning",
        "pytorch-lightning",
        "torchvision",
        "tensorboard",
        "pillow",
    ]
    facts: dict[str, object] = {"installed": {}, "python": None, "platform": sys.platform}
    try:
        printed = session.run("python", "-c", _VERSIONS_SCRIPT.format(names=names), silent=True, log=False)
        if isinstance(printed, str) and printed.strip():
            facts = json.loads(printed.strip().splitlines()[-1])
    except Exception as exc:  # the venv may not exist when the install itself failed
        session.warn(f"could not read installed versions: {exc}")
    audit_file = out / "audit.json"
    audit = json.loads(audit_file.read_text()) if audit_file.is_file() else {"verdict": "missing"}
    meta = {
        "session": name,
        "backend": backend,
        "framework": framework,
        "declared": declared,
        **facts,
        "duration_s": round(duration, 2),
        "status": status,
        "audit": audit,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def _make_e2e(backend: str, framework: str) -> None:
    def session_fn(session: nox.Session) -> None:
        run_e2e(session, backend, framework)

    extras = "+".join(_extras(backend, framework))
    session_fn.__doc__ = (
        f"E2E suite with exactly [{extras}] installed ({', '.join(declared_set(backend, framework))})."
    )
    nox.session(
        name=f"e2e-{backend}-{framework}",
        python=E2E_PYTHON,
        tags=["e2e", backend, framework],
    )(session_fn)


for _backend, _framework in CELLS:
    _make_e2e(_backend, _framework)


@nox.session(python=UNIT_PYTHONS)
def unit(session: nox.Session) -> None:
    """Unit tests: no optional package installed, fakes and subprocesses only."""
    session.install(".", "-r", TEST_REQUIREMENTS)
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
