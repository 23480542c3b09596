"""The rows of ``docs/bad-input.md`` that need numpy or torch, against every real store.

The rows themselves (call, documented outcome) live in ``tests/unit/test_bad_input.py``;
the unit session has neither numpy nor torch, so those rows run here, and are read back
from the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tracelet
from tests.e2e.framework import e2e_framework
from tests.e2e.params import environments
from tests.unit.test_bad_input import CASES, Case

pytestmark = [pytest.mark.e2e_basic, pytest.mark.e2e_floor, pytest.mark.framework_only("torch")]

#: What each landing row leaves in the store: metric -> [(step, value)].
READ_BACK = {"numpy-float": {"v": [(0, 0.5)]}, "step-numpy": {"v": [(3, 1.0)]}}
NEEDS_ROWS = [c for c in CASES if c.needs]


@pytest.mark.requires("torch")  # numpy comes with torch in every framework set
@pytest.mark.parametrize("case", NEEDS_ROWS, ids=lambda c: c.id)
@pytest.mark.parametrize("environment", environments())
def test_bad_input_needing_numpy_or_torch(
    case: Case, environment: str, isolated_env: Path, tmp_path: Path
) -> None:
    with e2e_framework.backend_environment(environment, project="bad-input") as config:
        exp = tracelet.start_logging(
            exp_name=f"bad-input-{case.id}",
            project="bad-input",
            backend=config.backend_name,
            backend_options=config.backend_options,
        )
        exp.log_metric("before", 0.0, 0)
        if case.raises is not None:
            with pytest.raises(case.raises, match=case.match):
                case.run(exp, tmp_path)
        else:
            case.run(exp, tmp_path)
        report = tracelet.stop_logging()
        assert report.ok, report.format()
        record = config.read(exp.runs[config.backend_name])
    landed = {k: v for k, v in record.metrics.items() if k != "before"}
    assert landed == READ_BACK.get(case.id, {})
