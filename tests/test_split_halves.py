"""``stratified_halves``: the tuning/report split of a test set (issue 14's protocol)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from subspace_jax.data import MTD
from subspace_jax.data.split import Split, stratified_halves, subset

TYPES = ["good"] * 11 + ["crack"] * 6 + ["uneven"] * 7 + ["fray"] * 1


def test_halves_are_disjoint_complete_and_stratified():
    a, b = stratified_halves(TYPES, seed=3)
    assert np.intersect1d(a, b).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(len(TYPES)))
    count_a, count_b = Counter(TYPES[i] for i in a), Counter(TYPES[i] for i in b)
    for name, total in Counter(TYPES).items():
        assert count_a[name] == (total + 1) // 2 and count_b[name] == total // 2


def test_halves_are_deterministic_and_depend_on_the_seed():
    a1, _ = stratified_halves(TYPES, seed=0)
    a2, _ = stratified_halves(list(TYPES), seed=0)
    np.testing.assert_array_equal(a1, a2)
    others = [stratified_halves(TYPES, seed=s)[0] for s in range(1, 6)]
    assert any(not np.array_equal(a1, o) for o in others)


def test_interleaved_types_keep_their_positions():
    types = ["good", "crack"] * 8
    a, b = stratified_halves(types, seed=1)
    assert sorted(types[i] for i in a) == ["crack"] * 4 + ["good"] * 4
    assert sorted(types[i] for i in b) == ["crack"] * 4 + ["good"] * 4


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="defect_types"):
        stratified_halves([])
    with pytest.raises(ValueError, match="defect_types"):
        stratified_halves([1, 2])


def test_subset_keeps_rows_together():
    n = 5
    split = Split(
        np.arange(n * 2 * 2 * 3, dtype=np.uint8).reshape(n, 2, 2, 3),
        np.zeros((n, 2, 2), bool),
        np.arange(n) % 2,
        tuple(f"t{i}" for i in range(n)),
        (None,) * n,
    )
    part = subset(split, [3, 1])
    np.testing.assert_array_equal(part.images, split.images[[3, 1]])
    assert part.defect_types == ("t3", "t1") and list(part.labels) == [1, 1]
    with pytest.raises(ValueError, match="indices"):
        subset(split, [n])


@pytest.mark.mtd
def test_mtd_test_set_halves(mtd_root):
    types = [s.defect_type for s in MTD(mtd_root).samples("test")]
    a, b = stratified_halves(types, seed=0)
    assert len(a) + len(b) == 583 and len(a) == 294  # each type rounds up in A
    for name in set(types):
        n_a = sum(types[i] == name for i in a)
        assert n_a - sum(types[i] == name for i in b) in (0, 1)
