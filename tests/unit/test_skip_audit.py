"""The skip audit and install-set check of the E2E suite (tests/e2e/audit.py)."""

from __future__ import annotations

import pytest

from tests.e2e.audit import audit, expected_skip, install_set_problems, parse_install_set, pulled_in_by

DECLARED = frozenset({"wandb", "torch"})


@pytest.mark.parametrize(
    ("requires", "platforms", "platform", "reason"),
    [
        (["wandb"], None, "linux", None),
        (["wandb", "torch"], None, "linux", None),
        (["mlflow"], None, "linux", "mlflow not installed"),
        (["wandb", "lightning"], None, "linux", "lightning not installed"),
        ([], ["linux"], "win32", "not supported on win32"),
        (["mlflow"], ["linux"], "darwin", "not supported on darwin"),
        ([], None, "linux", None),
    ],
)
def test_expected_skip_comes_from_markers_and_the_declared_set(
    requires: list[str], platforms: list[str] | None, platform: str, reason: str | None
) -> None:
    assert expected_skip(requires, platforms, DECLARED, platform) == reason


def test_framework_only_keeps_a_test_to_one_column() -> None:
    torch_column = frozenset({"mlflow", "torch"})
    lightning_column = frozenset({"mlflow", "torch", "lightning"})
    assert expected_skip(["mlflow"], None, torch_column, "linux", ["torch"]) is None
    assert (
        expected_skip(["mlflow"], None, lightning_column, "linux", ["torch"])
        == "runs in the torch column only (this is lightning)"
    )
    assert expected_skip(["mlflow"], None, frozenset({"torch"}), "linux", ["torch"]) == "mlflow not installed"
    pl_column = frozenset({"torch", "pytorch_lightning", "tensorboard"})
    assert (
        expected_skip([], None, pl_column, "linux", ["torch"])
        == "runs in the torch column only (this is pytorch_lightning)"
    )


def test_audit_passes_when_skips_match_exactly() -> None:
    expected = {"a": None, "b": "mlflow not installed"}
    observed = {"a": ("passed", None), "b": ("skipped", "mlflow not installed")}
    result = audit(expected, observed)
    assert result.verdict == "pass"
    assert result.problems == []
    assert (result.expected_skips, result.observed_skips) == (1, 1)


def test_audit_fails_on_every_kind_of_mismatch() -> None:
    expected = {
        "unexpected-skip": None,
        "ran-instead": "mlflow not installed",
        "wrong-reason": "mlflow not installed",
        "never-ran": None,
        "failed-ok": None,
    }
    observed = {
        "unexpected-skip": ("skipped", "flaky"),
        "ran-instead": ("passed", None),
        "wrong-reason": ("skipped", "clearml not installed"),
        "failed-ok": ("failed", None),
        "stray": ("passed", None),
    }
    result = audit(expected, observed)
    assert result.verdict == "fail"
    text = "\n".join(result.problems)
    assert "unexpected-skip: skipped (flaky) but its install set says it must run" in text
    assert "ran-instead: expected to skip (mlflow not installed) but passed" in text
    assert "wrong-reason: skipped with 'clearml not installed', expected 'mlflow not installed'" in text
    assert "never-ran: selected but never ran" in text
    assert "stray: ran but was not among the selected tests" in text
    assert "failed-ok" not in text  # a failure is pytest's to report, not a skip problem
    assert len(result.problems) == 5


def test_install_set_parsing() -> None:
    assert parse_install_set("wandb, torch") == DECLARED
    assert parse_install_set("") == frozenset()
    with pytest.raises(ValueError, match="unknown packages"):
        parse_install_set("tensorflow")
    with pytest.raises(ValueError, match="not set"):
        parse_install_set(None)


def test_install_set_problems_name_the_package_and_who_pulled_it_in() -> None:
    problems = install_set_problems(frozenset({"torch"}), frozenset({"pytest"}))
    assert problems[0].startswith("pytest is importable but not declared (distribution pytest ")
    assert problems[1] == "torch is declared but not importable"


def test_pulled_in_by_reads_installed_metadata() -> None:
    # pytest requires pluggy, so pluggy is "pulled in by" pytest
    assert any(p.startswith("pytest") for p in pulled_in_by("pluggy"))


def test_a_tmpfs_test_runs_as_root_on_linux_and_skips_with_its_reason_elsewhere() -> None:
    from tests.e2e.audit import MOUNT_REASON, mount_skip

    assert mount_skip("linux", 0) is None
    assert mount_skip("linux", 1000) == MOUNT_REASON
    assert mount_skip("darwin", 0) == MOUNT_REASON
    assert mount_skip("win32", None) == MOUNT_REASON
