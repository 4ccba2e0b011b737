"""CONTRACT §3 metrics against cases computed by hand."""

from __future__ import annotations

import math

import polars as pl
import pytest

from marketrec.core.errors import ConfigError, DataError
from marketrec.evaluation.metrics import check_recommendations, compute_metrics


def recs_frame(lists: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, item, r + 1) for u, items in lists.items() for r, item in enumerate(items)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rank"], orient="row")


def targets_frame(targets: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, i) for u, items in targets.items() for i in items]
    return pl.DataFrame(rows, schema=["user_id", "item_id"], orient="row")


# User A: targets {x, y}, list [x, q, y] → hits at ranks 1 and 3.
# User B: target {z}, list [q, r, s] → no hit.   User C: target {w}, no list at all.
RECS = recs_frame({"A": ["x", "q", "y"], "B": ["q", "r", "s"], "Z": ["x", "y", "z"]})
TARGETS = targets_frame({"A": ["x", "y"], "B": ["z"], "C": ["w"]})


def test_hand_computed_at_3() -> None:
    m = compute_metrics(RECS, TARGETS, (3,), catalogue_size=10)
    ndcg_a = (1 / math.log2(2) + 1 / math.log2(4)) / (1 / math.log2(2) + 1 / math.log2(3))
    assert m["users"] == 3
    assert m["HR@3"] == pytest.approx(1 / 3)
    assert m["Recall@3"] == pytest.approx(1 / 3)
    assert m["MRR@3"] == pytest.approx(1 / 3)
    assert m["NDCG@3"] == pytest.approx(ndcg_a / 3)
    assert m["MAP@3"] == pytest.approx((1 + 2 / 3) / 2 / 3)
    # Coverage counts evaluated users only (A, B; Z has no targets): x, q, y, r, s.
    assert m["Coverage@3"] == pytest.approx(5 / 10)


def test_hand_computed_at_1_and_2() -> None:
    m = compute_metrics(RECS, TARGETS, (1, 2), catalogue_size=10)
    # K=1: A hits at 1, n = min(2, 1) = 1 → NDCG 1, MAP 1, Recall 1/2.
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["Recall@1"] == pytest.approx(0.5 / 3)
    assert m["NDCG@1"] == pytest.approx(1 / 3)
    assert m["MAP@1"] == pytest.approx(1 / 3)
    # K=2: A's second target is at rank 3, outside; n = 2.
    assert m["NDCG@2"] == pytest.approx((1.0 / (1 + 1 / math.log2(3))) / 3)
    assert m["MAP@2"] == pytest.approx((1 / 2) / 3)
    assert m["Coverage@2"] == pytest.approx(3 / 10)  # x, q, r


def test_first_hit_late_and_precision_at_hits() -> None:
    recs = recs_frame({"U": ["a", "t1", "b", "t2", "t3"]})
    targets = targets_frame({"U": ["t1", "t2", "t3", "t4"]})
    m = compute_metrics(recs, targets, (5,), catalogue_size=8)
    assert m["MRR@5"] == pytest.approx(1 / 2)
    assert m["Recall@5"] == pytest.approx(3 / 4)
    assert m["MAP@5"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 4)
    dcg = 1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, 5))
    assert m["NDCG@5"] == pytest.approx(dcg / idcg)


def test_no_targets_gives_zero_users() -> None:
    m = compute_metrics(RECS, targets_frame({}).cast(pl.String), (10,), catalogue_size=5)
    assert m["users"] == 0 and m["NDCG@10"] == 0.0


def test_bad_cutoffs_refused() -> None:
    for ks in [(0,), (-3,), ()]:
        with pytest.raises(ConfigError):
            compute_metrics(RECS, TARGETS, ks, catalogue_size=10)


def test_recommendation_lists_are_checked() -> None:
    dup_item = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "a"], "rank": [1, 2]})
    with pytest.raises(DataError, match="appears twice"):
        check_recommendations(dup_item)
    dup_rank = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "rank": [1, 1]})
    with pytest.raises(DataError, match="rank appears twice"):
        check_recommendations(dup_rank)
    zero = pl.DataFrame({"user_id": ["u"], "item_id": ["a"], "rank": [0]})
    with pytest.raises(DataError, match="start at 1"):
        check_recommendations(zero)
    with pytest.raises(DataError, match="'rank' is missing"):
        check_recommendations(pl.DataFrame({"user_id": ["u"], "item_id": ["a"]}))


def test_per_user_protocols_rank_each_user_at_their_own_moment() -> None:
    from datetime import timedelta
    from typing import ClassVar

    from conftest import T0, events_frame
    from marketrec.data.schema import make_dataset
    from marketrec.data.split import split_global, split_per_user
    from marketrec.evaluation.offline import TargetConfig, evaluate_model

    rows = [
        (u, f"i{h}", base + h, "click")
        for u, base in (("early", 0), ("late", 500))
        for h in range(10)
    ]
    data = make_dataset(events_frame(rows))

    class Recorder:
        name = "recorder"
        seen: ClassVar[dict[str, object]] = {}

        def recommend(self, user_ids, k, *, include_seen=False, regions=None, at=None):
            Recorder.seen = dict(zip(list(user_ids), at or [None] * len(user_ids), strict=True))
            return pl.DataFrame(
                schema={"user_id": pl.String, "item_id": pl.String, "rank": pl.Int32}
            )

    evaluate_model(Recorder(), split_per_user(data), ks=(5,), targets=TargetConfig())
    # each user's last train event is their 8th (2 of 10 held out), plus one second
    assert Recorder.seen == {
        "early": T0 + timedelta(hours=7, seconds=1),
        "late": T0 + timedelta(hours=507, seconds=1),
    }
    evaluate_model(Recorder(), split_global(data, quantile=0.5), ks=(5,))
    assert set(Recorder.seen.values()) == {None}
