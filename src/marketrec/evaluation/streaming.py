"""Protocol P2 (CONTRACT §4), streaming next item: replay a test period in time order through
the online path, with no retraining, and ask for the user's top 10 just before each sampled
event.

What it measures is what a live service does: every earlier test event reaches the model
(`LiveTarget.ingest`) before the next question, so a model scores from the live history. The
same replay drives a model in process (`InProcess`, `Recommender.absorb`) or the HTTP service
(`benchmarks/streaming.py`), so both give the same numbers for the same model.

Points: test events with value ≥ 4 (rating data; every event for implicit data) on an item the
user had not touched before, sampled uniformly with a fixed seed. HR@10 and NDCG@10 (one
target per point: 1/log2(1 + rank)) overall and by the user's number of earlier events
(train and test before the point): 0, 1-4, 5-19, 20+.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl
from rich.progress import Progress

from marketrec.data.split import Split

HISTORY_BUCKETS = ((0, 0, "0"), (1, 4, "1-4"), (5, 19, "5-19"), (20, None, "20+"))


class LiveTarget(Protocol):
    """What the replay talks to: a live model in process or the HTTP service."""

    def ingest(self, events: pl.DataFrame) -> None:
        """Take these events (canonical columns, time order) into the live state."""
        ...

    def top(self, user_id: str, k: int) -> list[str]:
        """The user's current top k item ids."""
        ...


@dataclass
class InProcess:
    """A fitted `Recommender` (or single model) absorbing events in process."""

    model: Any

    def ingest(self, events: pl.DataFrame) -> None:
        self.model.absorb(events)

    def top(self, user_id: str, k: int) -> list[str]:
        return self.model.recommend([user_id], k).get_column("item_id").to_list()


@dataclass
class StreamingReport:
    """HR@10 / NDCG@10 over the points, overall and per history bucket."""

    points: int
    k: int
    overall: dict[str, float]
    by_history: dict[str, dict[str, float]]
    seconds: float
    request_ms: dict[str, float] = field(default_factory=dict)


def stream_points(split: Split, n_points: int = 5_000, seed: int = 0) -> np.ndarray:
    """Positions (rows of `split.test` in time order) of the sampled P2 points."""
    test = _time_ordered(split.test.events)
    seen = (
        split.train.events.filter(pl.col("item_id").is_not_null())
        .select("user_id", "item_id")
        .unique()
        .with_columns(_before=pl.lit(True))
    )
    marked = (
        test.with_row_index("_pos")
        .join(seen, on=["user_id", "item_id"], how="left")
        .with_columns(
            # first touch within the test period too: no earlier test event on the pair
            _first=pl.col("_pos") == pl.col("_pos").min().over("user_id", "item_id"),
        )
    )
    rated = "value" in test.columns and test.get_column("value").drop_nulls().len() > 0
    good = pl.col("item_id").is_not_null() & pl.col("_before").is_null() & pl.col("_first")
    if rated:
        good = good & (pl.col("value") >= 4)
    candidates = marked.filter(good).get_column("_pos").to_numpy()
    if len(candidates) <= n_points:
        return np.sort(candidates)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, n_points, replace=False))


def replay(
    target: LiveTarget,
    split: Split,
    points: np.ndarray,
    k: int = 10,
    progress: bool = True,
) -> StreamingReport:
    """Replay the test events in time order through `target`, asking before each point."""
    test = _time_ordered(split.test.events)
    users = test.get_column("user_id").to_list()
    items = test.get_column("item_id").to_list()
    earlier = _earlier_events(split, test)
    hits: list[tuple[int, float, int]] = []  # (hit, ndcg, earlier events)
    latencies: list[float] = []
    start, done = time.perf_counter(), 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("replaying the test period", total=len(points))
        for pos in points:
            if pos > done:
                target.ingest(test.slice(done, pos - done))
                done = int(pos)
            t0 = time.perf_counter()
            ranked = target.top(users[pos], k)
            latencies.append(time.perf_counter() - t0)
            rank = ranked.index(items[pos]) + 1 if items[pos] in ranked else 0
            hits.append((int(rank > 0), 1.0 / math.log2(1 + rank) if rank else 0.0, earlier[pos]))
            bar.advance(task)
    seconds = time.perf_counter() - start
    return StreamingReport(
        points=len(points),
        k=k,
        overall=_metrics(hits),
        by_history={
            name: _metrics([h for h in hits if lo <= h[2] and (hi is None or h[2] <= hi)])
            for lo, hi, name in HISTORY_BUCKETS
        },
        seconds=seconds,
        request_ms=_percentiles(latencies),
    )


def _time_ordered(events: pl.DataFrame) -> pl.DataFrame:
    return events.with_row_index("_row").sort("ts", "_row").drop("_row")


def _earlier_events(split: Split, test: pl.DataFrame) -> np.ndarray:
    """Per test row: the user's events before it (train events and earlier test rows)."""
    train_counts = split.train.events.group_by("user_id").len("_train")
    frame = (
        test.select("user_id")
        .with_columns(_earlier_test=pl.int_range(pl.len()).over("user_id"))
        .join(train_counts, on="user_id", how="left", maintain_order="left")
    )
    return (frame.get_column("_earlier_test") + frame.get_column("_train").fill_null(0)).to_numpy()


def _metrics(hits: Sequence[tuple[int, float, int]]) -> dict[str, float]:
    if not hits:
        return {"points": 0.0, "HR@10": float("nan"), "NDCG@10": float("nan")}
    return {
        "points": float(len(hits)),
        "HR@10": float(np.mean([h[0] for h in hits])),
        "NDCG@10": float(np.mean([h[1] for h in hits])),
    }


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = np.asarray(seconds) * 1000.0
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 90, 99)}
