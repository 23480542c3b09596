"""Reading a run in pieces: the points kept on disk per key, the W&B log read a window at a time, and
records compared one key and one chunk at a time, with the same verdicts as whole records."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest

import tracelet
from tracelet.backends.wandb_log import (
    FIRST,
    FULL,
    LAST,
    LOG_BLOCK_SIZE,
    LOG_FRAGMENT_HEADER,
    LOG_HEADER,
    LOG_IDENT,
    LOG_MAGIC,
    MIDDLE,
    iter_log_file,
    iter_log_records,
)
from tracelet.testing import RunPoints, read_run, read_run_in_pieces
from tracelet.testing import points as points_module
from tracelet.testing.equivalence import compare
from tracelet.testing.record import RunRecord


def test_run_points_keep_each_keys_order_across_flushes_and_read_back_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(points_module, "BUFFERED", 7)  # many flushes, each mid-key
    logged: dict[str, list[tuple[int, float, float]]] = {"loss": [], "acc": [], "system/cpu": []}
    with RunPoints(tmp_path / "points") as points:
        for i in range(100):
            for key, step in (("loss", i), ("acc", 99 - i), ("system/cpu", i // 3)):
                point = (step, i / 7, 1_700_000_000.0 + i)
                points.add_point(key, *point)
                logged[key].append(point)
        bulk = [(step, step / 2, 1_800_000_000.0 + step) for step in range(25)]
        points.add_points("bulk", bulk)  # a store that returns a key whole: split across flushes too
        logged["bulk"] = bulk
        assert points.all_keys() == ["loss", "acc", "system/cpu", "bulk"]
        assert points.workflow_keys() == ["loss", "acc", "bulk"]
        assert (points.total, points.count("acc"), points.count("absent")) == (325, 100, 0)
        assert points.last_timestamp("loss") == 1_700_000_099.0
        assert points.last_timestamp("bulk") == 1_800_000_024.0
        for key, expected in logged.items():
            chunks = list(points.series(key, chunk=30))
            assert [len(c) for c in chunks] == ([30, 30, 30, 10] if key != "bulk" else [25])
            assert [tuple(p) for c in chunks for p in c] == expected
        assert list(points.points("absent")) == []
    assert not (tmp_path / "points").exists(), "closing removes what was kept"


def _fragment(kind: int, data: bytes) -> bytes:
    crc = zlib.crc32(bytes([kind]) + data) & 0xFFFFFFFF
    return LOG_FRAGMENT_HEADER.pack(crc, len(data), kind) + data


def _log(records: list[bytes]) -> bytes:
    """A transaction log framed as LevelDB (and wandb) frame one: records split at block ends."""
    out = bytearray(LOG_HEADER.pack(LOG_IDENT, LOG_MAGIC, 0))
    for record in records:
        rest, first = record, True
        while True:
            room = LOG_BLOCK_SIZE - len(out) % LOG_BLOCK_SIZE
            if room < LOG_FRAGMENT_HEADER.size:  # too short for a header: padded
                out += bytes(room)
                continue
            take = min(len(rest), room - LOG_FRAGMENT_HEADER.size)
            piece, rest = rest[:take], rest[take:]
            kind = (FULL if not rest else FIRST) if first else (LAST if not rest else MIDDLE)
            out += _fragment(kind, piece)
            first = False
            if not rest:
                break
    return bytes(out)


@pytest.mark.parametrize("window_blocks", [1, 2, 64])
def test_the_wandb_log_read_a_window_at_a_time_holds_what_the_whole_file_holds(
    tmp_path: Path, window_blocks: int
) -> None:
    generator = random.Random(7)
    # small records, records spanning blocks (and windows), one spanning several blocks
    records = [generator.randbytes(generator.choice([10, 900, 20_000, 70_000])) for _ in range(60)]
    data = _log(records)
    path = tmp_path / "run-x.wandb"
    path.write_bytes(data)
    assert list(iter_log_records(data)) == records  # the framing above is the one the parser reads
    assert list(iter_log_file(path, window_blocks)) == records
    path.write_bytes(data[: len(data) - 5])  # the last record still being written: not yielded
    assert list(iter_log_file(path, window_blocks)) == records[:-1]
    damaged = bytearray(data)
    damaged[LOG_BLOCK_SIZE + 100] ^= 0xFF  # damage in the middle of the log: said, never skipped
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="bad checksum"):
        list(iter_log_file(path, window_blocks))


def _local_run(root: Path, values: dict[str, list[tuple[int, float]]]) -> str:
    exp = tracelet.start_logging(
        exp_name="pieces", project="pieces", backend="local", backend_options={"local": {"root": str(root)}}
    )
    exp.log_params({"lr": 0.1})
    for key, series in values.items():
        for step, value in series:
            exp.log_metric(key, value, step)
    assert tracelet.stop_logging().ok
    run_id = exp.runs["local"]
    assert run_id is not None
    return run_id


def test_records_read_in_pieces_compare_as_whole_records_do(tmp_path: Path) -> None:
    base = {"loss": [(i, 1 / (i + 1)) for i in range(50)], "acc": [(i, i / 50) for i in range(50)]}
    changed_value = {**base, "loss": [(i, 1 / (i + 1) + (1 if i in (3, 9) else 0)) for i in range(50)]}
    changed_steps = {**base, "acc": [(i + (i == 40), i / 50) for i in range(50)]}
    shorter = {**base, "acc": base["acc"][:49]}
    runs = {
        name: _local_run(tmp_path / name, values)
        for name, values in {
            "base": base,
            "value": changed_value,
            "steps": changed_steps,
            "shorter": shorter,
        }.items()
    }

    def in_pieces(name: str, folder: str) -> tuple[RunRecord, RunPoints]:
        return read_run_in_pieces("local", runs[name], tmp_path / folder, root=tmp_path / name)

    reference, reference_points = in_pieces("base", "reference")
    assert reference.metrics == {}, "the points are on disk, not in the record"
    for name in ("base", "value", "steps", "shorter"):
        whole = compare(
            read_run("local", runs["base"], root=tmp_path / "base"),
            read_run("local", runs[name], root=tmp_path / name),
        )
        other, other_points = in_pieces(name, f"other-{name}")
        with other_points:
            assert (
                compare(reference, other, reference_points=reference_points, other_points=other_points)
                == whole
            )
        assert bool(whole) == (name != "base")
    reference_points.close()
