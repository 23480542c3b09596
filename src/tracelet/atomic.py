"""Files replaced in one step: a crash (or SIGKILL) leaves the old file or the new one, never half of one.

The spool's ``spool.json`` and the ``local`` store's ``run.json`` are read back by
``tracelet sync`` and the readers after exactly that kind of crash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` beside ``path`` (``<name>.tmp``), then rename it over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
