"""The shared top-k selection's reserved places (`models.base._with_reserved`): a list holds
at least the reserved number of flagged items, found by score, without duplicates."""

from __future__ import annotations

import numpy as np

from marketrec.models.base import _top_k, _with_reserved

SCORES = np.array([[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]], dtype=np.float32)


def reserve(mask_items: list[int], slots: int, scores: np.ndarray = SCORES):
    cols, best = _top_k(scores, 5)
    mask = np.zeros(scores.shape[1], dtype=bool)
    mask[mask_items] = True
    return _with_reserved(scores, cols, best, mask, slots)


def test_best_reserved_items_take_the_last_places() -> None:
    cols, scores = reserve([7, 9], 2)
    assert cols.tolist() == [[0, 1, 2, 7, 9]]
    assert scores.tolist() == [[9, 8, 7, 2, 0]]  # each item keeps its own score


def test_reserved_items_already_in_on_merit_count() -> None:
    # item 1 made the list on merit: one more reserved item (7) is enough
    assert reserve([1, 7, 9], 2)[0].tolist() == [[0, 1, 2, 7, 3]]
    # item 4 was in the merit list's last places: it moves up, nothing is duplicated
    assert reserve([4, 9], 2)[0].tolist() == [[0, 1, 2, 4, 9]]
    # one reserved item in all: one place, which it holds on merit already
    assert reserve([4], 2)[0].tolist() == [[0, 1, 2, 3, 4]]


def test_unsellable_reserved_items_leave_the_merit_order() -> None:
    hidden = SCORES.copy()
    hidden[0, 7] = -np.inf  # not sellable to this user
    assert reserve([7, 8], 2, hidden)[0].tolist() == [[0, 1, 2, 8, 3]]
    assert reserve([], 2)[0].tolist() == [[0, 1, 2, 3, 4]]
