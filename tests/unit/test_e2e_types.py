"""The E2E framework's typed config and result keep the seed README's mapping contract.

The seed's custom workflow reads ``backend_config["backend"]`` and ``backend_config.get("project")``,
returns a plain dict, and its caller reads ``result["success"]``: these run without any store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.environments import LocalEnvironment
from tests.e2e.workflow import WorkflowResult


def test_a_custom_workflows_dict_becomes_fields_and_extra() -> None:
    result = WorkflowResult.from_mapping({"epochs_completed": 10, "final_loss": 0.1, "accuracy": 0.9})
    assert (result.epochs_completed, result.final_loss) == (10, 0.1)
    assert result.extra == {"accuracy": 0.9}
    assert result["epochs_completed"] == 10
    assert result["accuracy"] == 0.9
    assert result["success"] is False
    assert result.get("error") is None  # unset fields are not keys
    with pytest.raises(KeyError):
        result["record"]  # nothing was read back yet
    assert set(result) == {"success", "epochs_completed", "final_loss", "duration_s", "accuracy"}


def test_the_backend_config_offers_the_seeds_keys_read_only(tmp_path: Path) -> None:
    store = LocalEnvironment()
    try:
        config = store.config("p")
        assert dict(config) == {
            "backend": "local",
            "environment": "local",
            "project": "p",
            "backend_options": {"local": {}},
        }
        assert config.get("project", "test") == "p"
        assert config.backend_name == "local"
        with pytest.raises(KeyError):
            config["store"]  # the store is an attribute, not one of the seed's keys
        with pytest.raises(TypeError):
            config["project"] = "q"  # type: ignore[index]
    finally:
        store.teardown()
