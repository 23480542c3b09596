"""A backend module that imports in the trainer but not in the delivery agent (a missing dependency there)."""

from __future__ import annotations

import sys

from tests.unit.fakes import MemoryBackend

if getattr(sys.modules["__main__"].__spec__, "name", None) == "tracelet.delivery.__main__":
    raise ImportError("No module named 'store_sdk' (only the agent lacks it)")


class Backend(MemoryBackend):
    name = "agent-import-fails"
