"""The synthetic marketplace: deterministic, schema-valid, calibrated and causally consistent.

Worlds are small (a mid-size 20k-user world is generated once per module, in well under a
second) so the whole file stays fast.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from marketrec.core.errors import ConfigError
from marketrec.data.schema import Dataset, load_dataset
from marketrec.data.synthetic import (
    GroundTruth,
    SyntheticConfig,
    generate_marketplace,
    write_marketplace,
)

SMALL = SyntheticConfig(users=2_000, items=400, days=10, seed=7)


@pytest.fixture(scope="module")
def small() -> tuple[Dataset, GroundTruth]:
    return generate_marketplace(SMALL)


@pytest.fixture(scope="module")
def mid() -> tuple[Dataset, GroundTruth]:
    """The default-size demo world (20k users, 3k items, 30 days)."""
    return generate_marketplace(SyntheticConfig(seed=3))


def _counts(events: pl.DataFrame) -> dict[str, int]:
    counts = events.group_by("event").len()
    return dict(zip(counts["event"].to_list(), counts["len"].to_list(), strict=True))


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"users": 0},
        {"items": -1},
        {"days": 0},
        {"regions": 0},
        {"seed": -1},
        {"categories": 99},
        {"cart_rate": 0.5},
        {"purchase_rate": 0.05},
        {"initial_user_share": 1.5},
        {"views_per_session": 0.5},
        {"start": datetime(2026, 1, 1)},
    ],
)
def test_invalid_config_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SyntheticConfig(**bad)  # type: ignore[arg-type]


def test_config_round_trips_through_dict() -> None:
    cfg = SyntheticConfig(users=10, items=5, days=2, seed=4)
    assert SyntheticConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        SyntheticConfig.from_dict({**cfg.to_dict(), "bogus": 1})


# ---- determinism and schema ------------------------------------------------------------------


def test_same_seed_same_data_other_seed_differs(small: tuple[Dataset, GroundTruth]) -> None:
    again, _ = generate_marketplace(SMALL)
    ds, _ = small
    assert ds.events.equals(again.events)
    assert ds.items.equals(again.items)
    assert ds.users.equals(again.users)
    other, _ = generate_marketplace(SyntheticConfig(users=2_000, items=400, days=10, seed=8))
    assert not ds.events.equals(other.events)
    assert not ds.items.equals(other.items)


def test_written_folder_loads_back_valid(tmp_path: Path) -> None:
    written = write_marketplace(tmp_path / "world", SMALL)
    loaded = load_dataset(tmp_path / "world")
    assert loaded.notes == ()  # nothing needed coercing: the generator writes canonical types
    assert loaded.events.equals(written.events)
    assert loaded.items.equals(written.items)
    assert loaded.users.equals(written.users)
    assert (tmp_path / "world" / "ground_truth" / "latent.npz").exists()
    assert set(loaded.users.columns) >= {"age", "gender", "signup_channel", "region"}


def test_events_sorted_and_ids_well_formed(small: tuple[Dataset, GroundTruth]) -> None:
    ev = small[0].events
    assert ev["ts"].is_sorted()
    assert ev["user_id"].str.contains(r"^u\d{6}$").all()
    assert ev["item_id"].drop_nulls().str.contains(r"^i\d{5}$").all()
    assert set(ev["event"].unique()) == {"search", "view", "click", "add_to_cart", "purchase"}
    assert (
        ev.filter(pl.col("event") == "search")["item_id"].null_count()
        == ev.filter(pl.col("event") == "search").height
    )
    assert (
        ev.filter(pl.col("event") != "search")["query"].null_count()
        == ev.filter(pl.col("event") != "search").height
    )
    assert ev["session_id"].null_count() == 0
    assert set(ev["device"].unique()) <= {"mobile", "desktop", "tablet"}
    end = SMALL.end
    assert ev["ts"].max() < end  # type: ignore[operator]
    assert ev["ts"].min() >= SMALL.start  # type: ignore[operator]


def test_catalogue_has_hierarchy_text_and_regions(small: tuple[Dataset, GroundTruth]) -> None:
    items, truth = small[0].items, small[1]
    assert items["category"].str.contains(" > ").all()
    assert items["category"].str.split(" > ").list.first().n_unique() == SMALL.categories
    assert items["title"].null_count() == 0 and items["description"].null_count() == 0
    assert items["tags"].list.len().min() >= 3  # type: ignore[operator]
    regional = items.filter(pl.col("regions").is_not_null())
    assert 0 < regional.height < items.height  # most sell everywhere, some in a subset
    assert set(regional["regions"].explode().unique()) <= set(truth.region_names)
    assert truth.region_names == ("north", "south", "east", "west")
    assert 0 < (~items["available"]).sum() < items.height * 0.1


# ---- calibration -----------------------------------------------------------------------------


def test_funnel_matches_retailrocket_calibration(mid: tuple[Dataset, GroundTruth]) -> None:
    ev = mid[0].events
    n = _counts(ev)
    views = n["view"]
    assert 0.1 <= n["click"] / views <= 0.3
    assert 0.018 <= n["add_to_cart"] / views <= 0.035  # RetailRocket: 0.026
    assert 0.005 <= n["purchase"] / views <= 0.012  # RetailRocket: 0.0084
    assert n["click"] > n["add_to_cart"] > n["purchase"]
    visitors = ev.filter(pl.col("event") == "view")["user_id"].n_unique()
    assert 1.5 <= views / visitors <= 2.4  # RetailRocket: 1.89
    assert 2.0 <= ev.height / 20_000 <= 3.0  # ≈ 2.5 events per user


def test_most_users_have_one_session_and_a_heavy_tail(mid: tuple[Dataset, GroundTruth]) -> None:
    per_user = mid[0].events.group_by("user_id").agg(pl.col("session_id").n_unique())
    sessions = per_user["session_id"]
    assert (sessions == 1).mean() > 0.6
    assert sessions.max() >= 20  # type: ignore[operator]


def test_users_and_items_arrive_every_day(mid: tuple[Dataset, GroundTruth]) -> None:
    ds = mid[0]
    cfg = mid[1].config
    new_users = ds.users.filter(pl.col("signup_at") >= cfg.start)
    new_items = ds.items.filter(pl.col("created_at") >= cfg.start)
    assert 0 < new_users.height < ds.users.height
    assert 0 < new_items.height < ds.items.height
    assert new_users["signup_at"].dt.date().n_unique() == cfg.days
    assert new_items["created_at"].dt.date().n_unique() == cfg.days


# ---- causal consistency ----------------------------------------------------------------------


def test_no_event_before_signup(mid: tuple[Dataset, GroundTruth]) -> None:
    ds = mid[0]
    joined = ds.events.join(ds.users.select("user_id", "signup_at"), on="user_id")
    assert joined.height == ds.events.height
    assert joined.filter(pl.col("ts") < pl.col("signup_at")).height == 0
    late = joined.filter(pl.col("signup_at") > mid[1].config.start)
    assert late.height > 0  # new users do act, after they sign up


def test_items_only_after_listing_in_their_regions(mid: tuple[Dataset, GroundTruth]) -> None:
    ds, truth = mid
    ev = ds.events.filter(pl.col("item_id").is_not_null())
    joined = ev.join(ds.items.select("item_id", "created_at", "regions"), on="item_id")
    assert joined.height == ev.height
    assert joined.filter(pl.col("ts") < pl.col("created_at")).height == 0
    outside = joined.filter(
        pl.col("regions").is_not_null() & ~pl.col("regions").list.contains(pl.col("region"))
    )
    assert outside.height == 0
    assert joined.filter(pl.col("regions").is_not_null()).height > 0
    # Delisted items are not touched after they leave the catalogue.
    delisted = pl.DataFrame(
        {"item_id": truth.item_ids, "delisted_at": truth.item_delisted_at.astype("int64")}
    ).with_columns(pl.col("delisted_at").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    late = ev.join(delisted, on="item_id").filter(pl.col("ts") >= pl.col("delisted_at"))
    assert late.height == 0


def test_events_carry_the_users_home_region(mid: tuple[Dataset, GroundTruth]) -> None:
    ds = mid[0]
    joined = ds.events.join(
        ds.users.select("user_id", pl.col("region").alias("home")), on="user_id"
    )
    assert (joined["region"] == joined["home"]).all()


def test_purchase_value_is_price_times_region_multiplier(
    mid: tuple[Dataset, GroundTruth],
) -> None:
    ds, truth = mid
    multipliers = pl.DataFrame(
        {"region": list(truth.region_names), "multiplier": truth.region_multipliers}
    )
    buys = (
        ds.events.filter(pl.col("event") == "purchase")
        .join(ds.items.select("item_id", "price"), on="item_id")
        .join(multipliers, on="region")
    )
    assert buys.height > 100
    expected = (buys["price"] * buys["multiplier"]).to_numpy()
    np.testing.assert_allclose(buys["value"].to_numpy(), expected, rtol=1e-12)
    assert len(set(truth.region_multipliers.tolist())) > 1  # regions really price differently
    others = ds.events.filter(pl.col("event") != "purchase")
    assert others["value"].null_count() == others.height


def test_search_sessions_view_the_searched_subcategory(mid: tuple[Dataset, GroundTruth]) -> None:
    ds = mid[0]
    ev = ds.events
    searches = ev.filter(pl.col("event") == "search").select("session_id", "query")
    assert searches.height > 0
    assert searches["query"].str.len_chars().min() > 0  # type: ignore[operator]
    views = (
        ev.filter(pl.col("event") == "view")
        .join(searches, on="session_id")
        .join(ds.items.select("item_id", "category"), on="item_id")
    )
    per_session = views.group_by("session_id").agg(pl.col("category").n_unique())
    assert (per_session["category"] == 1).all()


def test_taste_explains_behaviour_better_than_popularity(
    mid: tuple[Dataset, GroundTruth],
) -> None:
    """Held-out clicks are found far more often by the true taste than by popularity, so a
    recommender that learns the latent structure has room to beat the popularity baseline."""
    ds, truth = mid
    cut = truth.config.start.replace(day=24)
    ev = ds.events
    train = ev.filter(pl.col("ts") < cut, pl.col("event") == "view")
    test = ev.filter(pl.col("ts") >= cut, pl.col("event").is_in(["click", "add_to_cart"]))
    rows = {item: i for i, item in enumerate(truth.item_ids.tolist())}
    users = {user: i for i, user in enumerate(truth.user_ids.tolist())}
    test = test.unique(["user_id", "item_id"]).head(3_000)
    u = np.array([users[x] for x in test["user_id"].to_list()])
    target = np.array([rows[x] for x in test["item_id"].to_list()])

    counts = np.zeros(len(rows))
    for item, n in train.group_by("item_id").len().iter_rows():
        counts[rows[item]] = n
    popular = np.argsort(-counts)[:10]
    pop_hits = np.isin(target, popular).mean()

    score = np.log(truth.item_popularity)[None, :] + truth.config.taste_strength * (
        truth.affinity(u, np.arange(len(rows)))
    )
    top = np.argpartition(-score, 10, axis=1)[:, :10]
    oracle_hits = (top == target[:, None]).any(axis=1).mean()
    assert oracle_hits > 2 * pop_hits
    assert oracle_hits > 0.05


def test_content_words_reflect_latent_traits(mid: tuple[Dataset, GroundTruth]) -> None:
    """Items whose titles share a trait word have more similar latent vectors than random
    pairs: text features are informative about taste."""
    ds, truth = mid
    vocab = {w for pos, neg in truth.trait_words for side in (pos, neg) for w in side}
    words = [set(t.lower().split()) & vocab for t in ds.items["title"].to_list()]
    rng = np.random.default_rng(0)
    a = rng.integers(0, len(words), 20_000)
    b = rng.integers(0, len(words), 20_000)
    keep = a != b
    a, b = a[keep], b[keep]
    v = truth.item_latent / np.linalg.norm(truth.item_latent, axis=1, keepdims=True)
    cos = (v[a] * v[b]).sum(axis=1)
    shared = np.array([bool(words[i] & words[j]) for i, j in zip(a, b, strict=True)])
    assert shared.sum() > 200
    assert cos[shared].mean() > cos[~shared].mean() + 0.1


def test_category_trends_move(mid: tuple[Dataset, GroundTruth]) -> None:
    ds, truth = mid
    views = ds.events.filter(pl.col("event") == "view").join(
        ds.items.select("item_id", pl.col("category").str.split(" > ").list.first().alias("top")),
        on="item_id",
    )
    day = (pl.col("ts") - pl.lit(truth.config.start)).dt.total_days()
    first = views.filter(day < 5)["top"].value_counts(normalize=True, name="first")
    last = views.filter(day >= truth.config.days - 5)["top"].value_counts(
        normalize=True, name="last"
    )
    ratio = first.join(last, on="top").with_columns(r=pl.col("last") / pl.col("first"))["r"]
    assert ratio.max() > 1.5 or ratio.min() < 1 / 1.5  # type: ignore[operator]
    assert truth.category_trends.shape == (truth.config.categories, truth.config.days)


# ---- ground truth ----------------------------------------------------------------------------


def test_ground_truth_round_trip(small: tuple[Dataset, GroundTruth], tmp_path: Path) -> None:
    truth = small[1]
    truth.save(tmp_path / "gt")
    back = GroundTruth.load(tmp_path / "gt")
    assert back.config == truth.config
    assert back.region_names == truth.region_names
    assert back.category_names == truth.category_names
    assert back.trait_words == truth.trait_words
    for name in (
        "user_ids",
        "item_ids",
        "user_taste",
        "item_latent",
        "item_popularity",
        "category_trends",
        "region_multipliers",
        "user_category_weights",
        "item_category",
        "item_delisted_at",
        "category_centroids",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(truth, name), err_msg=name)
    assert pl.read_parquet(tmp_path / "gt" / "trends.parquet").height == truth.category_trends.size
    assert back.region_multiplier("north") == 1.0
    assert truth.user_taste.shape == (SMALL.users, SMALL.latent_dim)
    assert truth.item_latent.shape == (SMALL.items, SMALL.latent_dim)


def test_ground_truth_load_reports_missing_files(tmp_path: Path) -> None:
    from marketrec.core.errors import DataError

    with pytest.raises(DataError, match="ground-truth file is missing"):
        GroundTruth.load(tmp_path)


def test_start_is_respected() -> None:
    start = datetime(2025, 6, 1, 12, tzinfo=UTC)
    ds, _ = generate_marketplace(SyntheticConfig(users=300, items=80, days=2, start=start))
    assert ds.events["ts"].min() >= start  # type: ignore[operator]
    assert ds.events.height > 0
