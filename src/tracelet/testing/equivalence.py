"""Is the same run the same in two stores? Compare two :class:`RunRecord` s, allowing only what a store
changes by itself.

The readers stay raw: a record is what really landed. A few differences are inherent to a store and
not tracelet's doing (ClearML keeps NaN as 0, for one); they are listed once, in
:data:`INHERENT_DIFFERENCES`, and :func:`compare` applies exactly those. Any other difference is
reported.

What is compared: metric keys, each key's steps in order and its values (relative tolerance),
params, the user's tags, artifacts (path and sha256), images (name, step, size) and the status. What
is not: run ids and names, and the ``tracelet.*`` system tags, which hold per-run facts.

Records travel as JSON between the E2E sessions and the summary: :func:`record_to_json` and
:func:`record_from_json`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from tracelet.backends.naming import join_clearml, split_clearml
from tracelet.testing.points import RunPoints
from tracelet.testing.record import ArtifactRecord, ImageRecord, RunRecord

__all__ = ["INHERENT_DIFFERENCES", "InherentDifference", "compare", "record_from_json", "record_to_json"]

#: values agree within this relative tolerance (every store here keeps a float64)
REL_TOL = 1e-9
_MAX = sys.float_info.max


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b or math.isclose(a, b, rel_tol=REL_TOL)


@dataclass(frozen=True)
class InherentDifference:
    """One thing a store changes by itself, with the rule that recognises it.

    ``origins`` maps a value as the store keeps it to the values it may have been logged as;
    ``key`` maps a logged metric key to the key the store reads back.
    """

    backend: str
    description: str
    origins: Callable[[float], tuple[float, ...]] | None = None
    key: Callable[[str], str] | None = None


def _clearml_origins(stored: float) -> tuple[float, ...]:
    return (stored, math.nan, math.inf, -math.inf) if stored == 0 else (stored,)


def _mlflow_origins(stored: float) -> tuple[float, ...]:
    return (stored, math.copysign(math.inf, stored)) if abs(stored) == _MAX else (stored,)


def _clearml_key(key: str) -> str:
    """What ClearML reads back: its reader joins title and series again (``t/t`` becomes ``t``)."""
    return join_clearml(*split_clearml(key))


#: The one table of what each store changes by itself (docs/bad-input.md shows the same values).
INHERENT_DIFFERENCES: tuple[InherentDifference, ...] = (
    InherentDifference("clearml", "NaN, +inf and -inf are kept as 0", origins=_clearml_origins),
    InherentDifference(
        "mlflow", "+inf and -inf are kept as the largest finite float (±1.797e308)", origins=_mlflow_origins
    ),
    InherentDifference("clearml", "a key `t/t` (title equal to series) reads back as `t`", key=_clearml_key),
)


def _rules(backend: str) -> list[InherentDifference]:
    return [rule for rule in INHERENT_DIFFERENCES if rule.backend == backend]


def _origins(backend: str, stored: float) -> tuple[float, ...]:
    found: tuple[float, ...] = (stored,)
    for rule in _rules(backend):
        if rule.origins is not None:
            found += rule.origins(stored)
    return found


def _values_agree(a: float, backend_a: str, b: float, backend_b: str) -> bool:
    """Could both stored values come from one logged value?"""
    if _same(a, b):  # nearly every point: no store changed it
        return True
    return any(_same(x, y) for x in _origins(backend_a, a) for y in _origins(backend_b, b))


def _key_map(backends: Iterable[str]) -> Callable[[str], str]:
    renames = [rule.key for backend in backends for rule in _rules(backend) if rule.key is not None]

    def canonical(key: str) -> str:
        for rename in renames:
            key = rename(key)
        return key

    return canonical


#: one key's points as :func:`compare` reads them: how many, and a way to read them in order
_Series = tuple[int, Callable[[], Iterator[tuple[int, float]]]]


def _whole(points: list[tuple[int, float]]) -> _Series:
    return len(points), lambda: iter(points)


def _on_disk(points: RunPoints, key: str) -> _Series:
    return points.count(key), lambda: ((p.step, p.value) for p in points.points(key))


def _series_of(record: RunRecord, points: RunPoints | None) -> dict[str, _Series]:
    if points is None:
        return {key: _whole(series) for key, series in record.metrics.items()}
    return {key: _on_disk(points, key) for key in points.workflow_keys()}


def compare(
    reference: RunRecord,
    other: RunRecord,
    *,
    limit: int = 20,
    reference_points: RunPoints | None = None,
    other_points: RunPoints | None = None,
) -> list[str]:
    """Every difference between two records that no inherent difference explains (at most ``limit``).

    A record read in pieces (:func:`tracelet.testing.read_run_in_pieces`) is compared with its
    points (``reference_points``, ``other_points``), one key at a time, a chunk at a time.
    """
    found: list[str] = []
    a, b = reference.backend, other.backend
    canonical = _key_map({a, b})
    ours = {canonical(k): v for k, v in _series_of(reference, reference_points).items()}
    theirs = {canonical(k): v for k, v in _series_of(other, other_points).items()}
    for key in sorted(set(ours) ^ set(theirs)):
        found.append(f"metric {key!r} only in {a if key in ours else b}")
    for key in sorted(set(ours) & set(theirs)):
        (count_a, read_a), (count_b, read_b) = ours[key], theirs[key]
        steps_differ = f"metric {key!r}: steps differ ({count_a} in {a}, {count_b} in {b})"
        if count_a != count_b:
            found.append(steps_differ)
            continue
        values: list[str] = []
        for (step, x), (step_b, y) in zip(read_a(), read_b(), strict=True):
            if step != step_b:  # the steps differ: that is the one difference this key reports
                values = [steps_differ]
                break
            if not _values_agree(x, a, y, b) and len(values) < limit:
                values.append(f"metric {key!r} step {step}: {x!r} in {a}, {y!r} in {b}")
        found.extend(values)
    for name, mine, yours in (
        ("params", reference.params, other.params),
        ("tags", reference.tags, other.tags),
        (
            "artifacts",
            {x.path: x.sha256 for x in reference.artifacts},
            {x.path: x.sha256 for x in other.artifacts},
        ),
    ):
        for key in sorted(set(mine) | set(yours)):
            if mine.get(key) != yours.get(key):
                found.append(f"{name} {key!r}: {mine.get(key)!r} in {a}, {yours.get(key)!r} in {b}")
    images_a = {(i.name, i.step, i.width, i.height) for i in reference.images}
    images_b = {(i.name, i.step, i.width, i.height) for i in other.images}
    for image in sorted(images_a ^ images_b):
        found.append(f"image {image} only in {a if image in images_a else b}")
    if reference.status != other.status:
        found.append(f"status: {reference.status!r} in {a}, {other.status!r} in {b}")
    return found[:limit]


def record_to_json(record: RunRecord) -> dict[str, Any]:
    """A JSON-ready dict (NaN and ±inf as the strings ``"nan"``, ``"inf"``, ``"-inf"``)."""
    data = asdict(record)
    del data["timestamps"]  # when each point was logged: a per-run fact, never compared
    del data["not_read"]  # what the reader left unread: said by `tracelet copy`, never compared
    data["metrics"] = {
        key: [[step, value if math.isfinite(value) else repr(value)] for step, value in points]
        for key, points in record.metrics.items()
    }
    return data


def record_from_json(data: dict[str, Any]) -> RunRecord:
    """Inverse of :func:`record_to_json`."""
    return RunRecord(
        backend=data["backend"],
        run_id=data["run_id"],
        project=data["project"],
        run_name=data["run_name"],
        status=data["status"],
        params=dict(data["params"]),
        metrics={key: [(int(s), float(v)) for s, v in points] for key, points in data["metrics"].items()},
        tags=dict(data["tags"]),
        system_tags=dict(data["system_tags"]),
        artifacts=[ArtifactRecord(**item) for item in data["artifacts"]],
        images=[ImageRecord(**item) for item in data["images"]],
    )
