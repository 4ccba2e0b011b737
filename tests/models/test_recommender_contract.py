"""The contract every recommender passes (one suite, every model of the registry).

The world (conftest `two_taste_world`) has a known answer: users of group a only ever touched
a-items, so a collaborative model must fill an a-user's list with the a-items they have not
seen; popularity must put the most popular sellable items first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from marketrec.core.errors import ConfigError, ModelError
from marketrec.models.registry import MODELS, create, load_model, make_params

COLLABORATIVE = ["itemknn", "ease", "als", "bpr", "two-tower"]
# Two tastes need two factors; more would let the factorisations memorise this tiny world.
TUNED_FOR_TINY = {
    "als": {"factors": 2, "iterations": 30, "regularization": 0.1},
    "bpr": {"factors": 2, "iterations": 300, "learning_rate": 0.05},
    "two-tower": {
        "text_encoder": "hashed",
        "epochs": 40,
        "learning_rate": 0.03,
        "batch_size": 64,
        "validation_fraction": 0.0,
        "random_negatives": 8,
        "dim": 16,
        # 14 items whose text says little: ids carry the tastes, so fewer are dropped
        # (at the default 0.6, 5 of 10 seeds missed the answer; at 0.3, 10 of 10 found it)
        "id_dropout": 0.3,
    },
}


def fitted(name: str, world):
    return create(name, TUNED_FOR_TINY.get(name)).fit(world)


@pytest.fixture(params=sorted(MODELS))
def model_name(request) -> str:
    return request.param


def seen_by(world, user: str) -> set[str]:
    return set(world.events.filter(user_id=user).get_column("item_id").to_list())


def test_no_seen_items_and_exactly_k(model_name, two_taste_world) -> None:
    model = fitted(model_name, two_taste_world)
    users = ["a00", "b07", "fresh", "stranger"]
    recs = model.recommend(users, 3)
    assert recs.columns == ["user_id", "item_id", "rank", "score"]
    for user in users:
        mine = recs.filter(user_id=user).sort("rank")
        assert mine.get_column("rank").to_list() == [1, 2, 3]
        assert not set(mine.get_column("item_id").to_list()) & seen_by(two_taste_world, user)
        scores = mine.get_column("score").to_list()
        assert scores == sorted(scores, reverse=True)


def test_fewer_than_k_only_when_catalogue_runs_out(model_name, two_taste_world) -> None:
    model = fitted(model_name, two_taste_world)
    # b-users live in the south: 14 items − p (delisted) − n (north only) − 4 seen = 8.
    recs = model.recommend(["b00"], 50)
    assert recs.height == 8
    assert recs.get_column("item_id").n_unique() == 8


def test_filters_delisted_and_region(model_name, two_taste_world) -> None:
    model = fitted(model_name, two_taste_world)
    recs = model.recommend(["b00", "b01", "fresh", "a00", "stranger"], 20)
    assert "p" not in recs.get_column("item_id").to_list()
    south = recs.filter(pl.col("user_id").is_in(["b00", "b01", "fresh"]))
    assert "n" not in south.get_column("item_id").to_list()
    # the request's region overrides the home region
    north = model.recommend(["fresh"], 20, regions=["north"])
    assert "n" in north.get_column("item_id").to_list()


def test_include_seen(model_name, two_taste_world) -> None:
    model = fitted(model_name, two_taste_world)
    recs = model.recommend(["a00"], 13, include_seen=True)
    assert seen_by(two_taste_world, "a00") <= set(recs.get_column("item_id").to_list())


@pytest.mark.parametrize("name", COLLABORATIVE)
def test_known_answer_collaborative(name, two_taste_world) -> None:
    model = fitted(name, two_taste_world)
    for user in ["a00", "a13", "b05", "b29"]:
        group = user[0]
        # n is co-viewed only by a-users (and sells only in their region, the north)
        taste = {f"{group}{i}" for i in range(6)} | ({"n"} if group == "a" else set())
        unseen_of_taste = taste - seen_by(two_taste_world, user)
        top = model.recommend([user], len(unseen_of_taste)).get_column("item_id").to_list()
        assert set(top) == unseen_of_taste, (name, user, top)


def test_known_answer_popularity(two_taste_world) -> None:
    # Every a- and b-item has 20 clicks; n has 10 views. Cold south users: no n (north only).
    model = fitted("region-popularity", two_taste_world)
    fresh = model.recommend(["fresh"], 12).get_column("item_id").to_list()
    assert len(fresh) == 12 and set(fresh) == {f"a{i}" for i in range(6)} | {
        f"b{i}" for i in range(6)
    }
    north_top = model.recommend(["stranger"], 13, regions=["north"])
    assert set(north_top.get_column("item_id").to_list()) >= {"n"}


def test_cold_users_get_regional_popularity(two_taste_world) -> None:
    # With per-region counts and no prior, the north's extra item n outranks nothing in the
    # south but is in the north's list for a cold user.
    model = create("ease", fallback={"region_prior": 0.0}).fit(two_taste_world)
    north = model.recommend(["someone"], 13, regions=["north"]).get_column("item_id").to_list()
    south = model.recommend(["fresh"], 13).get_column("item_id").to_list()
    assert "n" in north and "n" not in south


def test_save_load_round_trip(model_name, two_taste_world, tmp_path: Path) -> None:
    model = fitted(model_name, two_taste_world)
    users = ["a00", "b07", "fresh", "stranger"]
    before = model.recommend(users, 5)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    after = loaded.recommend(users, 5)
    assert before.select("user_id", "item_id", "rank").equals(
        after.select("user_id", "item_id", "rank")
    )
    np.testing.assert_allclose(before.get_column("score"), after.get_column("score"), rtol=1e-6)


def test_bad_inputs(two_taste_world, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        create("nope")
    with pytest.raises(ConfigError, match="invalid parameters for model 'ease'"):
        make_params("ease", {"l2": -1})
    with pytest.raises(ConfigError, match="Extra inputs"):
        make_params("ease", {"lambda": 3})
    model = fitted("popularity", two_taste_world)
    for k in (0, -1):
        with pytest.raises(ConfigError, match="positive integer"):
            model.recommend(["a00"], k)
    with pytest.raises(ModelError, match="not fitted"):
        create("ease").recommend(["a00"], 3)
    with pytest.raises(ModelError, match="model folder not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"manifest\.json is missing"):
        load_model(tmp_path / "empty")


def test_data_without_any_region(model_name) -> None:
    """Sequence datasets have no regions at all: every model still fits and serves."""
    from conftest import events_frame
    from marketrec.data.schema import make_dataset

    rows = [
        (f"u{u}", f"i{(u + j) % 7}", u * 10 + j, "purchase") for u in range(12) for j in range(3)
    ]
    world = make_dataset(events_frame(rows))
    model = fitted(model_name, world)
    recs = model.recommend(["u0", "nobody"], 3)
    assert recs.group_by("user_id").len().get_column("len").to_list() == [3, 3]
