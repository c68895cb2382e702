"""Crossed 7s drawn onto training digits (mnist_dense/data/glyphs.py)."""

import numpy as np

from mnist_dense.data.glyphs import cross_sevens
from tooling.synthetic_mnist import sevens_and_ones


def test_a_share_of_the_sevens_gets_a_bar_across_the_stem_and_nothing_else_changes():
    images, labels = sevens_and_ones(100)
    crossed = cross_sevens(images, labels, 0.3, seed=1)
    changed = np.flatnonzero((crossed != images).any(axis=(1, 2)))
    assert len(changed) == 30 and set(labels[changed]) == {7}
    assert (crossed >= images).all()  # ink only added
    added = crossed[changed].astype(int) - images[changed]
    rows = np.flatnonzero(added.sum(axis=(0, 2)))
    # at 0.4-0.65 of the digit's 20 rows from its top at row 4, give or take the bar's width
    assert rows.min() >= 4 + 0.4 * 20 - 4 and rows.max() <= 4 + 0.65 * 20 + 4
    for bar in added:
        cols = np.flatnonzero(bar.sum(axis=0))
        row = (bar.sum(axis=1) * np.arange(28)).sum() / bar.sum()
        stem = 19 - (row - 7) * 0.4  # the stem's middle column at the bar's row
        assert cols.min() < stem - 1.5 and cols.max() > stem + 1.5  # across it, both sides


def test_the_same_seed_crosses_the_same_sevens_the_same_way_and_another_seed_others():
    images, labels = sevens_and_ones(50)
    first = cross_sevens(images, labels, 0.5, seed=3)
    assert np.array_equal(first, cross_sevens(images, labels, 0.5, seed=3))
    assert not np.array_equal(first, cross_sevens(images, labels, 0.5, seed=4))


def test_share_zero_and_no_sevens_leave_every_image_as_it_was():
    images, labels = sevens_and_ones(20)
    assert np.array_equal(cross_sevens(images, labels, 0.0, seed=0), images)
    ones = labels == 1
    assert np.array_equal(cross_sevens(images[ones], labels[ones], 1.0, seed=0), images[ones])
