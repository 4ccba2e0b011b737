"""The ranker's gate: its gain over input order, measured on lists it did not train on."""

from __future__ import annotations

import numpy as np

from marketrec.ranking.features import CATEGORICAL, NUMERIC, RECENT_ITEMS, Features
from marketrec.ranking.training import RankerConfig, list_ndcg, train_ranker

CARDINALITY = {name: 8 for name in CATEGORICAL}


def lists(signal: float, n_lists: int = 120, size: int = 20, seed: int = 0):
    """Lists whose positives rank high on one numeric feature (`signal` its strength) while
    the input order is random."""
    rng = np.random.default_rng(seed)
    n = n_lists * size
    numeric = rng.normal(size=(n, len(NUMERIC))).astype(np.float32)
    hint = numeric[:, NUMERIC.index("cooc_max")]
    labels = (signal * hint + rng.normal(size=n) > 2.0).astype(np.float32)
    features = Features(
        numeric,
        rng.integers(0, 8, size=(n, len(CATEGORICAL))),
        np.zeros((n, RECENT_ITEMS), dtype=np.int64),
        np.zeros((n, RECENT_ITEMS), dtype=np.int64),
    )
    groups = np.repeat(np.arange(n_lists), size)
    return features, labels, np.ones(n), groups, rng.normal(size=n)


def test_out_of_fold_gain_covers_every_list_and_finds_a_real_signal() -> None:
    features, labels, weights, groups, order = lists(signal=3.0)
    config = RankerConfig(epochs=4, batch_size=256, folds=3, learning_rate=3e-3)
    model, report = train_ranker(features, labels, weights, groups, CARDINALITY, config, order)
    # every list with a positive is in the measured input order, not a held-out quarter
    assert report.input_order_ndcg == list_ndcg(order, labels, groups)
    assert report.gain > 0 and report.gain_t > 3
    assert 1 <= report.best_epoch <= 4
    assert len({h["fold"] for h in report.history}) == 3
    assert not model.training


def test_without_a_signal_the_gain_is_noise() -> None:
    features, labels, weights, groups, order = lists(signal=0.0)
    config = RankerConfig(epochs=3, batch_size=256, folds=3)
    _, report = train_ranker(features, labels, weights, groups, CARDINALITY, config, order)
    assert report.gain_t < 1.645
