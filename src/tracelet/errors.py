"""Exceptions raised by tracelet's public API."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tracelet.report import DeliveryReport


class TraceletError(RuntimeError):
    """Base class for tracelet's own runtime errors."""


class BackendNotInstalledError(ImportError):
    """A backend was requested whose optional package is not importable.

    It subclasses :class:`ImportError` so code that already guards optional
    imports keeps working; the message always names the ``pip install`` extra.
    """

    def __init__(self, backend: str, package: str, extra: str) -> None:
        self.backend = backend
        self.package = package
        self.extra = extra
        super().__init__(
            f"backend {backend!r} needs the package {package!r}, which is not installed; "
            f'install it with: pip install "tracelet[{extra}]"',
            name=package,
        )


class UnknownBackendError(ValueError):
    """A backend name that no built-in module or entry point provides."""


class ExperimentActiveError(TraceletError):
    """``start_logging`` was called while another experiment is still active."""


class DeliveryError(TraceletError):
    """Raised by ``stop_logging`` in strict mode when anything failed or is still pending."""

    def __init__(self, report: DeliveryReport) -> None:
        self.report = report
        super().__init__(f"tracelet strict mode: not everything was delivered\n{report.format()}")


class AgentStartError(TraceletError):
    """The delivery agent could not start or open the runs; the message ends with its stderr."""

    def __init__(self, why: str, exit_code: int | None, stderr_tail: str) -> None:
        self.why = why
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        message = f"tracelet: {why}"
        if stderr_tail:
            message += f"\n--- the agent's stderr (last lines) ---\n{stderr_tail}"
        message += "\n(set TRACELET_DELIVERY=thread to deliver from this process instead)"
        super().__init__(message)


class RunOpenError(TraceletError):
    """``wait=True``: a store refused to open its run (a wrong URI, refused credentials)."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        lines = "; ".join(f"{backend}: {why}" for backend, why in errors.items())
        super().__init__(f"tracelet: could not open the run on {', '.join(errors)}: {lines}")
