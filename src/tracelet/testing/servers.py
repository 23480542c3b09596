"""A real ``mlflow server`` for tests and benchmarks: one recipe, used by the E2E suite and ``bench/``.

It listens on a free 127.0.0.1 port with a sqlite backend store and a local artifact destination under
``root``, in its own process session, so that :meth:`MLflowServer.stop` ends the server and every worker
it forked, and a Ctrl-C in the terminal does not kill it half-way through a test. It can also crash
(SIGKILL, no graceful shutdown) and come back on the same port and store, which is what the outage
tests need. POSIX only (process groups); needs the ``mlflow`` package, imported by the server process
alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

__all__ = ["MLflowServer", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (a server's, a DDP rendezvous')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MLflowServer:
    """``mlflow server`` on a free 127.0.0.1 port, answering ``/health`` when the constructor returns.

    Use it as a context manager, or call :meth:`stop`. ``workers`` is the server's ``--workers``.
    ``database``: an empty database MLflow made before, copied in as the server's store when it
    has none yet (MLflow's schema migrations on a new file cost about 2 s of CPU; a test suite
    starting many servers can pay them once).
    """

    def __init__(
        self, root: Path, workers: int = 1, timeout: float = 120.0, database: Path | None = None
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if database is not None and not (root / "server.db").exists():
            shutil.copyfile(database, root / "server.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{(root / 'server.db').as_posix()}",
            "--artifacts-destination",
            (root / "server-artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()/crash()
        self.process = self._launch()
        #: seconds from launch until the server first answered ``/health``
        self.started_s = 0.0
        try:
            self.started_s = self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _launch(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # no background job runner (huey workers): tests and benchmarks need tracking only
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        env.pop("MLFLOW_TRACKING_URI", None)  # the server is the store; a client's URI means nothing here
        return subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=self.root,
        )

    def _wait_healthy(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {self.log_path.read_text(errors='replace')[-2000:]}"
                )
            if self.answers():
                return time.monotonic() - started
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not answer /health within {timeout}s")

    def answers(self) -> bool:
        """True when the server answers ``/health`` now."""
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
            return bool(r.status == 200)
        return False

    def stop(self) -> None:
        """TERM the whole process group, then KILL whatever is left: no process survives."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
            os.killpg(self.process.pid, signal.SIGKILL)
        # a killed worker runs until the kernel has torn it down: wait for that, so "stopped" means
        # no process of the server is left (MLflow 2.x's gunicorn was still there a moment later)
        deadline = time.monotonic() + 10
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._log.close()

    def crash(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole process group (no graceful shutdown) and wait until none of it runs."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.group_alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the killed server's workers still run after {timeout}s")
            time.sleep(0.1)
        self._log.close()

    def restart(self, timeout: float = 120.0) -> None:
        """The same command (port, backend store, artifact destination), in a new process group."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/crash()
        self.process = self._launch()
        self._wait_healthy(timeout)

    def group_alive(self) -> bool:
        """True while any process of the server's group still runs (zombies awaiting reaping don't count)."""
        listing = subprocess.run(
            ["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True
        ).stdout
        for line in listing.splitlines():
            pgid, _, stat = line.strip().partition(" ")
            if pgid == str(self.process.pid) and not stat.strip().startswith("Z"):
                return True
        return False

    def __enter__(self) -> MLflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
