"""What only the two-tower model promises: content places new items, profiles place new
users, the ranking moment is honoured, and a model folder serves the same answers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

pytest.importorskip("torch", reason="torch is needed for the two-tower model")

from conftest import T0, events_frame
from marketrec.data.schema import make_dataset
from marketrec.models.registry import create, load_model

FAST = {
    "text_encoder": "hashed",
    "epochs": 30,
    "id_dropout": 0.6,  # few examples: drop ids often so content and profile carry weight
    "batch_size": 128,
    "learning_rate": 0.01,
    "validation_fraction": 0.0,
    "random_negatives": 16,
    "dim": 16,
    "target_horizon": 0,
}


@pytest.fixture(scope="module")
def content_world():
    """Two tastes (garden, kitchen); every item's text names its kind. Users g* buy garden
    items, k* kitchen items; the profile attribute `hobby` says which. Two items are listed
    but never bought: a new garden item and a new kitchen item."""
    rows = []
    for group, prefix in (("g", "garden"), ("k", "kitchen")):
        for u in range(40):
            for j in range(4):
                rows.append((f"{group}{u:02d}", f"{prefix}{(u + j) % 8}", u * 10 + j, "purchase"))
    names = [f"garden{i}" for i in range(8)] + [f"kitchen{i}" for i in range(8)]
    items = pl.DataFrame(
        {
            "item_id": [*names, "garden-new", "kitchen-new"],
            "title": [f"{n.rstrip('0123456789-new')} tool {n}" for n in names]
            + ["garden tool new", "kitchen tool new"],
            "category": ["Garden"] * 8 + ["Kitchen"] * 8 + ["Garden", "Kitchen"],
        }
    )
    users = pl.DataFrame(
        {
            "user_id": [f"g{u:02d}" for u in range(40)]
            + [f"k{u:02d}" for u in range(40)]
            + ["new-gardener", "new-cook"],
            "hobby": ["gardening"] * 40 + ["cooking"] * 40 + ["gardening", "cooking"],
        }
    )
    return make_dataset(events_frame(rows), items, users)


@pytest.fixture(scope="module", params=["full softmax", "sampled softmax"])
def fitted(content_world, request):
    """The tiny world trained both ways: its 18 items fit the exact softmax; with the
    threshold at 0 the sampled one (in-batch and random negatives, logQ) trains instead."""
    sampled = {"full_softmax_max_items": 0} if request.param == "sampled softmax" else {}
    return create("two-tower", {**FAST, **sampled}).fit(content_world)


def rank_of(recs: pl.DataFrame, user: str, item: str) -> int:
    row = recs.filter(user_id=user, item_id=item)
    return int(row.get_column("rank")[0]) if row.height else 10**6


def test_new_items_placed_by_content(fitted) -> None:
    recs = fitted.recommend([f"g{u:02d}" for u in range(10)] + [f"k{u:02d}" for u in range(10)], 18)
    for u in range(10):
        g, k = f"g{u:02d}", f"k{u:02d}"
        assert rank_of(recs, g, "garden-new") < rank_of(recs, g, "kitchen-new"), g
        assert rank_of(recs, k, "kitchen-new") < rank_of(recs, k, "garden-new"), k


def test_new_users_placed_by_profile(fitted) -> None:
    recs = fitted.recommend(["new-gardener", "new-cook"], 8)
    gardener = recs.filter(user_id="new-gardener").get_column("item_id").to_list()
    cook = recs.filter(user_id="new-cook").get_column("item_id").to_list()
    assert sum(i.startswith("garden") for i in gardener) >= 6, gardener
    assert sum(i.startswith("kitchen") for i in cook) >= 6, cook


def test_ranking_moment_changes_the_user_vector(fitted) -> None:
    user = fitted.scorer
    rows = np.array([0, 0])
    late = T0.timestamp() + 400 * 86_400
    vectors = user.user_vectors(rows, np.array([0, 0]), np.array([np.nan, late]))
    assert not np.allclose(vectors[0], vectors[1])
    same = fitted.recommend(["g00"], 5, at=[None])
    assert same.equals(fitted.recommend(["g00"], 5))
    moved = fitted.recommend(["g00"], 5, at=[T0 + timedelta(days=400)])
    assert moved.height == 5


def test_save_load_serves_the_same(fitted, tmp_path: Path) -> None:
    users = ["g00", "k05", "new-cook", "stranger"]
    before = fitted.recommend(users, 6)
    fitted.save(tmp_path / "tower")
    after = load_model(tmp_path / "tower").recommend(users, 6)
    assert before.select("user_id", "item_id", "rank").equals(
        after.select("user_id", "item_id", "rank")
    )
    np.testing.assert_allclose(before.get_column("score"), after.get_column("score"), rtol=1e-5)


def test_catalogue_is_scored_as_of_each_users_moment(fitted) -> None:
    scorer = fitted.scorer
    before_any_event = T0.timestamp() - 1.0
    early = scorer.catalogue_vectors(before_any_event)
    assert not np.allclose(early, scorer.catalogue_vectors(scorer._meta["reference_ts"]))
    # two users scored together, one at each moment, get the catalogue of their own moment
    rows, regions = np.array([0, 0]), np.array([0, 0])
    moments = np.array([before_any_event, np.nan])
    both = scorer.score(rows, None, regions, moments)
    users = scorer.user_vectors(rows, regions, moments)
    temperature = scorer.params.temperature
    expected_early = users[0] @ early[:, :-1].T / temperature + early[:, -1]
    assert np.allclose(both[0], expected_early, atol=1e-4)


def test_without_time_features_the_clock_changes_nothing(content_world) -> None:
    # sequence datasets carry only each user's order as a clock: with time_features off,
    # neither the catalogue nor a user's vector depends on the moment
    model = create("two-tower", {**FAST, "epochs": 2, "time_features": False}).fit(content_world)
    scorer = model.scorer
    start = T0.timestamp()
    assert np.array_equal(scorer.catalogue_vectors(start), scorer.catalogue_vectors(start + 1e6))
    rows, regions = np.array([0, 0]), np.array([0, 0])
    vectors = scorer.user_vectors(rows, regions, np.array([start + 500, start + 9e6]))
    assert np.allclose(vectors[0], vectors[1])


def test_history_vectors_from_the_stored_catalogue_equal_the_tower(fitted) -> None:
    """Serving at "now" reads history items' vectors from the stored catalogue instead of
    running the item tower again: it must be the same vector."""
    from marketrec.retrieval.training import user_vectors

    scorer = fitted.scorer
    rows = np.arange(len(fitted.user_ids))
    regions = np.zeros(len(rows), dtype=np.int64)
    now = float(scorer._meta["reference_ts"])
    args = (scorer._model, scorer._data, rows, regions, now, scorer._config)
    np.testing.assert_allclose(
        user_vectors(*args, catalogue=scorer._item_vectors), user_vectors(*args), atol=1e-6
    )


def test_new_listings_get_reserved_places(content_world) -> None:
    # the two never-bought items are listed a day before the last event; the older items
    # have no listing time (never "new")
    last = content_world.events.get_column("ts").max()
    items = content_world.items.with_columns(
        created_at=pl.when(pl.col("item_id").str.ends_with("-new"))
        .then(pl.lit(last - timedelta(days=1)))
        .otherwise(None)
    )
    data = make_dataset(content_world.events, items, content_world.users)
    model = create("two-tower", {**FAST, "epochs": 3, "new_item_share": 0.25}).fit(data)
    mask, places = model.scorer.reserved_items(8)
    assert places == 2
    assert sorted(model.item_ids.filter(pl.Series(mask)).to_list()) == ["garden-new", "kitchen-new"]
    users = [f"g{u:02d}" for u in range(5)] + [f"k{u:02d}" for u in range(5)]
    recs = model.recommend(users, 8)
    for user in users:
        shown = recs.filter(user_id=user).get_column("item_id").to_list()
        assert len(shown) == len(set(shown)) == 8
        assert {"garden-new", "kitchen-new"} <= set(shown), (user, shown)
    # a top 3 reserves no place (0.25 × 3 rounds down)
    assert model.scorer.reserved_items(3)[1] == 0


def test_no_item_before_its_listing_time(content_world) -> None:
    last = content_world.events.get_column("ts").max()
    items = content_world.items.with_columns(
        created_at=pl.when(pl.col("item_id") == "garden-new")
        .then(pl.lit(last + timedelta(days=10)))
        .otherwise(None)
    )
    data = make_dataset(content_world.events, items, content_world.users)
    model = create("two-tower", {**FAST, "epochs": 2}).fit(data)
    every = model.item_ids.len()
    now = model.recommend(["g00", "new-gardener"], every)
    assert "garden-new" not in now.get_column("item_id").to_list()
    assert now.height == 2 * (every - 1) - 4  # g00's four bought items are left out too
    later = model.recommend(["g00"], every, at=[last + timedelta(days=11)])
    assert "garden-new" in later.get_column("item_id").to_list()


def test_profile_only_users_are_read_by_profile_alone(content_world, tmp_path: Path) -> None:
    """A user known only from the profile table was no training example's user: the id
    embedding of their hashed bucket is another user's or untrained noise, so it must not
    enter their vector. Two such users with the same profile get the same vector."""
    twins = pl.DataFrame({"user_id": ["twin-a", "twin-b"], "hobby": ["gardening", "gardening"]})
    users = pl.concat([content_world.users, twins])
    data = make_dataset(content_world.events, content_world.items, users)
    model = create("two-tower", {**FAST, "epochs": 2}).fit(data)
    reloaded = load_model(model.save(tmp_path / "tower"))
    for fitted_model in (model, reloaded):
        scorer = fitted_model.scorer
        rows = fitted_model.user_rows(pl.Series(["twin-a", "twin-b", "g00", "new-gardener"]))
        assert list(scorer._data.users.id_bucket[rows] == 0) == [True, True, False, True]
        vectors = scorer.user_vectors(rows, np.zeros(len(rows), dtype=np.int64))
        np.testing.assert_array_equal(vectors[0], vectors[1])
        np.testing.assert_array_equal(vectors[0], vectors[3])


def test_training_threads_apply_to_the_fit_only(content_world, monkeypatch) -> None:
    import torch

    import marketrec.retrieval.training as training

    seen = []
    train = training.train_two_tower

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return train(*args, **kwargs)

    monkeypatch.setattr(training, "train_two_tower", recording)
    before = torch.get_num_threads()
    try:
        params = {**FAST, "epochs": 1, "threads": 1, "training_threads": 2}
        create("two-tower", params).fit(content_world)
        assert seen == [2]
        assert torch.get_num_threads() == 1  # served with `threads` after the fit
    finally:
        torch.set_num_threads(before)


def test_a_requests_device_is_the_towers_device_input(content_world, tmp_path: Path) -> None:
    """Training gives the user tower the device of the event it predicts; a request's device
    takes that place (without one, the device of the user's last event stands in; a name
    training never saw is the unknown device), in the model, the pipeline and the service."""
    from marketrec.online.live import LiveRecommender
    from marketrec.online.log import SQLiteEventLog
    from marketrec.pipeline.config import PipelineConfig
    from marketrec.pipeline.recommender import Recommender

    events = content_world.events.sort("ts")
    devices = pl.Series("device", ["mobile" if i % 3 else "desktop" for i in range(events.height)])
    world = make_dataset(events.with_columns(devices), content_world.items, content_world.users)
    model = create("two-tower", {**FAST, "epochs": 3}).fit(world)
    rows = model.user_rows(pl.Series(["g00"]))
    region = model.regions_of(rows)
    last = world.events.filter(user_id="g00").sort("ts").get_column("device")[-1]
    other = "desktop" if last == "mobile" else "mobile"
    vectors = {
        name: model.scorer.user_vectors(rows, region, devices=None if name == "-" else [name])
        for name in ("-", last, other, "smart-tv", "fridge")
    }
    assert np.array_equal(model.scorer.user_vectors(rows, region, devices=[None]), vectors["-"])
    assert np.array_equal(vectors[last], vectors["-"])  # the last event's device stands in
    assert not np.allclose(vectors[other], vectors["-"])
    assert np.array_equal(vectors["smart-tv"], vectors["fridge"])  # both unknown
    assert not np.allclose(vectors["smart-tv"], vectors["-"])
    # retrieval's scores, the pipeline's lists and the service's answers read it
    plain = model.top_items(rows, region, 5)[1]
    assert np.array_equal(model.top_items(rows, region, 5, devices=[last])[1], plain)
    assert not np.allclose(model.top_items(rows, region, 5, devices=[other])[1], plain)
    pipeline = Recommender(create("two-tower", {**FAST, "epochs": 3}), PipelineConfig())
    pipeline.fit(world)
    asked = pipeline.recommend_many(["g00", "k00"], 5, devices=[other, None])
    alone = pipeline.recommend_many(["g00"], 5, devices=[other])[0]
    assert [e.item_id for e in asked[0]] == [e.item_id for e in alone]  # in a batch too
    assert [e.score for e in asked[0]] == pytest.approx([e.score for e in alone], rel=1e-5)
    default = pipeline.recommend_many(["g00"], 5)[0]
    assert [e.score for e in alone] != [e.score for e in default]
    live = LiveRecommender(pipeline, SQLiteEventLog(tmp_path / "events.sqlite"), version="v")
    live.recover()
    served = live.recommend("g00", 5, device=other)
    assert [(i["item_id"], i["score"]) for i in served["items"]] == [
        (e.item_id, e.score) for e in alone
    ]
    live.close()
