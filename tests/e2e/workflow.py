"""What a workflow is, and what it returns: the base class and the typed results.

A workflow trains for real, logs through tracelet, and records what it logged (:class:`Expected`). It
returns a :class:`WorkflowResult`; the framework then reads every run back from its store and fills in
``records``. The seed README's custom workflows return a plain dict and index the result by key: a
:class:`WorkflowResult` is also a read-only mapping of its fields, and a custom workflow's dict lands in
it, the keys that are not fields in ``extra``.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import tracelet
from tests.e2e.environments import BackendConfig
from tests.e2e.expectations import Expected
from tracelet.testing import RunRecord


@dataclass(eq=False)
class Trial:
    """One run a workflow made, and what its stores hold (``records``, filled in by the framework)."""

    expected: Expected | None = None
    run_id: str | None = None
    #: ``Experiment.runs``: the run id in each store it went to (``None`` where a run never opened)
    runs: dict[str, str | None] | None = None
    records: dict[str, RunRecord] = field(default_factory=dict)

    @property
    def record(self) -> RunRecord:
        """What the (first) store holds for the run."""
        return next(iter(self.records.values()))


@dataclass(eq=False)
class WorkflowResult(Trial, Mapping[str, Any]):
    """What ``run_workflow`` returns: the run, the training outcome, and whether everything landed."""

    success: bool = False
    report: tracelet.DeliveryReport | None = None
    initial_loss: float | None = None
    final_loss: float | None = None
    epochs_completed: int | None = None
    #: a workflow of several runs (a sweep): each is read back and verified
    trials: list[Trial] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    duration_s: float = 0.0
    #: what a custom workflow's dict held besides the fields above
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, returned: Mapping[str, Any]) -> WorkflowResult:
        """A custom workflow's plain dict: its keys that are fields become fields, the rest ``extra``."""
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in returned.items() if k in names}
        return cls(**known, extra={k: v for k, v in returned.items() if k not in names})

    def _keys(self) -> list[str]:
        """The fields that hold something (not ``None``, not an empty list or dict), then ``extra``'s keys."""
        present = [f.name for f in fields(self) if f.name != "extra" and _holds(getattr(self, f.name))]
        return [*present, *(["record"] if self.records else []), *self.extra]

    def __getitem__(self, key: str) -> Any:
        if key in self.extra:
            return self.extra[key]
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())


def _holds(value: object) -> bool:
    return value is not None and not (isinstance(value, list | dict) and not value)


class TrainingWorkflow(ABC):
    """A realistic training run that logs through tracelet and records what it logged."""

    requires: ClassVar[tuple[str, ...]] = ("torch",)

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        self.name = name
        #: the workflow's own settings (epochs, learning rate, ...), as the seed README passes them
        self.config = config or {}

    @abstractmethod
    def run(self, backend_config: BackendConfig) -> WorkflowResult | Mapping[str, Any]:
        """Train, log through tracelet, and say what was logged (a custom workflow may return a dict)."""

    @abstractmethod
    def get_expected_metrics(self) -> list[str]:
        """The metric keys this workflow logs."""

    def validate_results(self, results: WorkflowResult) -> bool:
        """Training itself worked: the loss went down."""
        assert results.initial_loss is not None
        assert results.final_loss is not None
        return results.final_loss < results.initial_loss

    def start(self, backend_config: BackendConfig, expected: Expected) -> tracelet.Experiment:
        return tracelet.start_logging(
            exp_name=expected.run_name,
            project=expected.project,
            backend=backend_config.backend,
            backend_options=backend_config.backend_options,
        )

    def results(
        self,
        backend_config: BackendConfig,
        exp: tracelet.Experiment,
        expected: Expected,
        report: tracelet.DeliveryReport,
        initial_loss: float,
        final_loss: float,
        epochs: int,
        result_type: type[WorkflowResult] = WorkflowResult,
    ) -> WorkflowResult:
        """What ``run`` returns: the record to compare, the run ids, the report and the training outcome
        (as ``result_type``, a workflow's own subclass where it says more)."""
        backend = backend_config.backend
        return result_type(
            expected=expected,
            # one store: its run id; several (the ``all`` environment): read every one through ``runs``
            run_id=exp.runs[backend] if isinstance(backend, str) else None,
            runs=dict(exp.runs),
            report=report,
            initial_loss=initial_loss,
            final_loss=final_loss,
            epochs_completed=epochs,
        )

    def new_expected(self, backend_config: BackendConfig) -> Expected:
        return Expected(project=backend_config.project, run_name=f"{self.name}-{uuid.uuid4().hex[:8]}")
