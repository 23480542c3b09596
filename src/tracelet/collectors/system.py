"""Versions a run ran with: tracelet, Python, the platform, torch and CUDA.

Two halves, read on either side of the pipe:

- :func:`environment_metadata` (tracelet, Python, the platform, the installed torch) is the
  same for the trainer and its agent, which runs the same interpreter in the same
  environment. It is read where the runs open, off the caller's thread, once per process:
  ``importlib.metadata`` alone costs about 35 ms to import and each lookup scans
  ``sys.path``, which a sweep's every ``start_logging()`` would otherwise pay.
- :func:`caller_metadata` (CUDA) is known to the training process only: it is read from the
  torch the training code has already imported (a CPU build, or no torch, records none).
  A dictionary lookup, so it stays on the caller's thread.

Nothing here imports torch: its version comes from the installed distribution's metadata.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import sys


@functools.cache
def _environment() -> tuple[tuple[str, str], ...]:
    import importlib.metadata  # here, not at import: it costs ~35 ms

    from tracelet import __version__

    fields = {
        "tracelet.version": __version__,
        "tracelet.python": platform.python_version(),
        "tracelet.platform": platform.platform(),
    }
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        fields["tracelet.torch"] = importlib.metadata.version("torch")
    return tuple(fields.items())


def environment_metadata() -> dict[str, str]:
    """``tracelet.version``, ``tracelet.python``, ``tracelet.platform`` and ``tracelet.torch``.

    Read once per process: the installed versions do not change under a running program.
    """
    return dict(_environment())


def caller_metadata() -> dict[str, str]:
    """``tracelet.cuda``, from a torch this process has imported (no import, no field otherwise)."""
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None)
    return {"tracelet.cuda": cuda} if isinstance(cuda, str) and cuda else {}
