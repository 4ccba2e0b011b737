"""Sampled softmax against values computed by hand."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the retrieval stage")

from marketrec.retrieval.losses import (  # noqa: E402
    full_softmax_loss,
    mixed_log_q,
    sampled_softmax_loss,
)

USERS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
CANDIDATES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])


def ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_plain_in_batch_and_random_negatives() -> None:
    loss = sampled_softmax_loss(
        USERS, CANDIDATES, torch.tensor([10, 11]), torch.tensor([10, 11, 12]), None, temperature=1.0
    )
    expected = (ce([1, 0, 0.6], 0) + ce([0, 1, 0.8], 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_temperature_and_weights() -> None:
    loss = sampled_softmax_loss(
        USERS,
        CANDIDATES,
        torch.tensor([10, 11]),
        torch.tensor([10, 11, 12]),
        None,
        temperature=0.5,
        weights=torch.tensor([1.0, 3.0]),
    )
    expected = (ce([2, 0, 1.2], 0) + 3 * ce([0, 2, 1.6], 1)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_accidental_hits_are_masked() -> None:
    # the random candidate is row 0's own positive item (10): it must not count against row 0
    loss = sampled_softmax_loss(
        USERS, CANDIDATES, torch.tensor([10, 11]), torch.tensor([10, 11, 10]), None, temperature=1.0
    )
    expected = (ce([1, 0], 0) + ce([0, 1, 0.8], 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # duplicated positives in the batch: each row's copy of its own item is masked too
    same = sampled_softmax_loss(
        USERS, CANDIDATES[:2], torch.tensor([10, 10]), torch.tensor([10, 10]), None, temperature=1.0
    )
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_logq_correction_subtracts_expected_counts() -> None:
    probability = torch.zeros(20, dtype=torch.float64)
    probability[10], probability[11] = 0.75, 0.25
    log_q = mixed_log_q(torch.tensor([10, 11]), torch.tensor([12]), probability, n_items=20)
    expected_q = [math.log(2 * 0.75), math.log(2 * 0.25), math.log(1 / 20)]
    assert log_q.tolist() == pytest.approx(expected_q, rel=1e-6)
    loss = sampled_softmax_loss(
        USERS,
        CANDIDATES,
        torch.tensor([10, 11]),
        torch.tensor([10, 11, 12]),
        log_q.float(),
        temperature=1.0,
    )
    row0 = [1 - expected_q[0], 0 - expected_q[1], 0.6 - expected_q[2]]
    row1 = [0 - expected_q[0], 1 - expected_q[1], 0.8 - expected_q[2]]
    assert float(loss) == pytest.approx((ce(row0, 0) + ce(row1, 1)) / 2, rel=1e-5)


def test_items_not_yet_listed_are_masked_per_row() -> None:
    # candidate 12 was listed after row 1's moment: it counts against row 0 only; a row's
    # own positive is never masked
    unavailable = torch.tensor([[False, True, False], [False, True, True]])
    loss = sampled_softmax_loss(
        USERS,
        CANDIDATES,
        torch.tensor([10, 11]),
        torch.tensor([10, 11, 12]),
        None,
        temperature=1.0,
        unavailable=unavailable,
    )
    expected = (ce([1, 0.6], 0) + ce([0, 1], 1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_full_softmax_against_the_whole_catalogue() -> None:
    # the catalogue's last column is each item's bias, added after the temperature
    catalogue = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.6, 0.8, -1.0]])
    loss = full_softmax_loss(
        USERS, catalogue, torch.tensor([2, 1]), temperature=0.5, weights=torch.tensor([1.0, 3.0])
    )
    row0 = [2 + 0.5, 0 + 0.0, 1.2 - 1.0]
    row1 = [0 + 0.5, 2 + 0.0, 1.6 - 1.0]
    expected = (ce(row0, 2) + 3 * ce(row1, 1)) / 4
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_full_softmax_masks_per_row_but_never_the_positive() -> None:
    # row 0 already touched item 1 and item 2 is not listed yet for row 1; row 1's mask on
    # its own positive (item 1) is ignored
    masked = torch.tensor([[False, True, False], [True, True, True]])
    loss = full_softmax_loss(USERS, CANDIDATES, torch.tensor([0, 1]), 1.0, masked=masked)
    expected = (ce([1, 0.6], 0) + ce([1], 0)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
