"""Point-in-time activity codes: `time_key` packs (key, whole second) for binary search."""

from __future__ import annotations

import numpy as np

from marketrec.features.activity import _TS_BITS, ActivityCounter, key_of, time_key


def _reference(keys: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The definition: NaN reads as 0, then floor, then clip to the code's range."""
    seconds = np.floor(np.nan_to_num(ts, nan=0.0))
    seconds = np.clip(seconds, 0, 2**_TS_BITS - 1).astype(np.int64)
    return (keys.astype(np.int64) << _TS_BITS) | seconds


def test_time_key_matches_its_definition_on_edge_values() -> None:
    edges = [np.nan, -np.inf, np.inf, -0.5, -3.0, 0.0, 0.2, 1.7, 1e9 + 0.99]
    edges += [2.0**_TS_BITS - 0.5, 2.0**_TS_BITS, 2.0**40]
    ts = np.concatenate([edges, np.random.default_rng(0).uniform(-1e3, 2e10, 10_000)])
    keys = np.arange(len(ts)) % 977
    codes = time_key(keys, ts)
    assert (codes == _reference(keys, ts)).all()
    assert (key_of(codes) == keys).all()


def test_counter_counts_only_events_strictly_before_the_moment() -> None:
    counter = ActivityCounter.build(np.array([1, 1, 1, 2]), np.array([10.0, 20.0, 30.0, 5.0]))
    counts = counter.counts(np.array([1, 1, 2]), np.array([20.0, 31.0, np.nan]), [None, 15.0])
    assert counts[0].tolist() == [1, 3, 0]  # ever: before 20 only the event at 10
    assert counts[1].tolist() == [1, 2, 0]  # the 15 s before: (5, 20) and (16, 31)
