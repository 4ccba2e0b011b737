"""Ranking features are point-in-time: nothing at or after a row's moment changes them."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from conftest import T0, events_frame
from marketrec.data.schema import Dataset, make_dataset
from marketrec.ranking.features import NUMERIC, RankingState, Rows, compute_features

HOUR = 3600.0


def world(extra: list[tuple[str, str, int, str]] = ()) -> Dataset:
    rows = [
        ("u1", "a", 0, "view"),
        ("u1", "b", 1, "view"),
        ("u1", "b", 2, "purchase"),
        ("u2", "a", 3, "view"),
        ("u2", "c", 30, "view"),
        *extra,
    ]
    values = [None, None, 20.0, None, None] + [50.0] * len(extra)
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "category": ["Toys > Dolls", "Toys > Dolls", "Garden > Tools"],
            "price": [10.0, 20.0, 40.0],
            "created_at": [T0 - timedelta(days=3)] * 3,
        }
    )
    return make_dataset(events_frame(rows, value=values), items)


def features_at(data: Dataset, hours: float) -> np.ndarray:
    users, items = pl.Series(["u1", "u2"]), pl.Series(["a", "b", "c"])
    state = RankingState.build(data, users, items, ())
    at = T0.timestamp() + hours * HOUR
    rows = Rows(
        user=np.array([0, 0, 1]),
        item=np.array([0, 2, 2]),
        at=np.full(3, at),
        region=np.zeros(3, dtype=np.int64),
        device=np.zeros(3, dtype=np.int64),
        retrieval_score=np.array([2.0, 1.0, np.nan]),
        retrieval_rank=np.array([1.0, 2.0, 0.0]),
        sellable=np.ones(3, dtype=bool),
        group=np.array([0, 0, 1]),
    )
    return compute_features(state, rows).numeric


def col(name: str) -> int:
    return NUMERIC.index(name)


def test_values_count_only_the_past() -> None:
    f = features_at(world(), 2.5)
    assert f[0, col("user_events_log")] == pytest.approx(np.log1p(3))
    assert f[0, col("user_never_bought")] == 0.0
    assert f[0, col("user_order_value_log")] == pytest.approx(np.log1p(20.0))
    assert f[0, col("user_days_since_purchase")] == pytest.approx(np.log1p(0.5 / 24), rel=1e-4)
    assert f[2, col("user_events_log")] == pytest.approx(0.0)  # u2 acts at hour 3
    assert f[2, col("user_never_bought")] == 1.0
    assert f[0, col("item_ever_log")] == pytest.approx(np.log1p(1))  # a: u1's view only
    assert f[1, col("item_ever_log")] == 0.0  # c is first touched at hour 30
    # u1's history is two Dolls events of three (b viewed and bought): affinity for Dolls
    assert f[0, col("affinity_category")] == pytest.approx(1.0)
    assert f[1, col("affinity_category")] == 0.0
    assert f[0, col("retrieved")] == 1.0 and f[2, col("retrieved")] == 0.0


def test_events_at_or_after_the_moment_change_nothing() -> None:
    before = features_at(world(), 2.0)
    # a purchase at exactly the moment (hour 2: u1 bought b then in the base world too, so
    # use other items), and later ones
    future = [("u1", "c", 2, "purchase"), ("u2", "a", 2, "view"), ("u1", "a", 40, "click")]
    np.testing.assert_allclose(features_at(world(future), 2.0), before)
    # the same events an hour earlier are the past: they must show
    past = [("u1", "c", 1, "purchase"), ("u2", "a", 1, "view")]
    assert not np.allclose(features_at(world(past), 2.0), before)


def test_chunked_computation_equals_one_pass() -> None:
    data = world()
    state = RankingState.build(data, pl.Series(["u1", "u2"]), pl.Series(["a", "b", "c"]), ())
    n = 60
    group = np.repeat(np.arange(12), 5)  # 12 lists of 5 candidates
    rows = Rows(
        user=group % 2,
        item=np.arange(n) % 3,
        at=T0.timestamp() + (group % 4) * HOUR,
        region=np.zeros(n, dtype=np.int64),
        device=np.zeros(n, dtype=np.int64),
        retrieval_score=np.linspace(0, 1, n),
        retrieval_rank=(np.arange(n) % 5 + 1).astype(float),
        sellable=np.ones(n, dtype=bool),
        group=group,
    )
    whole, chunked = compute_features(state, rows), compute_features(state, rows, chunk_rows=7)
    for name in ("numeric", "categorical", "recent", "recent_category"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name))


def test_explanations_attribute_the_score_to_the_groups_that_made_it() -> None:
    from marketrec.ranking.model import Ranker
    from marketrec.ranking.training import explain

    data = world()
    state = RankingState.build(data, pl.Series(["u1", "u2"]), pl.Series(["a", "b", "c"]), ())
    features = compute_features(
        state,
        Rows(
            user=np.array([0, 0]),
            item=np.array([0, 2]),
            at=np.full(2, T0.timestamp() + 5 * HOUR),
            region=np.zeros(2, dtype=np.int64),
            device=np.zeros(2, dtype=np.int64),
            retrieval_score=np.array([3.0, 1.0]),
            retrieval_rank=np.array([1.0, 2.0]),
            sellable=np.ones(2, dtype=bool),
            group=np.zeros(2, dtype=np.int64),
        ),
    )
    model = Ranker(state.cardinality)  # untrained: the score is the retrieval prior alone
    model.eval()
    reasons = explain(model, features)
    z = features.numeric[:, NUMERIC.index("retrieval_z")]
    for row, reason in enumerate(reasons):
        assert reason["retrieval"] == pytest.approx(float(z[row]), abs=1e-3)  # weight 1, mean 0
        assert all(abs(v) < 1e-6 for k, v in reason.items() if k != "retrieval")


def test_without_clock_blanks_only_the_clock_features() -> None:
    from marketrec.ranking.features import (
        CATEGORICAL,
        CLOCK_CATEGORICAL,
        CLOCK_NUMERIC,
        NUMERIC,
        Features,
        without_clock,
    )

    rng = np.random.default_rng(0)
    features = Features(
        rng.random((4, len(NUMERIC))).astype(np.float32) + 1.0,
        rng.integers(1, 5, (4, len(CATEGORICAL))),
        rng.integers(1, 5, (4, 3)),
        rng.integers(1, 5, (4, 3)),
    )
    blank = without_clock(features)
    for j, name in enumerate(NUMERIC):
        expected = 0.0 if name in CLOCK_NUMERIC else features.numeric[:, j]
        np.testing.assert_array_equal(blank.numeric[:, j], expected)
    for j, name in enumerate(CATEGORICAL):
        expected = 0 if name in CLOCK_CATEGORICAL else features.categorical[:, j]
        np.testing.assert_array_equal(blank.categorical[:, j], expected)
    assert features.numeric.min() >= 1.0  # the input is left as it was


def test_absorbed_live_events_equal_a_rebuild_with_them() -> None:
    """`RankingState.absorb` (live events) gives the state `build` gives with the events in
    the data, so the ranker's counters, affinities and trends read live events exactly."""
    extra = [("u1", "c", 40, "purchase"), ("u2", "a", 1, "view"), ("u1", "a", 50, "rating")]
    users, items = pl.Series(["u1", "u2"]), pl.Series(["a", "b", "c"])
    rebuilt = RankingState.build(world(extra), users, items, ())
    live = world(extra).events.tail(len(extra))
    absorbed = RankingState.build(world(), users, items, ()).absorb(
        np.array([0 if u == "u1" else 1 for u in live.get_column("user_id")]),
        np.array(["abc".index(i) for i in live.get_column("item_id")]),
        live.get_column("ts").dt.epoch("us").cast(pl.Float64).to_numpy() / 1e6,
        live.get_column("event").to_numpy(),
        live.get_column("value").fill_null(0.0).to_numpy(),
        n_users=3,
    )
    for name in ("user_codes", "ev_item", "ev_ts", "ev_last_purchase", "purchases_cum"):
        np.testing.assert_array_equal(getattr(absorbed, name), getattr(rebuilt, name), name)
    for name in ("spend_cum", "rating_sum_cum", "ratings_cum"):
        np.testing.assert_allclose(getattr(absorbed, name), getattr(rebuilt, name))
    np.testing.assert_array_equal(absorbed.item_counter.codes, rebuilt.item_counter.codes)
    np.testing.assert_array_equal(absorbed.item_counter.times, rebuilt.item_counter.times)
    assert absorbed.user_region.tolist() == [0, 0, 0]  # a third row, first seen live


def _brute_similarity(users, items, ts, a: int, b: int, at: float, window: int) -> float:
    """Co-occurrence similarity of items a and b from the events strictly before `at`."""
    from marketrec.ranking.features import COOC_SHRINK

    firsts: dict[int, dict[int, float]] = {}
    for u, i, t in zip(users, items, ts, strict=True):
        firsts.setdefault(int(u), {}).setdefault(int(i), float(t))
    together = users_a = users_b = 0
    for touched in firsts.values():
        order = sorted(touched, key=lambda i: touched[i])  # first touches in time order
        seen = {i for i in order if np.floor(touched[i]) < np.floor(at)}
        users_a += a in seen
        users_b += b in seen
        if a in seen and b in seen and abs(order.index(a) - order.index(b)) <= window:
            together += 1
    return together / (np.sqrt(users_a * users_b) + COOC_SHRINK)


def test_cooccurrence_counts_only_pairs_known_before_the_moment() -> None:
    """Similarity at any moment (before, inside and after the events; the last through the
    serving path) equals a count from the events strictly before it."""
    from marketrec.ranking.features import Cooccurrence

    rng = np.random.default_rng(4)
    n = 400
    users = np.sort(rng.integers(0, 30, n))
    ts = np.empty(n)
    for u in np.unique(users):  # sorted by user, then time
        mine = users == u
        ts[mine] = np.sort(rng.uniform(0, 1000, mine.sum()))
    items = rng.integers(0, 12, n)
    window = 3
    cooc = Cooccurrence.build(users, items, ts, window)
    anchors = np.array([[0, 1, 2, -1], [3, 4, 5, 6]] * 4)
    candidates = np.array([7, 8] * 4)
    moments = np.repeat([-5.0, 300.0, 700.0, 2000.0], 2)
    got = cooc.similarity(anchors, candidates, moments)
    for r in range(len(candidates)):
        for c in range(anchors.shape[1]):
            if anchors[r, c] < 0:
                assert got[r, c] == 0.0
                continue
            expected = _brute_similarity(
                users, items, ts, anchors[r, c], candidates[r], moments[r], window
            )
            assert got[r, c] == pytest.approx(expected, rel=1e-5, abs=1e-7), (r, c)
    assert got[-2:].max() > 0  # pairs exist by the end
    assert got[:2].max() == 0  # and none before the first event
    # an item listed after the state was built (a column past every pair) is like none
    listed_live = cooc.similarity(np.array([[0, 1]]), np.array([500]), np.array([2000.0]))
    assert listed_live.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("dense", [True, False])
def test_companion_scores_sum_the_weights_from_the_history_before_the_moment(dense) -> None:
    """The companion's score of a candidate is the sum of its weights from the distinct
    items the user touched strictly before the row's moment (dense and sparse weights alike),
    seen through its within-list z score and rank; items listed after the fit score 0."""
    from scipy import sparse

    from marketrec.ranking.companion import Companion

    weights = np.array([[0.0, 1.0, 2.0], [4.0, 0.0, 8.0], [16.0, 32.0, 0.0]], np.float32)
    companion = Companion("test", weights if dense else sparse.csr_matrix(weights))
    state = RankingState.build(
        world(), pl.Series(["u1", "u2"]), pl.Series(["a", "b", "c"]), (), companion
    )
    at = T0.timestamp() + 2.5 * HOUR  # u1 touched a and b (b twice); u2 nothing yet
    n = 4
    rows = Rows(
        user=np.array([0, 0, 0, 1]),
        item=np.array([0, 1, 2, 2]),
        at=np.full(n, at),
        region=np.zeros(n, dtype=np.int64),
        device=np.zeros(n, dtype=np.int64),
        retrieval_score=np.array([3.0, 2.0, 1.0, 1.0]),
        retrieval_rank=np.array([1.0, 2.0, 3.0, 1.0]),
        sellable=np.ones(n, dtype=bool),
        group=np.array([0, 0, 0, 1]),
    )
    f = compute_features(state, rows).numeric
    # u1: a ← b 4, b ← a 1, c ← a + b 2 + 8 = 10 (b counted once)
    scores = np.array([4.0, 1.0, 10.0])
    z = (scores - scores.mean()) / scores.std(ddof=1)
    np.testing.assert_allclose(f[:3, col("companion_z")], z, rtol=1e-5)
    np.testing.assert_allclose(f[:3, col("companion_rank_log")], np.log1p([2.0, 3.0, 1.0]))
    assert f[3, col("companion_z")] == 0.0  # u2 has no history before the moment
    # a later moment brings u2's view of a (hour 3): c ← a = 2
    later = compute_features(state, dataclasses.replace(rows, at=np.full(n, at + HOUR)))
    assert later.numeric[3, col("companion_rank_log")] == pytest.approx(np.log1p(1.0))
    listed_live = companion.scores(
        sparse.csr_matrix(np.ones((1, 4), np.float32)), np.array([0]), np.array([3])
    )
    assert listed_live.tolist() == [0.0]


def test_without_a_companion_its_features_are_zero() -> None:
    f = features_at(world(), 2.5)
    assert not f[:, [col("companion_z"), col("companion_rank_log")]].any()
