"""The E2E suite's no-network check fails the test that connected outside loopback.

A generated suite runs under the real plugin (``-p tests.e2e.netaudit_plugin``): a
connection made on a background thread that swallows its error, and one made by a
child process, each fail their test; a loopback connection passes. UDP ``connect``
sends no packet, so these tests themselves stay off the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "netaudit"))
import tracelet_netaudit

REPO = Path(__file__).resolve().parents[2]

SUITE = """
import socket, subprocess, sys, threading

def udp_connect(host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((host, port))  # UDP: no packet leaves
    except OSError:
        pass
    finally:
        sock.close()

def test_background_thread_that_swallows_the_error():
    thread = threading.Thread(target=udp_connect, args=("192.0.2.1", 9))
    thread.start()
    thread.join()

def test_loopback_is_fine():
    udp_connect("127.0.0.1", 9)
    udp_connect("localhost", 9)

def test_child_process():
    code = "import socket\\nsocket.getaddrinfo('198.51.100.7', 443)"
    subprocess.run([sys.executable, "-c", code], check=True)
"""


def test_outside_connections_fail_their_test(tmp_path: Path) -> None:
    (tmp_path / "test_generated.py").write_text(textwrap.dedent(SUITE))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(tracelet_netaudit.ENV_FILE, None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.e2e.netaudit_plugin",
            "-p",
            "no:cacheprovider",
            "-rA",
            str(tmp_path / "test_generated.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "PASSED test_generated.py::test_loopback_is_fine" in out
    assert "FAILED test_generated.py::test_background_thread_that_swallows_the_error" in out
    assert "FAILED test_generated.py::test_child_process" in out
    assert "socket.connect to 192.0.2.1:9" in out
    assert "socket.getaddrinfo to 198.51.100.7:443" in out


@pytest.mark.parametrize(
    ("host", "outside"),
    [
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("::1", False),
        ("localhost", False),
        ("api.localhost", False),
        (None, False),
        ("0.0.0.0", False),
        ("10.0.0.1", True),
        ("api.wandb.ai", True),
        ("2001:db8::1", True),
    ],
)
def test_what_counts_as_outside(host: str | None, outside: bool) -> None:
    assert tracelet_netaudit.is_outside(host) is outside
