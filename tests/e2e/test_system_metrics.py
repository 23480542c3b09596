"""System metrics in every store: a trainer that burns a core and grows, read back from the store.

The trainer is a process of its own, as a user's would be: the delivery agent samples it
from outside (``TRACELET_SYSTEM_INTERVAL=1``), and the store must hold what the agent saw,
under ``system/``, apart from what the workflow logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.framework import e2e_framework
from tests.e2e.params import environments

#: burns one core for BURN_S seconds, and holds 300 MB from halfway on
TRAINER = """
import json, sys, time
import tracelet

cfg = json.load(open(sys.argv[1]))
exp = tracelet.start_logging(
    exp_name=cfg["run_name"], project=cfg["project"], backend=cfg["backend"],
    backend_options=cfg["backend_options"],
)
exp.log_metric("loss", 1.0, 0)
begin = time.monotonic()
held = None
n = 0
while time.monotonic() - begin < cfg["burn_s"]:
    if held is None and time.monotonic() - begin >= cfg["burn_s"] / 2:
        held = b"\\x01" * (300 << 20)  # written, so resident: 300 MB more RSS from here on
    n += 1
exp.log_metric("loss", 0.5, 1)
report = tracelet.stop_logging(flush_timeout=120)
json.dump({"runs": exp.runs, "ok": report.ok, "report": report.format(), "held": len(held or b"")},
          open(cfg["out"], "w"))
"""

BURN_S = 12.0


def _train(tmp_path: Path, config: Any, name: str, burn_s: float, env: dict[str, str]) -> dict[str, Any]:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    out = tmp_path / f"{name}.json"
    settings = tmp_path / f"{name}-settings.json"
    settings.write_text(
        json.dumps(
            {
                "run_name": name,
                "project": config.project,
                "backend": config.backend,
                "backend_options": config.backend_options,
                "burn_s": burn_s,
                "out": str(out),
            }
        )
    )
    done = subprocess.run(
        [sys.executable, str(script), str(settings)],
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"the trainer failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["ok"], result["report"]
    return result


@pytest.mark.framework_only("torch")  # store behaviour: once per store, not per framework set
@pytest.mark.parametrize("environment", environments())
def test_the_store_holds_what_the_trainer_used(environment: str, isolated_env: Path, tmp_path: Path) -> None:
    """One core busy for 12 s and 300 MB from halfway: the store holds both, as ``system/`` series."""
    with e2e_framework.backend_environment(environment, project="system-metrics") as config:
        sampled = {"TRACELET_SYSTEM_METRICS": "1", "TRACELET_SYSTEM_INTERVAL": "1"}
        result = _train(tmp_path, config, "burn", BURN_S, sampled)
        record = config.read(result["runs"][config.backend_name])
    assert record.metrics == {"loss": [(0, 1.0), (1, 0.5)]}  # what the workflow logged, and only that
    system = record.system_metrics
    cpu = [value for _, value in system["system/process/cpu_percent"]]
    rss = [value for _, value in system["system/process/rss_mb"]]
    assert len(cpu) >= BURN_S - 3, f"{len(cpu)} samples in {BURN_S:g} s at one a second"
    assert max(cpu) >= 60, f"the trainer burned a core; the store says at most {max(cpu):.0f}%: {cpu}"
    assert max(rss) - rss[0] >= 250, f"300 MB were allocated halfway; rss_mb went {rss}"
    steps = [step for step, _ in system["system/process/cpu_percent"]]
    assert steps == sorted(set(steps)), f"a step twice, or out of order: {steps}"
    assert all(0 <= step <= BURN_S + 30 for step in steps), steps  # whole seconds since the run began
    for key in ("system/process/threads", "system/host/cpu_percent", "system/host/memory_used_mb"):
        assert system.get(key), f"{key} is missing; the store holds {sorted(system)}"
    assert not [key for key in system if key.startswith("system/gpu")]  # no GPU here


@pytest.mark.framework_only("torch")
@pytest.mark.parametrize("environment", environments())
def test_system_metrics_off_records_none(environment: str, isolated_env: Path, tmp_path: Path) -> None:
    with e2e_framework.backend_environment(environment, project="system-metrics") as config:
        result = _train(
            tmp_path, config, "quiet", 2.5, {"TRACELET_SYSTEM_METRICS": "0", "TRACELET_SYSTEM_INTERVAL": "1"}
        )
        record = config.read(result["runs"][config.backend_name])
    assert record.system_metrics == {}
    assert record.metrics == {"loss": [(0, 1.0), (1, 0.5)]}
