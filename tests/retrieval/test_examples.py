"""Point-in-time examples: a target's history and queries are strictly in its past."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from marketrec.retrieval.examples import (
    build_sequences,
    history_window,
    query_window,
    training_targets,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def seq_from(rows, searches=()):
    events = pl.DataFrame(
        {
            "user_idx": [r[0] for r in rows],
            "item_idx": [r[1] for r in rows],
            "ts": [T0 + timedelta(seconds=r[2]) for r in rows],
            "event": [r[3] for r in rows],
            "weight": [r[4] for r in rows],
            "device_code": [0] * len(rows),
        }
    )
    search_frame = pl.DataFrame(
        {
            "user_idx": [s[0] for s in searches],
            "ts": [T0 + timedelta(seconds=s[1]) for s in searches],
            "query_code": [s[2] for s in searches],
        },
        schema={"user_idx": pl.Int64, "ts": pl.Datetime("us", "UTC"), "query_code": pl.Int64},
    )
    return build_sequences(events, search_frame, n_users=3)


# user 0: items 5,6 at t=10 (same second), 7 at 20, 5 again (purchase) at 30, 8 at 40
# user 1: items 1, 2 at t=5, 15; user 2: nothing. Rows given out of order on purpose.
ROWS = [
    (0, 8, 40, "view", 1.0),
    (1, 2, 15, "view", 1.0),
    (0, 7, 20, "click", 2.0),
    (0, 5, 10, "view", 1.0),
    (0, 6, 10, "view", 1.0),
    (1, 1, 5, "view", 1.0),
    (0, 5, 30, "purchase", 8.0),
]


def test_history_is_strictly_before_the_target() -> None:
    seq = seq_from(ROWS)
    targets = np.arange(len(seq.user))
    hist = history_window(seq, seq.user[targets], seq.run_start[targets], length=10)
    for row, pos in enumerate(targets):
        past = hist[row][hist[row] >= 0]
        assert (seq.ts[past] < seq.ts[pos]).all(), "history must not reach the target's time"
        assert (seq.user[past] == seq.user[pos]).all(), "history must be the same user's"
    # the two events sharing t=10 are not each other's history
    at_ten = np.flatnonzero((seq.user == 0) & (seq.ts == seq.ts.min() + 5))
    assert (hist[at_ten] < 0).all()
    # the last target of user 0 (t=40) sees everything before it, oldest first
    last = np.flatnonzero((seq.user == 0) & (seq.item == 8))[0]
    assert seq.item[hist[last][hist[last] >= 0]].tolist() in ([5, 6, 7, 5], [6, 5, 7, 5])


def test_targets_are_first_touches_with_the_pair_weight() -> None:
    seq = seq_from(ROWS)
    targets = training_targets(seq)
    pairs = sorted(zip(seq.user[targets].tolist(), seq.item[targets].tolist(), strict=True))
    assert pairs == [(0, 5), (0, 6), (0, 7), (0, 8), (1, 1), (1, 2)]
    first_view_of_5 = targets[(seq.user[targets] == 0) & (seq.item[targets] == 5)][0]
    assert seq.pair_weight[first_view_of_5] == 8.0  # the view that ended in a purchase
    assert seq.ts[first_view_of_5] == seq.ts.min() + 5


def test_query_window_is_strictly_before() -> None:
    seq = seq_from(ROWS, searches=[(0, 9, 1), (0, 10, 2), (0, 25, 3), (1, 1, 4)])
    users = np.array([0, 0, 0, 1, 2])
    before = np.array([10.0, 10.5, 100.0, 5.0, 5.0]) + seq.ts.min() - 5
    codes = query_window(seq, users, before, length=2)
    assert codes.tolist() == [[0, 1], [1, 2], [2, 3], [0, 4], [0, 0]]


def test_query_window_matches_a_per_user_scan_with_ties() -> None:
    rng = np.random.default_rng(3)
    # whole seconds, so many searches share a time with each other and with the moments
    searches = [(int(u), int(t), int(q)) for u, t, q in rng.integers(0, [3, 30, 50], (60, 3))]
    seq = seq_from(ROWS, searches=searches)
    base = seq.ts.min() - 5
    users = rng.integers(0, 3, 40)
    before = base + rng.integers(-2, 33, 40).astype(np.float64)
    for repeat in range(2):  # the second call reads the kept search keys
        codes = query_window(seq, users, before, length=3)
        for row, (user, moment) in enumerate(zip(users, before, strict=True)):
            mine = np.flatnonzero(seq.search_user == user)
            earlier = mine[seq.search_ts[mine] < moment][-3:]
            want = [0] * (3 - len(earlier)) + seq.search_query[earlier].tolist()
            assert codes[row].tolist() == want, (repeat, row)


def test_trend_counts_only_look_back() -> None:
    from marketrec.retrieval.training import TwoTowerData

    seq = seq_from(ROWS)
    data = TwoTowerData(seq, None, None, None, None, None, None)  # type: ignore[arg-type]
    base = seq.ts.min() - 5  # t = 0
    items = np.array([5, 5, 5, 5, 7])
    at = base + np.array([10.0, 11.0, 31.0, 30.0 + 86_400, 20.0])
    # item 5 had events at t=10 and t=30, item 7 at t=20: an event never counts at its own
    # second, and drops out of a one-day window a day later
    assert data.recent_counts(items, at, window_days=1.0).tolist() == [0, 1, 2, 1, 0]


def test_trend_shares_only_look_back_and_order_items_by_recent_share() -> None:
    from marketrec.retrieval.training import TwoTowerData

    seq = seq_from(ROWS)
    data = TwoTowerData(seq, None, None, None, None, None, None)  # type: ignore[arg-type]
    base = seq.ts.min() - 5
    items = np.array([5, 7, 5, 7])
    at = base + np.array([10.0, 10.0, 31.0, 31.0])
    shares = data.recent_shares(items, at)
    assert shares.shape == (4, 3)
    # at t=10 neither item has an earlier event: both get the same (smoothed-zero) share
    assert np.allclose(shares[0], shares[1])
    # at t=31 item 5 has two events in the window (t=10, t=30), item 7 one (t=20)
    assert (shares[2] > shares[3]).all()
    # an event after the moment (user 1 views item 5 at t=50) changes nothing before it
    future = seq_from([*ROWS, (1, 5, 50, "view", 1.0)])
    with_future = TwoTowerData(future, None, None, None, None, None, None)  # type: ignore[arg-type]
    assert np.array_equal(with_future.recent_shares(items, at), shares)


def test_share_level_keeps_the_order_that_share_buckets_blur() -> None:
    from marketrec.retrieval.inputs import share_bucket, share_level

    totals = np.full(4, 10_000)
    counts = np.array([0, 300, 310, 9_999])
    buckets, levels = share_bucket(counts, totals), share_level(counts, totals)
    assert buckets[1] == buckets[2]  # 3.0 % and 3.1 % share one bucket...
    assert levels[2] > levels[1]  # ...the number still orders them
    assert np.all(np.diff(levels) > 0)
    assert levels.dtype == np.float32 and np.all(np.abs(levels) <= 1.5)


def test_full_softmax_batches_see_nothing_after_their_rows() -> None:
    """Time-local batches: a batch's catalogue moment (its earliest example) is never after
    any of its rows, every target is visited once per epoch, and what a row may not be
    pushed towards (items its user touched before) is exactly its strict past."""
    from marketrec.retrieval.training import (
        TrainingConfig,
        _time_local_batches,
        _touched_before,
    )

    seq = seq_from(ROWS)
    targets = training_targets(seq)
    config = TrainingConfig(batch_size=2, batch_window_days=0.0)
    batches = _time_local_batches(seq, targets, config, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == sorted(targets.tolist())
    for batch in batches:
        assert (seq.ts[batch] - seq.ts[batch].min() >= 0).all()
        # with no jitter, batches are consecutive in time: no other target lies inside one
        inside = (seq.ts[targets] > seq.ts[batch].min()) & (seq.ts[targets] < seq.ts[batch].max())
        assert set(targets[inside].tolist()) <= set(batch.tolist())
    rows, items = _touched_before(seq, targets)
    for row, pos in enumerate(targets):
        past = np.flatnonzero((seq.user == seq.user[pos]) & (seq.ts < seq.ts[pos]))
        assert sorted(items[rows == row].tolist()) == sorted(seq.item[past].tolist())


def test_inserted_live_events_equal_a_rebuild_with_them() -> None:
    """Live events inserted into built sequences (`insert_events`) give exactly the arrays
    `build_sequences` gives when they are part of the data: same order, run starts, first
    touches and pair weights, and history windows that read them."""
    from marketrec.retrieval.examples import grow_users, insert_events

    live = [
        (0, 9, 35, "view", 1.0),  # between stored events of user 0
        (0, 5, 40, "click", 2.0),  # same second as a stored event; an item seen before
        (2, 3, 50, "purchase", 8.0),  # user 2 had nothing
        (1, 2, 60, "add_to_cart", 4.0),  # upgrades the pair weight of a stored pair
        (3, 4, 70, "view", 1.0),  # a user row first seen live
    ]
    codes = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4}
    base = grow_users(seq_from(ROWS), 4)
    inserted = insert_events(
        base,
        np.array([r[0] for r in live]),
        np.array([r[1] for r in live]),
        np.array([T0.timestamp() + r[2] for r in live]),
        np.array([codes[r[3]] for r in live]),
        np.zeros(len(live), dtype=np.int64),
        np.array([r[4] for r in live], dtype=np.float32),
    )
    events = pl.DataFrame(
        {
            "user_idx": [r[0] for r in ROWS + live],
            "item_idx": [r[1] for r in ROWS + live],
            "ts": [T0 + timedelta(seconds=r[2]) for r in ROWS + live],
            "event": [r[3] for r in ROWS + live],
            "weight": [r[4] for r in ROWS + live],
            "device_code": [0] * (len(ROWS) + len(live)),
        }
    )
    empty = pl.DataFrame(
        schema={"user_idx": pl.Int64, "ts": pl.Datetime("us", "UTC"), "query_code": pl.Int64}
    )
    rebuilt = build_sequences(events, empty, n_users=4)
    for name in ("user", "item", "ts", "event", "first_touch", "pair_weight", "run_start"):
        np.testing.assert_array_equal(getattr(inserted, name), getattr(rebuilt, name), name)
    np.testing.assert_array_equal(inserted.user_start, rebuilt.user_start)
    np.testing.assert_array_equal(inserted.user_end, rebuilt.user_end)
    window = history_window(inserted, np.array([3]), inserted.user_end[[3]], 2)
    assert inserted.item[window[0][window[0] >= 0]].tolist() == [4]


def test_random_live_batches_equal_a_rebuild_with_them() -> None:
    """`insert_events` recomputes first touches and pair weights only in the runs of the
    users with new events: random stored and live events (same seconds, repeated pairs,
    older live events, users first seen live) still give a rebuild's arrays."""
    from marketrec.retrieval.examples import grow_users, insert_events

    kinds = {"view": (1, 1.0), "click": (2, 2.0), "add_to_cart": (3, 4.0), "purchase": (4, 8.0)}
    rng = np.random.default_rng(11)
    empty = pl.DataFrame(
        schema={"user_idx": pl.Int64, "ts": pl.Datetime("us", "UTC"), "query_code": pl.Int64}
    )

    def rows(n: int, users: int) -> list[tuple[int, int, int, str, float]]:
        out = []
        for _ in range(n):
            kind = str(rng.choice(list(kinds)))
            out.append(
                (int(rng.integers(users)), int(rng.integers(8)), int(rng.integers(30)), kind)
            )
        return [(u, i, t, k, kinds[k][1]) for u, i, t, k in out]

    def frame(data: list[tuple[int, int, int, str, float]]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "user_idx": [r[0] for r in data],
                "item_idx": [r[1] for r in data],
                "ts": [T0 + timedelta(seconds=r[2]) for r in data],
                "event": [r[3] for r in data],
                "weight": [r[4] for r in data],
                "device_code": [0] * len(data),
            },
            schema_overrides={"user_idx": pl.Int64, "item_idx": pl.Int64},
        )

    for _ in range(40):
        stored, live = rows(int(rng.integers(1, 40)), 5), rows(int(rng.integers(1, 12)), 7)
        base = grow_users(build_sequences(frame(stored), empty, n_users=5), 7)
        inserted = insert_events(
            base,
            np.array([r[0] for r in live]),
            np.array([r[1] for r in live]),
            np.array([T0.timestamp() + r[2] for r in live]),
            np.array([kinds[r[3]][0] for r in live]),
            np.zeros(len(live), dtype=np.int64),
            np.array([r[4] for r in live], dtype=np.float32),
        )
        rebuilt = build_sequences(frame(stored + live), empty, n_users=7)
        for name in ("user", "item", "ts", "first_touch", "pair_weight", "run_start"):
            np.testing.assert_array_equal(getattr(inserted, name), getattr(rebuilt, name), name)
        np.testing.assert_array_equal(inserted.user_start, rebuilt.user_start)
        np.testing.assert_array_equal(inserted.user_end, rebuilt.user_end)
