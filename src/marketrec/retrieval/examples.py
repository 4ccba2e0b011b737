"""Point-in-time training examples and user state.

Every item event is a training target; the user's state for it is the history *strictly
before* its timestamp (events sharing the target's second are not history), so no example
ever sees its own future. The same arrays give a user's current state at serving time: the
history then simply ends at the user's last event. Everything is index arithmetic on sorted
arrays, with no Python loop over events.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import polars as pl

from marketrec.retrieval.inputs import EVENT_CODES


@dataclass(frozen=True)
class Sequences:
    """Item events sorted by (user, time) plus each user's searches, as flat arrays."""

    user: np.ndarray  # (n,) user row
    item: np.ndarray  # (n,) item index
    ts: np.ndarray  # (n,) epoch seconds (float64)
    event: np.ndarray  # (n,) event code
    device: np.ndarray  # (n,) device code
    weight: np.ndarray  # (n,) event weight
    first_touch: np.ndarray  # (n,) bool: the user's first event with this item
    pair_weight: np.ndarray  # (n,) strongest event weight of this (user, item) pair
    run_start: np.ndarray  # (n,) first position of the user's events at this same timestamp
    user_start: np.ndarray  # (n_users,) first position of each user
    user_end: np.ndarray  # (n_users,) one past the last position
    search_user: np.ndarray  # (m,) searches sorted by (user, time)
    search_ts: np.ndarray  # (m,)
    search_query: np.ndarray  # (m,) query code (row of the query vector table)
    search_user_start: np.ndarray  # (n_users,)
    search_user_end: np.ndarray  # (n_users,)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"seq_{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Sequences:
        return cls(**{k: arrays[f"seq_{k}"] for k in cls.__dataclass_fields__})


def build_sequences(
    item_events: pl.DataFrame,
    searches: pl.DataFrame,
    n_users: int,
) -> Sequences:
    """`item_events`: user_idx, item_idx, ts, event, weight, device_code;
    `searches`: user_idx, ts, query_code. Both in any order."""
    ev = (
        item_events.with_row_index("_row")
        .with_columns(_t=pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6)
        .sort("user_idx", "_t", "_row")
    )
    user = ev.get_column("user_idx").to_numpy().astype(np.int64)
    ts = ev.get_column("_t").to_numpy()
    n = len(user)
    idx = np.arange(n)
    change = np.ones(n, dtype=bool)
    if n:
        change[1:] = (user[1:] != user[:-1]) | (ts[1:] != ts[:-1])
    run_start = np.maximum.accumulate(np.where(change, idx, 0)) if n else idx
    codes = pl.DataFrame(
        {"event": list(EVENT_CODES), "code": list(EVENT_CODES.values())},
        schema={"event": pl.String, "code": pl.Int64},
    )
    event = (
        ev.select("event")
        .with_row_index("p")
        .join(codes, on="event", how="left")
        .sort("p")
        .get_column("code")
        .fill_null(0)
        .to_numpy()
    )
    pairs = ev.select(
        first=pl.struct("user_idx", "item_idx").is_first_distinct(),
        best=pl.col("weight").max().over("user_idx", "item_idx"),
    )
    starts, ends = _segments(user, n_users)
    se = searches.with_columns(_t=pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6).sort(
        "user_idx", "_t"
    )
    s_user = se.get_column("user_idx").to_numpy().astype(np.int64)
    s_starts, s_ends = _segments(s_user, n_users)
    return Sequences(
        user=user,
        item=ev.get_column("item_idx").to_numpy().astype(np.int64),
        ts=ts,
        event=event.astype(np.int64),
        device=ev.get_column("device_code").to_numpy().astype(np.int64),
        weight=ev.get_column("weight").to_numpy().astype(np.float32),
        first_touch=pairs.get_column("first").to_numpy(),
        pair_weight=pairs.get_column("best").to_numpy().astype(np.float32),
        run_start=run_start.astype(np.int64),
        user_start=starts,
        user_end=ends,
        search_user=s_user,
        search_ts=se.get_column("_t").to_numpy(),
        search_query=se.get_column("query_code").to_numpy().astype(np.int64),
        search_user_start=s_starts,
        search_user_end=s_ends,
    )


def _segments(sorted_users: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    users = np.arange(n_users)
    return (
        np.searchsorted(sorted_users, users, "left").astype(np.int64),
        np.searchsorted(sorted_users, users, "right").astype(np.int64),
    )


def history_window(seq: Sequences, users: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """(len(users), length) positions of each user's last `length` events before `ends`
    (exclusive), oldest first, -1 = padding."""
    pos = ends[:, None] - length + np.arange(length)[None, :]
    valid = pos >= seq.user_start[users][:, None]
    return np.where(valid, pos, -1)


def query_window(seq: Sequences, users: np.ndarray, before: np.ndarray, length: int) -> np.ndarray:
    """(len(users), length) query codes of each user's last `length` searches strictly before
    time `before`, 0 = padding."""
    if length == 0 or len(seq.search_user) == 0:
        return np.zeros((len(users), length), dtype=np.int64)
    # Per-user "count of searches before t": one global searchsorted on integer keys
    # (user, rank of time), exact for any timestamps; the searches' keys are kept while the
    # search arrays are the same objects (a one-user request ranked every search time anew)
    times, search_keys, stride = _search_keys(seq)
    # t's rank: 2 × the distinct search times before it, between a search at the time before
    # (odd, lower) and one at t itself or later (odd, higher): "strictly before" exactly
    rank = 2 * np.searchsorted(times, before.astype(np.float64), "left")
    ends = np.searchsorted(search_keys, users.astype(np.int64) * stride + rank, "left")
    lo = seq.search_user_start[users]
    pos = ends[:, None] - length + np.arange(length)[None, :]
    valid = pos >= lo[:, None]
    return np.where(valid, seq.search_query[np.where(valid, pos, 0)], 0)


_search_key_cache: list[tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, int]]] = []


def _search_keys(seq: Sequences) -> tuple[np.ndarray, np.ndarray, int]:
    """(distinct search times sorted, each search's key user × stride + 2 × its time's rank
    + 1, stride), for the last search arrays asked about."""
    for user, ts, keys in _search_key_cache:
        if user is seq.search_user and ts is seq.search_ts:
            return keys
    times, rank = np.unique(seq.search_ts, return_inverse=True)
    stride = 2 * len(times) + 2
    keys = (times, seq.search_user.astype(np.int64) * stride + 2 * rank + 1, stride)
    _search_key_cache[:] = [(seq.search_user, seq.search_ts, keys)]
    return keys


def training_targets(seq: Sequences) -> np.ndarray:
    """Positions used as targets: each user's first event with each item, weighted later by
    the strongest event of that pair (a view that ended in a purchase counts as a purchase).

    Repeat events on an item the user already touched are history, not targets: served
    recommendations leave seen items out, so learning to predict them would waste capacity
    (a funnel's click after its view would otherwise dominate). A target's history may be
    empty: a new user's first action teaches the towers to use profile and context.
    """
    return np.flatnonzero(seq.first_touch)


def grow_users(seq: Sequences, n_users: int) -> Sequences:
    """The same sequences for `n_users` user rows (the new rows: no events, no searches)."""
    extra = n_users - len(seq.user_start)
    if extra <= 0:
        return seq
    n, m = len(seq.user), len(seq.search_user)
    return dataclasses.replace(
        seq,
        user_start=np.r_[seq.user_start, np.full(extra, n, dtype=np.int64)],
        user_end=np.r_[seq.user_end, np.full(extra, n, dtype=np.int64)],
        search_user_start=np.r_[seq.search_user_start, np.full(extra, m, dtype=np.int64)],
        search_user_end=np.r_[seq.search_user_end, np.full(extra, m, dtype=np.int64)],
    )


def insert_events(
    seq: Sequences,
    user: np.ndarray,
    item: np.ndarray,
    ts: np.ndarray,
    event: np.ndarray,
    device: np.ndarray,
    weight: np.ndarray,
) -> Sequences:
    """`seq` with item events that arrived after it was built (live events), each placed in
    its user's run by time (after stored events of the same second), so every invariant of
    `build_sequences` holds again: (user, time) order, run starts, first touches and pair
    weights. Rows must exist already (`grow_users`).

    Cost: one copy of the arrays per call, plus a sort of the affected users' own events
    (not of every stored pair: a live event costs the same at any history size); a user's
    history window then reads the new events like any other."""
    if len(user) == 0:
        return seq
    order = np.lexsort((ts, user))
    user, item, ts = user[order], item[order], ts[order]
    event, device, weight = event[order], device[order], weight[order]
    # insertion points in the old arrays: within each user's run, after every event at or
    # before the new event's time
    where = np.empty(len(user), dtype=np.int64)
    bounds = np.flatnonzero(np.r_[True, user[1:] != user[:-1], True])
    for lo, hi in pairwise(bounds):
        start, end = seq.user_start[user[lo]], seq.user_end[user[lo]]
        where[lo:hi] = start + np.searchsorted(seq.ts[start:end], ts[lo:hi], "right")
    new_user = np.insert(seq.user, where, user)
    new_ts = np.insert(seq.ts, where, ts)
    new_item = np.insert(seq.item, where, item)
    new_weight = np.insert(seq.weight, where, weight.astype(np.float32))
    n = len(new_user)
    idx = np.arange(n)
    change = np.ones(n, dtype=bool)
    change[1:] = (new_user[1:] != new_user[:-1]) | (new_ts[1:] != new_ts[:-1])
    rows = np.arange(len(seq.user_start))
    user_start = seq.user_start + np.searchsorted(user, rows, "left")
    user_end = seq.user_end + np.searchsorted(user, rows, "right")
    # first touches and pair weights change only in the runs of the users with new events:
    # recomputed there (the rest moves with the insert), not over every stored pair
    touched = np.unique(user)
    starts, lengths = user_start[touched], user_end[touched] - user_start[touched]
    ends = np.cumsum(lengths)
    positions = np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]))
    run_items = new_item[positions]
    pair = new_user[positions] * (int(run_items.max()) + 1) + run_items
    _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    first_touch = np.insert(seq.first_touch, where, False)
    first_touch[positions] = False
    first_touch[positions[first]] = True
    best = np.full(len(first), -np.inf, dtype=np.float32)
    np.maximum.at(best, inverse, new_weight[positions])
    pair_weight = np.insert(seq.pair_weight, where, np.float32(0.0))
    pair_weight[positions] = best[inverse]
    return dataclasses.replace(
        seq,
        user=new_user,
        item=new_item,
        ts=new_ts,
        event=np.insert(seq.event, where, event.astype(np.int64)),
        device=np.insert(seq.device, where, device.astype(np.int64)),
        weight=new_weight,
        first_touch=first_touch,
        pair_weight=pair_weight,
        run_start=np.maximum.accumulate(np.where(change, idx, 0)).astype(np.int64),
        user_start=user_start,
        user_end=user_end,
    )
