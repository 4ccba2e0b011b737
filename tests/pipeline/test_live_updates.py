"""Live updates of a fitted pipeline: events, delistings and profile changes take effect on
the next request without retraining (the service applies them from its event log)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pytest

from conftest import T0, events_frame
from marketrec.core.errors import ModelError
from marketrec.data.schema import Dataset, make_dataset, validate_events, validate_items
from marketrec.models.registry import create
from marketrec.pipeline.ranking_stage import RankingParams
from marketrec.pipeline.recommender import Recommender, load_recommender

TINY_TOWER = {
    "text_encoder": "hashed",
    "epochs": 3,
    "batch_size": 64,
    "validation_fraction": 0.0,
    "random_negatives": 8,
    "dim": 16,
}


@pytest.fixture(scope="module")
def market() -> Dataset:
    """30 users over 12 items in two categories and two regions; `south-only` sells in the
    south only."""
    rows = []
    for u in range(30):
        for j in range(5):
            rows.append((f"u{u:02d}", f"i{(u + 2 * j) % 12:02d}", u + j, "view"))
    items = pl.DataFrame(
        {
            "item_id": [f"i{j:02d}" for j in range(12)] + ["south-only"],
            "category": ["Toys"] * 6 + ["Garden"] * 6 + ["Garden"],
            "created_at": [T0 - timedelta(days=5)] * 13,
            "regions": [None] * 12 + [["south"]],
        }
    )
    users = pl.DataFrame(
        {"user_id": [f"u{u:02d}" for u in range(30)], "region": ["north", "south"] * 15}
    )
    rows += [("u01", "south-only", 40, "view"), ("u03", "south-only", 41, "view")]
    return make_dataset(events_frame(rows), items, users)


@pytest.fixture
def model(market: Dataset) -> Recommender:
    return Recommender(
        create("two-tower", TINY_TOWER),
        ranking=RankingParams(epochs=2, random_negatives=3, candidates=10),
    ).fit(market)


def live_events(rows: list[tuple[str, str | None, int, str]]) -> pl.DataFrame:
    frame = events_frame([(u, i, 100 + h, e) for u, i, h, e in rows])
    return validate_events(frame, [])


def listed(model: Recommender, user: str, k: int = 12) -> list[str]:
    return model.recommend([user], k).get_column("item_id").to_list()


def test_an_event_changes_the_users_next_list_and_vector(model: Recommender) -> None:
    before = listed(model, "u00")
    target = before[0]
    row = model.retrieval.user_rows(pl.Series(["u00"]))
    region = model.retrieval.regions_of(row)
    vector = model.retrieval.scorer.user_vectors(row, region)
    stored = len(model.ranking.state.ev_item)
    model.absorb(live_events([("u00", target, 0, "purchase")]))
    assert target not in listed(model, "u00")  # seen items are left out at once
    assert not np.allclose(model.retrieval.scorer.user_vectors(row, region), vector)
    # the ranker's user counters count it too
    assert len(model.ranking.state.ev_item) == stored + 1


def test_a_user_first_seen_live_gets_a_row_and_a_history(model: Recommender) -> None:
    assert model.retrieval.user_rows(pl.Series(["stranger"]))[0] == -1
    model.absorb(live_events([("stranger", "i03", 0, "view"), ("stranger", "i04", 1, "click")]))
    row = model.retrieval.user_rows(pl.Series(["stranger"]))[0]
    assert row == 30
    recs = listed(model, "stranger")
    assert recs and not {"i03", "i04"} & set(recs)
    assert model.ranking.state.user_region.shape[0] == 31
    # a second batch for the same user and one more new user
    model.absorb(live_events([("stranger", "i05", 2, "view"), ("another", "i01", 3, "view")]))
    assert model.retrieval.user_rows(pl.Series(["stranger", "another"])).tolist() == [30, 31]
    assert "i05" not in listed(model, "stranger")


def test_delisted_items_are_never_recommended_again(model: Recommender) -> None:
    everyone = [f"u{u:02d}" for u in range(30)] + ["nobody"]
    shown = set(model.recommend(everyone, 5).get_column("item_id").to_list())
    gone = sorted(shown)[:2]
    model.delist(gone)
    assert not set(gone) & set(model.recommend(everyone, 12).get_column("item_id").to_list())


def test_item_and_user_updates_move_regions(model: Recommender) -> None:
    # u00 lives in the north: never offered the south-only item; moved south: may be
    assert "south-only" not in listed(model, "u00", 13)
    model.upsert_users(pl.DataFrame({"user_id": ["u00"], "region": ["south"]}))
    assert model.retrieval.regions_of(model.retrieval.user_rows(pl.Series(["u00"])))[0] == (
        model.retrieval.region_names.index("south")
    )
    # an item's regions replaced: i00 now sells in the north only
    unknown = model.upsert_items(
        validate_items(
            pl.DataFrame({"item_id": ["i00", "brand-new"], "regions": [["north"], None]}), []
        )
    )
    assert unknown == ["brand-new"]
    south = [f"u{u:02d}" for u in range(1, 30, 2)]
    assert "i00" not in model.recommend(south, 12).get_column("item_id").to_list()


def test_a_model_that_took_live_updates_refuses_to_be_saved(model: Recommender, tmp_path) -> None:
    model.absorb(live_events([("u00", "i01", 0, "view")]))
    with pytest.raises(ModelError, match="live"):
        model.save(tmp_path / "m")


@pytest.mark.parametrize("name", ["ease", "als", "itemknn", "popularity"])
def test_baselines_take_live_events_too(market: Dataset, name: str) -> None:
    """Every model behind the pipeline absorbs events: seen items leave the list at once;
    a user first seen live is scored from their new history by history readers (EASE,
    item-kNN) and gets the fallback from factor models, which have no factors for them."""
    model = Recommender(create(name)).fit(market)
    model.absorb(live_events([("u00", "i11", 0, "view"), ("walk-in", "i02", 1, "view")]))
    assert "i11" not in listed(model, "u00")
    assert "i02" not in listed(model, "walk-in")
    assert len(listed(model, "walk-in")) == 12  # 13 items but the seen one (no region: all sell)


def test_a_product_listed_live_is_recommendable_at_once(model: Recommender) -> None:
    """A new product placed by its content: retrieved for users of its category right
    away, with a column in every later step (rules, ranker, exploration)."""
    items = validate_items(
        pl.DataFrame(
            {
                "item_id": ["fresh-toy"],
                "title": ["wooden toy train"],
                "category": ["Toys"],
                "price": [12.0],
                "created_at": [T0 + timedelta(hours=99)],
            }
        ),
        [],
    )
    assert model.upsert_items(items) == ["fresh-toy"]
    assert model.upsert_items(items) == []  # a second PUT replaces, creates nothing
    n_items = model.retrieval.item_ids.len()
    assert n_items == 14 and model.ranking.state.item_price.shape == (14,)
    everyone = [f"u{u:02d}" for u in range(30)] + ["nobody"]
    recs = model.recommend(everyone, 13)
    assert "fresh-toy" in recs.get_column("item_id").to_list()
    # events on it are taken in like any other; delisting it removes it everywhere
    model.absorb(live_events([("u05", "fresh-toy", 0, "click")]))
    assert "fresh-toy" not in listed(model, "u05", 14)
    assert model.stats.clicks[-1] == 1
    model.delist(["fresh-toy"])
    assert "fresh-toy" not in model.recommend(everyone, 14).get_column("item_id").to_list()


def _rules_hold(model: Recommender, market: Dataset, recs: pl.DataFrame) -> None:
    for user, mine in recs.group_by("user_id"):
        seen = set(market.events.filter(pl.col("user_id") == user[0])["item_id"].to_list())
        assert not seen & set(mine["item_id"].to_list())
    assert "south-only" not in recs.filter(pl.col("user_id") == "u00")["item_id"].to_list()


def test_a_failing_ranker_degrades_to_retrieval_order(
    model: Recommender, market: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranker raising (or the budget spent before ranking) still answers k items by
    the rules, in retrieval order, saying why."""
    model.ranking.active = True

    def broken(*args, **kwargs):
        raise RuntimeError("ranker down")

    monkeypatch.setattr(model.ranking, "score", broken)
    recs = model.recommend_detailed(["u00", "u02"], 5)
    assert recs.height == 10 and set(recs["source"].to_list()) <= {"retrieval", "exploration"}
    assert all("ranker down" in s for s in recs["signals"].to_list() if s)
    _rules_hold(model, market, recs)


def test_a_failing_retrieval_degrades_to_regional_popularity(
    model: Recommender, market: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("index down")

    monkeypatch.setattr(model.retrieval, "top_items", broken)
    recs = model.recommend_detailed(["u00", "u02", "nobody"], 5)
    assert recs.height == 15 and set(recs["source"].to_list()) <= {"fallback", "exploration"}
    _rules_hold(model, market, recs)


def test_a_spent_budget_skips_the_ranker(model: Recommender, market: Dataset) -> None:
    model.ranking.active = True
    model.config = model.config.model_copy(update={"rank_budget_ms": 1e-6})
    recs = model.recommend_detailed(["u00"], 5)
    assert recs.height == 5 and all("budget" in s for s in recs["signals"].to_list())
    _rules_hold(model, market, recs)


@pytest.fixture
def indexed(market: Dataset) -> Recommender:
    """The two-stage pipeline with retrieval through the faiss serving index (threshold 1:
    this 13-item catalogue gets one, a single list scanned whole)."""
    pytest.importorskip("faiss")
    return Recommender(
        create("two-tower", {**TINY_TOWER, "ann_min_items": 1}),
        ranking=RankingParams(epochs=2, random_negatives=3, candidates=10),
    ).fit(market)


def test_the_serving_index_gives_the_exact_lists(indexed: Recommender) -> None:
    everyone = [f"u{u:02d}" for u in range(30)] + ["nobody"]
    scorer = indexed.retrieval.scorer
    through_index = indexed.recommend_detailed(everyone, 6)
    assert scorer.serving_index() is not None
    scorer.params = scorer.params.model_copy(update={"ann_min_items": None})
    assert indexed.retrieval._serving_index() is None
    exact = indexed.recommend_detailed(everyone, 6)
    assert through_index.select("user_id", "item_id", "rank", "source").equals(
        exact.select("user_id", "item_id", "rank", "source")
    )
    assert np.allclose(through_index["score"], exact["score"], atol=1e-4)


def test_the_serving_index_follows_live_updates(indexed: Recommender, market: Dataset) -> None:
    everyone = [f"u{u:02d}" for u in range(30)] + ["nobody"]
    scorer = indexed.retrieval.scorer
    indexed.recommend(everyone, 5)
    index = scorer.serving_index()
    items = validate_items(
        pl.DataFrame(
            {
                "item_id": ["fresh-toy"],
                "title": ["wooden toy train"],
                "category": ["Toys"],
                "created_at": [T0 + timedelta(hours=99)],
            }
        ),
        [],
    )
    indexed.upsert_items(items)
    assert scorer.serving_index() is index and len(index) == 14  # added, not rebuilt
    recs = indexed.recommend(everyone, 13)
    assert "fresh-toy" in recs.get_column("item_id").to_list()
    _rules_hold(indexed, market, recs)
    indexed.absorb(live_events([("u05", "fresh-toy", 0, "click")]))
    assert "fresh-toy" not in listed(indexed, "u05", 14)
    indexed.delist(["fresh-toy", "i00"])
    gone = indexed.recommend(everyone, 14).get_column("item_id").to_list()
    assert not {"fresh-toy", "i00"} & set(gone)


def test_a_loaded_model_moves_a_trained_user_to_another_region(
    model: Recommender, tmp_path
) -> None:
    # a saved folder's arrays came back read-only: PUT /v1/users for a trained user failed
    loaded = load_recommender(model.save(tmp_path / "saved"))
    loaded.upsert_users(pl.DataFrame({"user_id": ["u00"], "region": ["south"]}))
    row = loaded.retrieval.user_rows(pl.Series(["u00"]))
    assert loaded.retrieval.regions_of(row)[0] == loaded.retrieval.region_names.index("south")
