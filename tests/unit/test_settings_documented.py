"""Every ``TRACELET_*`` variable the library reads is read in ``config.py`` and documented.

A variable read elsewhere is one a newcomer cannot find; one missing from the configuration page's
table (``docs/configuration.md``) or from ``config.py``'s docstring is one nobody knows to set.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "tracelet"
NAME = re.compile(r"TRACELET_[A-Z_]+[A-Z]")
#: read by the E2E suite and nox, never by the library
NOT_THE_LIBRARYS = {"TRACELET_E2E_INSTALL_SET"}


def _read_outside_config() -> set[str]:
    """Names read through ``os.environ``/``getenv`` outside config.py, or kept in a constant there."""
    reads = re.compile(r"(?:environ(?:\.get)?[\[(]|getenv\()\s*[\"'](TRACELET_[A-Z_]+)")
    constants = re.compile(r"^\w+ = [\"'](TRACELET_[A-Z_]+)", flags=re.MULTILINE)
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        if path.name != "config.py":
            text = path.read_text(encoding="utf-8")
            found.update(reads.findall(text), constants.findall(text))
    return found


def test_no_module_but_config_reads_a_tracelet_variable() -> None:
    assert _read_outside_config() == set()


def test_every_variable_the_library_names_is_in_config_and_the_docs() -> None:
    named = set()
    for path in SRC.rglob("*.py"):
        named.update(NAME.findall(path.read_text(encoding="utf-8")))
    named -= NOT_THE_LIBRARYS
    config = (SRC / "config.py").read_text(encoding="utf-8")
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(TRACELET_[A-Z_]+)`", page, flags=re.MULTILINE))
    assert named - set(NAME.findall(config)) == set(), "named in the library, not in config.py"
    assert named - table == set(), "named in the library, missing from docs/configuration.md's table"
