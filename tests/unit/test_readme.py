"""The README stays a newcomer's page: short, and every relative link in it leads somewhere.

The docs site checks its own links (``mkdocs build --strict`` in ``nox -s docs``); the README is read on
the repository's front page, where nothing checks them.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_under_200_lines() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) < 200


def test_every_relative_link_in_the_readme_resolves() -> None:
    targets = [t for t in LINK.findall(README.read_text(encoding="utf-8")) if "://" not in t]
    assert targets, "the README links into the docs"
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert missing == []
