"""Protocol P2: points are first touches rated ≥ 4, and every earlier test event reaches the
model before the question about the next one."""

from __future__ import annotations

import polars as pl

from conftest import events_frame
from marketrec.data.schema import make_dataset
from marketrec.data.split import Split
from marketrec.evaluation.streaming import InProcess, replay, stream_points
from marketrec.models.registry import create
from marketrec.pipeline.recommender import Recommender


def small_split() -> Split:
    train_rows = [(f"u{u}", f"i{(u + j) % 6}", u + j, "rating") for u in range(6) for j in range(3)]
    test_rows = [
        ("u0", "i4", 20, "rating"),  # new to u0, 5 stars: a point
        ("u0", "i4", 21, "rating"),  # the same pair again: not a point
        ("u1", "i1", 22, "rating"),  # u1 rated i1 in train: not a point
        ("u2", "i0", 23, "rating"),  # 2 stars: not a point
        ("new", "i2", 24, "rating"),  # a user first seen in test: a point (0 earlier events)
        ("new", "i5", 25, "rating"),  # a point with 1 earlier event
    ]
    train = make_dataset(
        events_frame(train_rows, value=[5.0] * len(train_rows)),
        pl.DataFrame({"item_id": [f"i{j}" for j in range(6)]}),
    )
    test = make_dataset(events_frame(test_rows, value=[5.0, 5.0, 5.0, 2.0, 4.0, 4.0]), train.items)
    return Split(train, test, "tiny")


class Recording(InProcess):
    """InProcess that remembers what it was told and asked, in order."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.calls: list[tuple[str, object]] = []

    def ingest(self, events: pl.DataFrame) -> None:
        self.calls.append(("ingest", events.get_column("item_id").to_list()))
        super().ingest(events)

    def top(self, user_id: str, k: int) -> list[str]:
        self.calls.append(("top", user_id))
        return super().top(user_id, k)


def test_points_are_first_touches_rated_four_or_more() -> None:
    split = small_split()
    assert stream_points(split).tolist() == [0, 4, 5]
    assert len(stream_points(split, n_points=2)) == 2


def test_earlier_events_reach_the_model_before_each_question() -> None:
    split = small_split()
    target = Recording(Recommender(create("itemknn")).fit(split.train))
    report = replay(target, split, stream_points(split), k=3, progress=False)
    assert target.calls == [
        ("top", "u0"),
        ("ingest", ["i4", "i4", "i1", "i0"]),
        ("top", "new"),
        ("ingest", ["i2"]),
        ("top", "new"),
    ]
    assert report.points == 3
    # u0 had 3 train events; "new" none, then one
    assert report.by_history["0"]["points"] == 1 and report.by_history["1-4"]["points"] == 2
    assert 0.0 <= report.overall["HR@10"] <= 1.0
    # the first-seen user's second question is asked with i2 already in their history
    assert "i2" not in target.top("new", 6)
