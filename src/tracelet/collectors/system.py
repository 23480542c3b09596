"""Versions a run ran with: tracelet, Python, the platform, torch and CUDA.

Nothing here imports torch: its version comes from the installed distribution's
metadata, and CUDA's only from a torch that the training code has already imported
(a CPU build, or no torch at all, records no ``tracelet.cuda``).
"""

from __future__ import annotations

import contextlib
import platform
import sys


def system_metadata() -> dict[str, str]:
    """``tracelet.version``, ``tracelet.python``, ``tracelet.platform``, and torch/CUDA when present."""
    import importlib.metadata  # here, not at import: it costs ~35 ms, and runs collect this off the caller

    from tracelet import __version__

    fields = {
        "tracelet.version": __version__,
        "tracelet.python": platform.python_version(),
        "tracelet.platform": platform.platform(),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        fields["tracelet.torch"] = importlib.metadata.version("torch")
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if isinstance(cuda, str) and cuda:
        fields["tracelet.cuda"] = cuda
    return fields
