"""Degradation: a failing or late ranking stage leaves retrieval order, a failing retrieval
stage leaves the popularity of the user's region; lists stay full and keep the rules."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from conftest import market_world, small_two_stage
from marketrec.core.errors import ConfigError
from marketrec.data.schema import Dataset
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.recommender import Recommender

USERS = ["u00", "u07", "u25", "newbie", "stranger"]
K = 5


@pytest.fixture(scope="module")
def market() -> Dataset:
    return market_world()


@pytest.fixture(scope="module")
def fitted(market: Dataset) -> Recommender:
    return small_two_stage(market)


def with_config(model: Recommender, ranked: bool = True, **config) -> Recommender:
    """The same fitted stages under other settings (or without the ranker)."""
    other = Recommender(
        model.retrieval, PipelineConfig(candidates=12, **config), model.ranking_params
    )
    other._seen, other._items, other.stats = model._seen, model._items, model.stats
    other._reference_ts = model._reference_ts
    other.ranking = model.ranking if ranked else None
    return other


def seen(market: Dataset, user: str) -> set[str]:
    mine = market.events.filter(pl.col("user_id") == user)
    return set(mine.get_column("item_id").to_list())


def check_rules(market: Dataset, recs: pl.DataFrame) -> None:
    south = {"u25", "newbie"}
    for user in USERS:
        mine = recs.filter(user_id=user).sort("rank")
        items = mine.get_column("item_id").to_list()
        assert len(items) == K and len(set(items)) == K
        assert mine.get_column("rank").to_list() == list(range(1, K + 1))
        assert not set(items) & seen(market, user)
        assert "del" not in items
        if user in south:
            assert "north-only" not in items


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "marketrec.pipeline.recommender" and r.levelno == logging.WARNING
    ]


def test_a_failing_ranker_leaves_retrieval_order(market, fitted, monkeypatch, caplog) -> None:
    model = with_config(fitted)

    def broken(*args, **kwargs):
        raise RuntimeError("ranker exploded")

    monkeypatch.setattr(model.ranking, "score", broken)
    with caplog.at_level(logging.WARNING):
        recs = model.recommend_detailed(USERS, K)
    check_rules(market, recs)
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "ranker exploded" in messages[0]  # once per request
    for row in recs.iter_rows(named=True):
        signals = json.loads(row["signals"])
        assert signals["ranker_skipped"] == "error: RuntimeError: ranker exploded"
        assert "ranker_score" not in signals and "top_signals" not in signals
    known = recs.filter(pl.col("user_id") != "stranger")
    assert set(known.get_column("source")) <= {"retrieval", "fallback"}
    assert set(recs.filter(user_id="u07").get_column("source")) == {"retrieval"}
    # exactly the lists of the pipeline without a ranker
    plain = with_config(fitted, ranked=False).recommend(USERS, K)
    assert recs.select(plain.columns).equals(plain)
    assert model.recommend(USERS, K).equals(plain)


def test_a_spent_budget_skips_the_ranker(market, fitted, monkeypatch, caplog) -> None:
    model = with_config(fitted, rank_budget_ms=1e-9)
    calls = []
    monkeypatch.setattr(model.ranking, "score", lambda *a, **k: calls.append(1))
    with caplog.at_level(logging.WARNING):
        recs = model.recommend_detailed(USERS, K)
    assert not calls  # checked before ranking starts
    check_rules(market, recs)
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "budget" in messages[0]
    skipped = [json.loads(s)["ranker_skipped"] for s in recs.get_column("signals")]
    assert all(s.startswith("budget: ") and "ms spent before ranking" in s for s in skipped)
    plain = with_config(fitted, ranked=False).recommend(USERS, K)
    assert recs.select(plain.columns).equals(plain)


def test_the_budget_leaves_ranked_lists_alone_when_met(market, fitted, caplog) -> None:
    generous = with_config(fitted, rank_budget_ms=60_000.0)
    unbounded = with_config(fitted, rank_budget_ms=None)
    with caplog.at_level(logging.WARNING):
        recs = generous.recommend_detailed(USERS, K)
    assert not warnings_of(caplog)
    assert recs.equals(unbounded.recommend_detailed(USERS, K))
    assert all("ranker_score" in json.loads(s) for s in recs.get_column("signals"))
    # offline replays at given moments have no deadline
    tiny = with_config(fitted, rank_budget_ms=1e-9)
    moment = [market.events.get_column("ts").max() + timedelta(hours=1)] * len(USERS)
    replay = tiny.recommend_detailed(USERS, K, at=moment)
    assert replay.equals(unbounded.recommend_detailed(USERS, K, at=moment))


def test_a_failing_retrieval_serves_region_popularity(market, fitted, monkeypatch, caplog) -> None:
    model = with_config(fitted)

    def broken(*args, **kwargs):
        raise ValueError("index offline")

    ranker_calls = []
    monkeypatch.setattr(model.retrieval, "top_items", broken)
    monkeypatch.setattr(model.ranking, "score", lambda *a, **k: ranker_calls.append(1))
    with caplog.at_level(logging.WARNING):
        recs = model.recommend_detailed(USERS, K)
    assert not ranker_calls
    check_rules(market, recs)
    messages = warnings_of(caplog)
    assert len(messages) == 1 and "index offline" in messages[0]
    assert set(recs.get_column("source")) == {"fallback"}
    for user in USERS:
        signals = [json.loads(s) for s in recs.filter(user_id=user).get_column("signals")]
        assert all(s["retrieval_failed"] == "ValueError: index offline" for s in signals)
        scores = [s["retrieval_score"] for s in signals]
        assert scores == sorted(scores, reverse=True)  # popularity order (no diversity)
    # the fallback's own ranking of the region, minus each user's items
    fallback = model.retrieval.fallback
    rows = model.retrieval.user_rows(pl.Series(USERS))
    regions = model.retrieval.regions_of(rows)
    history = model.retrieval._history[np.maximum(rows, 0)]
    popular = fallback.score(rows, history, regions)
    names = model.retrieval.item_ids.to_list()
    for u, user in enumerate(USERS):
        allowed = model.retrieval.sellable(regions[u : u + 1])[0]
        order = [
            names[c]
            for c in np.argsort(-popular[u], kind="stable")
            if allowed[c] and names[c] not in seen(market, user)
        ]
        got = recs.filter(user_id=user).sort("rank").get_column("item_id").to_list()
        assert set(got) == set(order[:K]) or got == order[:K]


def test_degraded_lists_still_explore(market, fitted, monkeypatch) -> None:
    model = with_config(fitted, exploration_share=0.4, new_item_days=3.0)

    def broken(*args, **kwargs):
        raise RuntimeError("down")

    monkeypatch.setattr(model.retrieval, "top_items", broken)
    recs = model.recommend_detailed(USERS, K)
    check_rules(market, recs)
    assert set(recs.get_column("source")) == {"fallback", "exploration"}
    explored = recs.filter(source="exploration").get_column("item_id").to_list()
    # new: listed within 3 days (north-only too, rules keep it from the south)
    assert explored and set(explored) <= {f"new{j}" for j in range(4)} | {"north-only"}


def test_each_list_says_what_served_it(market, fitted, monkeypatch) -> None:
    """`recommend_many` marks each list (`Served`): ordered by the ranker, retrieval order
    (no active ranker, or skipped: the step and its reason in `degraded`) or the region's
    popularity; the service's response carries both."""
    model = with_config(fitted, rank_budget_ms=60_000.0)
    monkeypatch.setattr(model.ranking, "active", True)
    lists = model.recommend_many(USERS, K)
    # item-kNN cannot embed users without history: the region's popularity serves them
    cold = ["fallback", "fallback"]  # newbie, stranger
    assert [one.served_by for one in lists] == ["ranker"] * 3 + cold
    assert all(one.degraded is None for one in lists)

    skipped = model.recommend_many(USERS, K, skip_ranking="deadline: waited 80 ms (budget 50 ms)")
    plain = with_config(fitted, ranked=False).recommend_many(USERS, K)
    assert skipped == plain  # the items of retrieval order …
    assert [one.served_by for one in skipped] == ["retrieval"] * 3 + cold
    reason = {"ranker_skipped": "deadline: waited 80 ms (budget 50 ms)"}
    assert all(one.degraded == reason for one in skipped)
    # per user, in one pass: the others are ranked as they were
    late = [None, reason["ranker_skipped"], None, None, None]
    mixed = model.recommend_many(USERS, K, skip_ranking=late)
    assert [one.served_by for one in mixed] == ["ranker", "retrieval", "ranker", *cold]
    assert mixed[1] == skipped[1] and mixed[1].degraded == reason
    for u in (0, 2, 3, 4):
        assert [e.item_id for e in mixed[u]] == [e.item_id for e in lists[u]]
        assert [e.score for e in mixed[u]] == pytest.approx([e.score for e in lists[u]], rel=1e-5)
        assert mixed[u].degraded is None
    with pytest.raises(ConfigError, match="2 ranking skips for 5 users"):
        model.recommend_many(USERS, K, skip_ranking=[None, None])
    # … which a model without a ranker serves as its usual path
    assert [one.served_by for one in plain] == ["retrieval"] * 3 + cold
    assert all(one.degraded is None for one in plain)

    tiny = with_config(fitted, rank_budget_ms=1e-9)
    late = tiny.recommend_many(USERS, K)
    assert all(one.degraded["ranker_skipped"].startswith("budget: ") for one in late)

    def broken(*args, **kwargs):
        raise ValueError("index offline")

    monkeypatch.setattr(model.retrieval, "top_items", broken)
    failed = model.recommend_many(USERS, K)
    assert all(one.served_by == "fallback" for one in failed)
    assert all(one.degraded == {"retrieval_failed": "ValueError: index offline"} for one in failed)


def test_an_inactive_ranker_is_not_reported_skipped(fitted, monkeypatch) -> None:
    """A ranker its gate dropped never runs: its lists are retrieval's usual path, not a
    degradation, even when the caller asks to skip ranking."""
    model = with_config(fitted)
    monkeypatch.setattr(model.ranking, "active", False)
    lists = model.recommend_many(USERS[:3], K, skip_ranking="deadline: 1 ms")
    assert all(one.served_by == "retrieval" and one.degraded is None for one in lists)
