"""Names from elsewhere (TensorBoard tags, Lightning keys) are mapped, never refused mid-training."""

from __future__ import annotations

import pytest

from tracelet.validation import MAX_NAME_LENGTH, check_name, safe_name


@pytest.mark.parametrize(
    ("name", "mapped"),
    [
        ("loss", "loss"),
        ("train/loss", "train/loss"),
        ("acc@1 (top)", "acc_1__top_"),
        ("//a//b/", "a/b"),
        ("a/../b/./c", "a/b/c"),
        ("_hidden", "tb/_hidden"),
        ("tracelet/step", "tb/tracelet/step"),
        ("", "tb"),
        ("é", "tb/_"),
    ],
)
def test_names_are_mapped_as_documented(name: str, mapped: str) -> None:
    assert safe_name(name) == mapped
    assert check_name(mapped, "metric") == mapped


def test_an_over_long_name_is_cut_and_keeps_a_hash() -> None:
    long_a, long_b = "a" * 400, "a" * 399 + "b"
    assert len(safe_name(long_a)) <= MAX_NAME_LENGTH
    assert safe_name(long_a) != safe_name(long_b)
    assert check_name(safe_name(long_a), "metric")
