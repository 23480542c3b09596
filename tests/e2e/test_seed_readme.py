"""The framework's documented snippets (``tests/e2e/README.md``, from the seed README) run as written.

The two Python blocks are read from the README and executed unchanged, one after the other in one
namespace, against the real stores. A snippet that stops matching the framework's API fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.framework import e2e_framework

pytestmark = [
    pytest.mark.e2e_comprehensive,
    pytest.mark.requires("mlflow"),  # the second snippet names the mlflow environment
    pytest.mark.framework_only("torch"),  # no framework is involved: once per backend session
]

README = Path(__file__).with_name("README.md")


def snippet(heading: str) -> str:
    """The first ```python block after ``### <heading>``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"^### {re.escape(heading)}\n.*?```python\n(.*?)```", text, re.DOTALL | re.MULTILINE)
    assert found, f"README.md has no python block under '### {heading}'"
    return found.group(1)


@pytest.fixture
def registry_restored() -> Iterator[None]:
    """The snippet registers a workflow in the shared registry; later tests must not see it."""
    saved = dict(e2e_framework.workflows)
    yield
    e2e_framework.workflows.clear()
    e2e_framework.workflows.update(saved)


def test_custom_workflow_snippets_run_as_written(
    isolated_env: Path, registry_restored: None, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {"__name__": "seed_readme"}
    for heading in ("Creating Custom Workflows", "Running Custom Tests"):
        exec(compile(snippet(heading), f"README.md: {heading}", "exec"), namespace)
    assert e2e_framework.workflows["my_workflow"] is namespace["MyCustomWorkflow"]

    assert capsys.readouterr().out.strip().endswith("Success: True")
    results = namespace["results"]["my_workflow"]
    assert sorted(results) == sorted(e2e_framework.installed_environments())
    expected_loss = [1.0 / (epoch + 1) for epoch in range(10)]
    for environment, outcome in [*results.items(), ("mlflow", namespace["result"])]:
        assert outcome.success, (environment, outcome.traceback)
        record = outcome.record  # read back from the store, not from the workflow
        assert record.run_name == "my_experiment", environment
        steps, values = zip(*record.metrics["loss"], strict=True)
        assert steps == tuple(range(10)), environment
        assert values == pytest.approx(expected_loss, rel=1e-6), environment  # ClearML keeps float32
