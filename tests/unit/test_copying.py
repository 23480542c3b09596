"""``tracelet copy`` with the store every install has (``local`` to ``local``): exactly once, resumed,
verified, and each bad input of ``docs/bad-input.md``'s copy table refused before anything is written.

The other stores, and every pair of them, are copied in the E2E suite (``tests/e2e/test_copy.py``).
"""

from __future__ import annotations

import json
import logging
import re
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tracelet
from tracelet.backends.base import RunInfo
from tracelet.backends.registry import get_backend_class
from tracelet.cli import main
from tracelet.copying import COPIED_FROM, CopyError, copy_project, copy_run
from tracelet.events import Metric
from tracelet.testing import points as points_module
from tracelet.testing import read_run
from tracelet.testing.equivalence import compare

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
BEGIN, END = "<!-- begin: generated from tests/unit/test_copying.py -->", "<!-- end: copy -->"


def _source(root: Path, tmp: Path, project: str = "copies", points: int = 300) -> str:
    """A finished local run: nested params, two keys (one stepping backwards), a tag, an artifact."""
    exp = tracelet.start_logging(
        exp_name="to-copy", project=project, backend="local", backend_options={"local": {"root": str(root)}}
    )
    exp.log_params({"lr": 0.01, "model": {"depth": 4}})
    exp.set_tags({"team": "vision"})
    for i in range(points):
        exp.log_metric("loss", 1 / (i + 1), i)
        exp.log_metric("acc", i / points, points - 1 - i)
    weights = tmp / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 40)
    exp.log_artifact(weights, "model")
    assert tracelet.stop_logging().ok
    run_id = exp.runs["local"]
    assert run_id is not None
    return run_id


def _runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/*/run.json"))


def test_a_copy_holds_what_the_source_holds_and_copying_again_adds_nothing(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_id = _source(src, tmp_path)
    result = copy_run(f"local:{src}#{run_id}", f"local:{dst}")
    assert (result.points, result.new_points, result.artifacts, result.verified) == (600, 600, 1, True)
    new_id = result.target.rpartition("#")[2]
    original, copied = read_run("local", run_id, root=src), read_run("local", new_id, root=dst)
    assert compare(original, copied) == []
    assert copied.metrics["acc"][:2] == [(299, 0.0), (298, 1 / 300)], "each key's order is the source's"
    assert copied.timestamps == original.timestamps, "the local store keeps each point's time: the source's"
    assert copied.system_tags[COPIED_FROM] == f"local:{src}#{run_id}"
    assert {k: v for k, v in copied.system_tags.items() if k != COPIED_FROM} == original.system_tags

    again = copy_run(f"local:{src}#{run_id}", f"local:{dst}")
    assert (again.new_points, again.target) == (0, result.target)
    assert len(_runs(dst)) == 1


def test_an_unfinished_copy_is_resumed_without_a_duplicate_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copier killed halfway leaves a running run cut mid-line: the next copy goes on from there."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_id = _source(src, tmp_path)
    first = copy_run(f"local:{src}#{run_id}", f"local:{dst}")
    (folder,) = _runs(dst)
    # what a kill halfway leaves: the status still "running", the events cut after half the points
    meta = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    lines = (folder / "events.jsonl").read_text().splitlines(keepends=True)
    metric_lines = [i for i, line in enumerate(lines) if '"kind": "metric"' in line]
    cut = metric_lines[len(metric_lines) // 2]
    (folder / "events.jsonl").write_text("".join(lines[:cut]) + lines[cut][:17])  # a line cut short
    held = read_run("local", first.target.rpartition("#")[2], root=dst)
    assert 0 < sum(map(len, held.metrics.values())) < 600

    with caplog.at_level(logging.WARNING, logger="tracelet"):
        resumed = copy_run(f"local:{src}#{run_id}", f"local:{dst}")
    assert "resuming the unfinished copy" in caplog.text
    assert resumed.target == first.target
    assert resumed.new_points == 600 - sum(map(len, held.metrics.values()))
    assert len(_runs(dst)) == 1
    copied = read_run("local", resumed.target.rpartition("#")[2], root=dst)
    assert compare(read_run("local", run_id, root=src), copied) == []  # every point once, in order


def test_a_finished_copy_that_differs_is_left_alone(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_id = _source(src, tmp_path, points=10)
    copy_run(f"local:{src}#{run_id}", f"local:{dst}")
    (folder,) = _runs(dst)
    events = folder / "events.jsonl"
    before = events.read_text().replace('"value": 1.0,', '"value": 7.0,', 1)
    events.write_text(before)
    with pytest.raises(CopyError, match=r"finished copy .* differs"):
        copy_run(f"local:{src}#{run_id}", f"local:{dst}")
    assert events.read_text() == before
    assert len(_runs(dst)) == 1


def test_a_project_copies_run_by_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    ids = [_source(src, tmp_path, points=5) for _ in range(2)]
    _source(src, tmp_path, project="other", points=5)
    results, failed = copy_project(f"local:{src}", f"local:{dst}", "copies")
    assert failed == {}
    assert sorted(r.source.rpartition("#")[2] for r in results) == sorted(ids)
    assert len(_runs(dst)) == 2
    # the command: one JSON object per run on stdout, exit 0; again, nothing new
    assert main(["copy", f"local:{src}", f"local:{dst}", "--project", "copies", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["new_points"] for line in lines] == [0, 0]
    assert set(lines[0]) >= {"source", "target", "points", "artifacts", "new_points", "verified"}


def test_names_and_project_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_id = _source(src, tmp_path, points=5)
    code = main(
        ["copy", f"local:{src}#{run_id}", f"local:{dst}", "--project", "moved", "--name", "n1", "--json"]
    )
    assert code == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    copied = read_run("local", line["target"].rpartition("#")[2], root=dst)
    assert (copied.project, copied.run_name) == ("moved", "n1")


# -- bad input: each row of docs/bad-input.md's copy table -------------------------------------------


@dataclass(frozen=True)
class CopyCase:
    """One row: the command as the docs show it (``SRC``/``DST`` stand for folders), and its error."""

    id: str
    shown: str
    outcome: str
    argv: Callable[[Path, Path, str], list[str]]  # (source root, target root, run id) -> arguments
    match: str


def _hand_written_run(src: Path, key: str) -> str:
    """A local run as an older writer (or a hand) left it: a metric name tracelet would not accept."""
    folder = src / "copies" / "hand-1"
    folder.mkdir(parents=True)
    meta = {"run_id": "hand-1", "project": "copies", "run_name": "hand", "status": "finished"}
    (folder / "run.json").write_text(json.dumps(meta))
    point = {"kind": "metric", "name": key, "value": 1.0, "step": 0, "timestamp": 1.0}
    (folder / "events.jsonl").write_text(json.dumps(point) + "\n")
    return "hand-1"


COPY_CASES = [
    CopyCase(
        "unknown-store",
        "tracelet copy nope:SRC#ID local:DST",
        "exit 2: not a store address, the four forms listed",
        lambda s, d, r: ["copy", f"nope:{s}#{r}", f"local:{d}"],
        "not a store address; use one of local:",
    ),
    CopyCase(
        "no-such-run",
        "tracelet copy local:SRC#nope local:DST",
        "exit 2: no local run 'nope' under SRC",
        lambda s, d, r: ["copy", f"local:{s}#nope", f"local:{d}"],
        "no local run 'nope'",
    ),
    CopyCase(
        "empty-run-id",
        "tracelet copy local:SRC# local:DST",
        "exit 2: an empty run id",
        lambda s, d, r: ["copy", f"local:{s}#", f"local:{d}"],
        "an empty run id",
    ),
    CopyCase(
        "no-run-no-project",
        "tracelet copy local:SRC local:DST",
        "exit 2: the source names no run: add '#<run id>', or --project",
        lambda s, d, r: ["copy", f"local:{s}", f"local:{d}"],
        "names no run",
    ),
    CopyCase(
        "target-is-a-run",
        "tracelet copy local:SRC#ID local:DST#ID",
        "exit 2: a target is a store, not a run",
        lambda s, d, r: ["copy", f"local:{s}#{r}", f"local:{d}#{r}"],
        "a target is a store, not a run",
    ),
    CopyCase(
        "wandb-online",
        "tracelet copy local:SRC#ID wandb:https://api.wandb.ai",
        "exit 2: W&B runs are copied offline only (a folder `wandb sync` uploads)",
        lambda s, d, r: ["copy", f"local:{s}#{r}", "wandb:https://api.wandb.ai"],
        "wandb runs are copied offline only",
    ),
    CopyCase(
        "clearml-online",
        "tracelet copy local:SRC#ID clearml:https://app.clear.ml",
        "exit 2: ClearML runs are copied offline only",
        lambda s, d, r: ["copy", f"local:{s}#{r}", "clearml:https://app.clear.ml"],
        "clearml runs are copied offline only",
    ),
    CopyCase(
        "no-such-project",
        "tracelet copy local:SRC local:DST --project nope",
        "exit 2: no run of project 'nope'",
        lambda s, d, r: ["copy", f"local:{s}", f"local:{d}", "--project", "nope"],
        "no run of project 'nope'",
    ),
    CopyCase(
        "bad-name",
        "tracelet copy local:SRC#ID local:DST (the run holds metric 'val loss')",
        "exit 2: names the metric, why, and what tracelet would map it to ('val_loss')",
        lambda s, d, r: ["copy", f"local:{s}#{_hand_written_run(s, 'val loss')}", f"local:{d}"],
        "cannot hold metric 'val loss' .* map it to 'val_loss'",
    ),
    CopyCase(
        "still-running",
        "tracelet copy local:SRC#ID local:DST (the run has not ended)",
        "exit 2: the run is still 'running'; copy it once it ended",
        lambda s, d, r: ["copy", f"local:{s}#{_running(s, r)}", f"local:{d}"],
        "still 'running'",
    ),
]


def _running(src: Path, run_id: str) -> str:
    (meta_file,) = src.glob(f"*/{run_id}/run.json")
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "status": "running"}))
    return run_id


def copy_markdown() -> str:
    lines = ["| # | command | outcome |", "|---|---|---|"]
    for number, case in enumerate(COPY_CASES, 1):
        shown = case.shown.replace("|", "\\|")
        lines.append(f"| {number} | `{shown}` | {case.outcome} |")
    return "\n".join(lines)


@pytest.mark.parametrize("case", COPY_CASES, ids=lambda c: c.id)
def test_bad_copy_input_is_refused_and_writes_nothing(
    case: CopyCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_id = _source(src, tmp_path, points=3)
    assert main(case.argv(src, dst, run_id)) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after a "copying ..." line, where one was begun
    assert err.startswith("tracelet copy: "), err
    assert re.search(case.match, err, re.IGNORECASE), err
    assert not dst.exists(), "a refused copy wrote something"


def test_the_docs_copy_table_is_this_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text, f"{DOCS} has lost its copy-table markers"
    assert END in text, f"{DOCS} has lost its copy-table markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == copy_markdown(), "docs/bad-input.md is stale: python -m tests.unit.test_copying > table"


if __name__ == "__main__":
    print(copy_markdown())


def test_a_second_copier_of_the_same_pair_waits_for_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first copier is held mid-copy (its progress callback waits): the second waits, then finds the
    first one's finished copy and adds nothing."""
    import threading

    src, dst = tmp_path / "src", tmp_path / "dst"
    run_id = _source(src, tmp_path, points=1500)  # 3,000 points: three batches, so a progress call mid-way
    release, began = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def hold(done: int, total: int) -> None:
        began.set()
        assert release.wait(30)

    def first() -> None:
        results["first"] = copy_run(f"local:{src}#{run_id}", f"local:{dst}", progress=hold)

    def second() -> None:
        results["second"] = copy_run(f"local:{src}#{run_id}", f"local:{dst}")

    one = threading.Thread(target=first)
    one.start()
    assert began.wait(30)
    with caplog.at_level(logging.WARNING, logger="tracelet"):
        two = threading.Thread(target=second)
        two.start()
        two.join(1.0)
        assert two.is_alive(), "the second copier did not wait for the first"
        release.set()
        one.join(30)
        two.join(30)
    assert "another copy of" in caplog.text
    assert results["first"].new_points == 3000
    assert results["second"].new_points == 0
    assert results["second"].target == results["first"].target
    assert len(_runs(dst)) == 1


def _big_local_run(root: Path, points: int, keys: int = 4) -> str:
    """A finished local run of ``points`` points over ``keys`` keys, written by the local backend itself."""
    backend = get_backend_class("local")({"root": str(root)})
    run_id = backend.start(RunInfo("big", "big"))
    for start in range(0, points, 1_000):
        backend.write(
            [Metric(f"k{i % keys}", i / 3, i // keys, 1.7e9 + i) for i in range(start, start + 1_000)]
        )
    backend.finish("finished")
    return run_id


def test_a_copy_holds_a_piece_of_the_run_in_memory_not_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source and the target's read-back are kept on disk per key (``read_run_in_pieces``): the
    copy's memory is bounded by the pieces (made small here), not by the run. Reading the same run
    whole is the yardstick."""
    monkeypatch.setattr(points_module, "BUFFERED", 1_000)
    monkeypatch.setattr(points_module, "CHUNK", 1_000)
    src = tmp_path / "src"
    small, big = _big_local_run(src, 1_000), _big_local_run(src, 20_000)
    copy_run(f"local:{src}#{small}", f"local:{tmp_path / 'warm'}")  # first-use imports: not measured
    tracemalloc.start()
    try:
        read_run("local", big, root=src)
        whole = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        result = copy_run(f"local:{src}#{big}", f"local:{tmp_path / 'dst'}")
        in_pieces = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.new_points, result.verified) == (20_000, True)
    assert in_pieces < whole / 2, f"the copy's peak {in_pieces:,} B against {whole:,} B to read the run whole"
