"""Point-in-time training examples and user state.

Every item event is a training target; the user's state for it is the history *strictly
before* its timestamp (events sharing the target's second are not history), so no example
ever sees its own future. The same arrays give a user's current state at serving time: the
history then simply ends at the user's last event. Everything is index arithmetic on sorted
arrays, with no Python loop over events.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    # (user, rank of time), exact for any timestamps.
    all_times = np.concatenate([seq.search_ts, before.astype(np.float64)])
    _, rank = np.unique(all_times, return_inverse=True)
    stride = np.int64(rank.max() + 2)
    search_keys = seq.search_user * stride + rank[: len(seq.search_ts)]
    query_keys = users.astype(np.int64) * stride + rank[len(seq.search_ts) :]
    ends = np.searchsorted(search_keys, query_keys, "left")
    lo = seq.search_user_start[users]
    pos = ends[:, None] - length + np.arange(length)[None, :]
    valid = pos >= lo[:, None]
    return np.where(valid, seq.search_query[np.where(valid, pos, 0)], 0)


def training_targets(seq: Sequences) -> np.ndarray:
    """Positions used as targets: each user's first event with each item, weighted later by
    the strongest event of that pair (a view that ended in a purchase counts as a purchase).

    Repeat events on an item the user already touched are history, not targets: served
    recommendations leave seen items out, so learning to predict them would waste capacity
    (a funnel's click after its view would otherwise dominate). A target's history may be
    empty: a new user's first action teaches the towers to use profile and context.
    """
    return np.flatnonzero(seq.first_touch)
