"""The pipeline after retrieval: rules, diversity, exploration, explanations, persistence."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from conftest import market_world, small_two_stage
from marketrec.core.errors import ConfigError
from marketrec.data.schema import Dataset
from marketrec.models.registry import create
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.diversity import capped_order, category_similarity, mmr_order
from marketrec.pipeline.exploration import (
    ExplorationPool,
    ExplorationStats,
    ThompsonExplorer,
    exploration_positions,
)
from marketrec.pipeline.ranking_stage import RankingParams
from marketrec.pipeline.recommender import Recommender


@pytest.fixture
def market() -> Dataset:
    return market_world()


def pipeline(market: Dataset, **config) -> Recommender:
    return Recommender(create("itemknn"), PipelineConfig(**config)).fit(market)


def touched(market: Dataset, user: str, events: tuple[str, ...] | None = None) -> set[str]:
    mine = market.events.filter(pl.col("user_id") == user)
    if events is not None:
        mine = mine.filter(pl.col("event").is_in(events))
    return set(mine.get_column("item_id").to_list())


def test_lists_follow_the_contract_and_the_rules(market: Dataset) -> None:
    model = pipeline(market)
    users = ["u00", "u25", "newbie", "stranger"]
    recs = model.recommend(users, 5)
    assert recs.columns == ["user_id", "item_id", "rank", "score"]
    for user in users:
        mine = recs.filter(user_id=user).sort("rank")
        assert mine.get_column("rank").to_list() == [1, 2, 3, 4, 5]
        items = mine.get_column("item_id").to_list()
        assert len(set(items)) == 5  # no duplicates
        assert not set(items) & touched(market, user)
        assert "del" not in items
        scores = mine.get_column("score").to_list()
        assert scores == sorted(scores, reverse=True)
    south = recs.filter(pl.col("user_id").is_in(["u25", "newbie"]))
    assert "north-only" not in south.get_column("item_id").to_list()


def test_exclusion_per_event_type(market: Dataset) -> None:
    model = pipeline(market, exclude_events=("purchase",))
    recs = model.recommend([f"u{u:02d}" for u in range(40)], 18)
    for (user,), mine in recs.group_by("user_id"):
        items = set(mine.get_column("item_id").to_list())
        assert not items & touched(market, str(user), ("purchase",))
    viewed_again = sum(
        bool(set(m.get_column("item_id").to_list()) & touched(market, str(u), ("view",)))
        for (u,), m in recs.group_by("user_id")
    )
    assert viewed_again > 0  # views are allowed back
    with pytest.raises(ConfigError):
        model.recommend(["u00"], 0)


def test_category_cap_and_mmr_spread_categories(market: Dataset) -> None:
    users = [f"u{u:02d}" for u in range(40)]
    base = pipeline(market, diversity="none").recommend_detailed(users, 6)
    capped = pipeline(market, diversity="category-cap", category_cap=2).recommend_detailed(users, 6)
    mmr = pipeline(market, diversity="mmr", diversity_strength=0.7).recommend_detailed(users, 6)
    category = dict(zip(market.items["item_id"], market.items["category"], strict=True))

    def distinct(recs: pl.DataFrame) -> float:
        return float(
            np.mean(
                [
                    len({category[i] for i in m.get_column("item_id").to_list()})
                    for _, m in recs.group_by("user_id")
                ]
            )
        )

    for _, mine in capped.group_by("user_id"):
        counts = pl.Series([category[i] for i in mine.get_column("item_id").to_list()])
        assert counts.drop_nulls().value_counts().get_column("count").max() <= 2
    assert distinct(capped) > distinct(base)
    assert distinct(mmr) > distinct(base)


def test_mmr_and_cap_units() -> None:
    relevance = np.array([0.9, 0.8, 0.7, 0.1])
    cats = np.array([1, 1, 1, 2])
    sim = category_similarity(cats, cats)
    assert mmr_order(relevance, sim, 2, 0.0).tolist() == [0, 1]
    assert mmr_order(relevance, sim, 2, 0.8).tolist() == [0, 3]
    assert capped_order(relevance, cats, 3, 2).tolist() == [0, 1, 3]
    assert capped_order(relevance, cats, 4, 2).tolist() == [0, 1, 3, 2]  # fills when short


def test_exploration_share_is_respected_and_slots_go_to_new_items(market: Dataset) -> None:
    model = pipeline(market, exploration_share=0.25, new_item_days=3.0)
    users = [f"u{u:02d}" for u in range(40)] + ["newbie"]
    recs = model.recommend_detailed(users, 8)
    explored = recs.filter(source="exploration")
    share = explored.height / recs.height
    assert share == pytest.approx(0.25, abs=0.02)  # 2 of 8 slots each
    assert set(explored.get_column("item_id").to_list()) <= {f"new{j}" for j in range(4)}
    assert explored.get_column("rank").min() > 1  # never the top slot
    for row in explored.iter_rows(named=True):
        signals = json.loads(row["signals"])
        assert {"thompson_draw", "impressions", "clicks", "listed_days_ago"} <= set(signals)
    ranked = recs.filter(source="retrieval")
    assert all("retrieval_score" in json.loads(s) for s in ranked.get_column("signals"))
    none = pipeline(market).recommend_detailed(users, 8)
    assert none.filter(source="exploration").height == 0


def test_exploration_follows_delistings_and_impressions_at_once(market: Dataset) -> None:
    """Exploration's pools are kept between requests: a delisting, a listing and new
    impressions still reach the very next list."""
    model = pipeline(market, exploration_share=0.25, new_item_days=3.0)
    users = [f"u{u:02d}" for u in range(40)]

    def explored() -> set[str]:
        recs = model.recommend_detailed(users, 8).filter(source="exploration")
        return set(recs.get_column("item_id").to_list())

    assert explored() == {f"new{j}" for j in range(4)}
    model.delist(["new0"])
    assert explored() == {"new1", "new2", "new3"}
    # shown 10,000 times without a click: drawn far below the never-shown items' prior
    model.record_impressions({"new1": 10_000, "new2": 10_000})
    assert explored() == {"new3"} | ({"new1", "new2"} & explored())
    picks = model.recommend_detailed(users, 8).filter(source="exploration")
    assert picks.filter(item_id="new3").height == len(users)  # in every list
    model.upsert_items(
        pl.DataFrame({"item_id": ["fresh"], "title": ["A puzzle"], "category": ["c9"]})
    )
    assert "fresh" in explored()


def test_fractional_exploration_share_averages_out() -> None:
    explorer = ThompsonExplorer((1.0, 20.0), ExplorationStats.empty(5), np.random.default_rng(1))
    slots = [explorer.slots(10, 0.15) for _ in range(4000)]
    assert set(slots) == {1, 2}
    assert np.mean(slots) / 10 == pytest.approx(0.15, abs=0.005)


def test_thompson_sampling_favours_items_that_earn_clicks() -> None:
    stats = ExplorationStats.empty(3)
    stats.record(np.repeat([0, 1], 100), np.repeat([0], 30))  # item 0: 30% CTR; item 1: 0%
    explorer = ThompsonExplorer((1.0, 20.0), stats, np.random.default_rng(0))
    eligible = np.ones(3, dtype=bool)
    picks = [int(explorer.pick(eligible, 1).items[0]) for _ in range(500)]
    counts = np.bincount(picks, minlength=3)
    assert counts[0] > counts[2] > counts[1]  # proven > unknown (prior 1/21) > proven dud


def test_never_shown_items_are_drawn_uniformly_from_the_eligible_ones() -> None:
    stats = ExplorationStats.empty(40)
    stats.record(np.array([0, 1, 2]))  # shown: drawn from their posteriors, not here
    eligible = np.zeros(40, dtype=bool)
    eligible[:20] = True
    explorer = ThompsonExplorer((1.0, 20.0), stats, np.random.default_rng(2))
    pool = ExplorationPool.build(eligible, stats)
    drawn = np.concatenate(
        [explorer._never_shown(pool, np.zeros(0, dtype=np.int64), 2) for _ in range(3400)]
    )
    counts = np.bincount(drawn, minlength=40)
    assert counts[:3].sum() == 0 and counts[20:].sum() == 0
    assert counts[3:20].min() > 320 and counts[3:20].max() < 480  # 400 each expected
    pairs = drawn.reshape(-1, 2)
    assert (pairs[:, 0] != pairs[:, 1]).all()


def test_rare_never_shown_items_are_still_found() -> None:
    # 3 candidates among 100,000 columns: rejection gives up and lists them
    stats = ExplorationStats.empty(100_000)
    eligible = np.zeros(100_000, dtype=bool)
    eligible[[5, 70_000, 99_999]] = True
    explorer = ThompsonExplorer((1.0, 20.0), stats, np.random.default_rng(0))
    pick = explorer.pick(eligible, 3)
    assert sorted(pick.items.tolist()) == [5, 70_000, 99_999]
    assert explorer.pick(eligible, 5).items.size == 3
    assert explorer.pick(np.zeros(100_000, dtype=bool), 2).items.size == 0


def test_a_shared_pool_less_a_lists_exclusions_picks_as_the_lists_own_mask() -> None:
    """A request explores from its region's shared pool minus its own exclusions: the same
    items and draws, from the same random state, as from a mask of exactly what it may
    pick; and a pool built once stays right while its statistics object is unchanged."""
    rng = np.random.default_rng(5)
    for trial in range(200):
        n_items = int(rng.integers(1, 400))
        stats = ExplorationStats.empty(n_items)
        stats.add(rng.integers(0, n_items, 50), rng.integers(1, 4, 50))
        stats.add(
            np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), rng.integers(0, n_items, 10)
        )
        base = rng.random(n_items) < rng.choice([0.02, 0.3, 0.9])
        removed = rng.integers(0, n_items, int(rng.integers(0, 30)))  # repeats, outside too
        mask = base.copy()
        mask[removed] = False
        n = int(rng.integers(0, 5))
        seed = int(rng.integers(1 << 30))
        alone = ThompsonExplorer((1.0, 20.0), stats, np.random.default_rng(seed)).pick(mask, n)
        shared = ThompsonExplorer((1.0, 20.0), stats, np.random.default_rng(seed)).pick_from(
            ExplorationPool.build(base, stats), removed, n
        )
        assert shared.items.tolist() == alone.items.tolist(), trial
        assert shared.draws.tolist() == alone.draws.tolist()


def test_exploration_statistics_change_only_through_add() -> None:
    stats = ExplorationStats.empty(4)
    with pytest.raises(ValueError, match="read-only"):
        stats.impressions[0] += 1
    before = stats.version
    stats.record(np.array([1, 1, 3]), np.array([1]))
    assert stats.impressions.tolist() == [0, 2, 0, 1] and stats.clicks.tolist() == [0, 1, 0, 0]
    assert stats.version > before
    before = stats.version
    stats.record(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))  # nothing new
    assert stats.version == before


def test_exploration_positions() -> None:
    assert exploration_positions(10, 1).tolist() == [5]
    assert exploration_positions(10, 2).tolist() == [3, 7]
    assert exploration_positions(4, 3).tolist() == [1, 2, 3]
    assert exploration_positions(1, 1).tolist() == [0]


def test_cold_users_are_marked_as_served_by_the_fallback(market: Dataset) -> None:
    recs = pipeline(market).recommend_detailed(["newbie", "u03"], 4)
    assert set(recs.filter(user_id="newbie").get_column("source")) == {"fallback"}
    assert set(recs.filter(user_id="u03").get_column("source")) == {"retrieval"}


def test_save_and_load_give_the_same_lists(market: Dataset, tmp_path) -> None:
    model = pipeline(market, exploration_share=0.2, exclude_events=("purchase",))
    users = ["u00", "u31", "newbie"]
    before = model.recommend_detailed(users, 6)
    loaded = Recommender.load(model.save(tmp_path / "m"))
    assert loaded.config == model.config
    assert loaded.recommend_detailed(users, 6).equals(before)


def test_two_stage_trains_a_ranker_and_serves_through_the_same_path(market, tmp_path) -> None:
    model = Recommender(
        create("itemknn"),
        PipelineConfig(candidates=12),
        RankingParams(epochs=3, random_negatives=3, candidates=12),
    ).fit(market)
    assert model.ranking is not None and model.ranking.report.epochs_run >= 1
    model.ranking.active = True  # the tiny world's validation is too small to judge it
    users = ["u00", "u21", "newbie"]
    recs = model.recommend_detailed(users, 5)
    for user in users:
        mine = recs.filter(user_id=user).sort("rank")
        assert mine.height == 5
        assert not set(mine.get_column("item_id").to_list()) & touched(market, user)
        scores = mine.get_column("score").to_list()
        assert scores == sorted(scores, reverse=True)
    signals = [json.loads(s) for s in recs.get_column("signals")]
    assert all({"ranker_score", "retrieval_score", "retrieval_rank"} <= set(s) for s in signals)
    # the ranker's score orders the list (no diversity by default)
    ranker = [s["ranker_score"] for s in signals[:5]]
    assert ranker == sorted(ranker, reverse=True)
    # each ranked item names the signal groups that moved it most, with signed effects
    for s in signals:
        top = s["top_signals"]
        assert 1 <= len(top) <= 3
        assert set(top) <= {
            "retrieval",
            "item trend",
            "user activity",
            "taste match",
            "similar to history",
            "item facts",
            "recent items",
            "context",
        }
    loaded = Recommender.load(model.save(tmp_path / "two-stage"))
    assert loaded.ranking is not None and loaded.ranking.active
    assert loaded.recommend_detailed(users, 5).equals(recs)


def exploring_two_stage(market: Dataset) -> Recommender:
    """Item-kNN, a ranker switched on, MMR and 30 % exploration: every step of a list."""
    model = Recommender(
        create("itemknn"),
        PipelineConfig(candidates=12, diversity_strength=0.3, exploration_share=0.3),
        RankingParams(epochs=2, random_negatives=3, candidates=12),
    ).fit(market)
    assert model.ranking is not None
    model.ranking.active = True
    return model


def test_one_user_lists_are_the_detailed_lists(market) -> None:
    """The service's `recommend_one` is `recommend_detailed` for one user: the same items,
    scores and sources (exploration and MMR included), only without signals and frame."""
    model = exploring_two_stage(market)
    sources = set()
    for user, region in [("u00", None), ("u21", "south"), ("newbie", None), ("nobody", "north")]:
        detailed = model.recommend_detailed([user], 6, regions=[region])
        one = model.recommend_one(user, 6, region=region)
        assert [e.item_id for e in one] == detailed.get_column("item_id").to_list()
        assert [e.score for e in one] == detailed.get_column("score").to_list()
        assert [e.source for e in one] == detailed.get_column("source").to_list()
        new = model._new_items(model._reference_ts)
        columns = model.retrieval.item_columns(detailed.get_column("item_id"))
        assert [e.new_listing for e in one] == new[columns].tolist()
        sources |= {e.source for e in one}
    assert "exploration" in sources
    other = PipelineConfig(candidates=12, diversity="none")
    assert [e.item_id for e in model.recommend_one("u00", 4, config=other)] == (
        model.recommend(["u00"], 4, config=other).get_column("item_id").to_list()
    )
    with pytest.raises(ConfigError, match="k must be"):
        model.recommend_one("u00", 0)


def test_many_users_lists_are_each_users_own_list(market) -> None:
    """`recommend_many` (the service's queued requests in one pass) gives each user the list
    `recommend_one` gives alone, whatever else is in the pass: repeated users with other
    regions, new users, users whose region leaves nothing to show."""
    model = exploring_two_stage(market)
    asked = [("u00", None), ("u21", "south"), ("newbie", None), ("u00", "north"), ("u21", None)]
    lists = model.recommend_many([u for u, _ in asked], 6, regions=[r for _, r in asked])
    assert len(lists) == len(asked)
    for (user, region), many in zip(asked, lists, strict=True):
        one = model.recommend_one(user, 6, region=region)
        assert [e.item_id for e in many] == [e.item_id for e in one], (user, region)
        assert [e.source for e in many] == [e.source for e in one]
        assert [e.new_listing for e in many] == [e.new_listing for e in one]
        assert [e.score for e in many] == pytest.approx([e.score for e in one], rel=1e-5)
    assert model.recommend_many([], 6) == []
    with pytest.raises(ConfigError, match="k must be"):
        model.recommend_many(["u00"], 0)


@pytest.mark.parametrize("timed", [True, False])
def test_ranker_without_time_features_ignores_the_clock(market, tmp_path, timed) -> None:
    model = Recommender(
        create("itemknn"),
        PipelineConfig(candidates=12),
        RankingParams(epochs=2, random_negatives=3, candidates=12, time_features=timed),
    ).fit(market)
    assert model.ranking is not None
    model.ranking.active = True
    last = market.events.get_column("ts").max()
    # both moments come after every event: only clock-reading features can tell them apart
    soon, later = last + timedelta(days=1), last + timedelta(days=40)
    lists = [
        model.recommend_detailed(["u00"], 5, at=[moment]).get_column("signals").to_list()
        for moment in (soon, later)
    ]
    scores = [[json.loads(s)["ranker_score"] for s in one] for one in lists]
    assert (scores[0] == scores[1]) is (not timed)
    loaded = Recommender.load(model.save(tmp_path / "stage"))
    assert loaded.ranking is not None and loaded.ranking.time_features is timed


def test_mmr_by_category_rows_equals_mmr_over_the_matrix() -> None:
    from marketrec.pipeline.diversity import mmr_order_by_category

    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(1, 60))
        # ties (rounded relevance) and uncategorised items (code 0) included
        relevance = np.round(rng.random(n), 1 if trial % 2 else 6)
        categories = rng.integers(0, 6, n)
        tops = np.where(categories > 0, (categories + 1) // 2, 0)
        tops[rng.random(n) < 0.1] = 0  # a category without a top level
        for strength in (0.0, 0.3, 0.5, 0.8, 1.0):
            for k in (1, 10, n + 3):
                assert np.array_equal(
                    mmr_order_by_category(relevance, categories, tops, k, strength),
                    mmr_order(relevance, category_similarity(categories, tops), k, strength),
                ), (trial, strength, k)


def test_a_saved_two_stage_model_serves_the_same_ranker_features(market, tmp_path) -> None:
    """The ranker's state (co-occurrence included) survives save and load: the loaded model
    scores every candidate as the trained one did."""
    model = small_two_stage(market)
    assert model.ranking is not None
    cooc = model.ranking.state.cooccurrence
    assert cooc is not None and len(cooc.pairs) > 0
    users = ["u00", "u21", "newbie"]
    before = model.recommend_detailed(users, 5)
    loaded = Recommender.load(model.save(tmp_path / "m"))
    assert loaded.ranking is not None and loaded.ranking.state.cooccurrence is not None
    np.testing.assert_array_equal(loaded.ranking.state.cooccurrence.final, cooc.final)
    assert loaded.recommend_detailed(users, 5).equals(before)


def test_a_ranker_saved_with_another_feature_set_asks_for_a_retrain(market, tmp_path) -> None:
    """A model folder from before the feature set changed fails with a clear message, not a
    tensor shape traceback."""
    import torch

    from marketrec.core.errors import ModelError

    folder = small_two_stage(market).save(tmp_path / "m")
    ranker = next(folder.rglob("ranker.pt"))
    weights = torch.load(ranker, weights_only=True)
    weights["mean"], weights["scale"] = weights["mean"][:-3], weights["scale"][:-3]
    torch.save(weights, ranker)
    with pytest.raises(ModelError, match="retrain"):
        Recommender.load(folder)
