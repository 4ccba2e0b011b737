"""A fine-tuned two-tower version re-embeds only the items whose vectors changed and moves only
those rows of the serving index; the index travels in the model folder, so loading a version
trains no index."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from marketrec.data.synthetic import SyntheticConfig, generate_marketplace
from marketrec.models.base import CollaborativeRecommender
from marketrec.models.registry import create, load_model
from marketrec.retrieval import index as index_module
from marketrec.retrieval.training import item_vectors

#: sampled softmax (the exact one sends a gradient to every item's id row), a serving index
PARAMS = {
    "text_encoder": "hashed",
    "epochs": 1,
    "validation_fraction": 0.0,
    "full_softmax_max_items": 0,
    "random_negatives": 16,
    "ann_min_items": 100,
}


def fine_tuned_versions(folder: Path, timed: bool):
    """(served model as loaded from its folder, its fine-tuned version): the served one
    trained on the first 27 days, the new version fine-tuned on the last 3."""
    params = {**PARAMS, "time_features": timed}
    data, _ = generate_marketplace(SyntheticConfig(users=600, items=1200, days=30, seed=4))
    cut = data.events.get_column("ts").max() - timedelta(days=3)
    early = dataclasses.replace(data, events=data.events.filter(pl.col("ts") < cut))
    create("two-tower", params).fit(early).save(folder)
    served = load_model(folder)
    assert isinstance(served, CollaborativeRecommender)
    tuned = create("two-tower", params)
    assert isinstance(tuned, CollaborativeRecommender)
    tuned.fine_tune_from(served, cut.timestamp())
    tuned.fit(data)
    return served, tuned


@pytest.fixture(scope="module")
def untimed(tmp_path_factory: pytest.TempPathFactory):
    """Without time features (no trend or age inputs)."""
    return fine_tuned_versions(tmp_path_factory.mktemp("untimed") / "v1", timed=False)


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory):
    return fine_tuned_versions(tmp_path_factory.mktemp("timed") / "v1", timed=True)


@pytest.fixture(params=["untimed", "timed"])
def versions(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def moved_weights(served: CollaborativeRecommender, tuned: CollaborativeRecommender) -> set[str]:
    old, new = served.scorer._model.state_dict(), tuned.scorer._model.state_dict()
    return {name for name in old if not torch.equal(old[name], new[name])}


def unchanged_columns(served: CollaborativeRecommender, tuned: CollaborativeRecommender):
    """(new column, previous column) pairs of the items whose vectors were copied."""
    column = {item: j for j, item in enumerate(served.item_ids.to_list())}
    pairs = [
        (j, column[item])
        for j, item in enumerate(tuned.item_ids.to_list())
        if item in column
        and np.array_equal(tuned.scorer._item_vectors[j], served.scorer._item_vectors[column[item]])
    ]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def test_the_new_catalogue_equals_a_full_pass_of_the_new_towers(versions) -> None:
    _, tuned = versions
    scorer = tuned.scorer
    full = item_vectors(scorer._model, scorer._data, scorer._meta["reference_ts"])
    np.testing.assert_allclose(scorer._item_vectors, full, atol=2e-5)


def test_without_time_features_only_the_items_that_moved_are_re_embedded(untimed) -> None:
    served, tuned = untimed
    n = len(tuned.scorer._item_vectors)
    reembedded = tuned.scorer._meta["report"]["reembedded_items"]
    assert 0 < reembedded < n / 2, (reembedded, n)
    assert len(unchanged_columns(served, tuned)) == n - reembedded
    # the shared item layers were frozen; the user tower and the id rows learned
    moved = moved_weights(served, tuned)
    assert "items.id.weight" in moved and any(name.startswith("users.") for name in moved)
    assert {name for name in moved if name.startswith("items.")} == {"items.id.weight"}


def test_with_time_features_every_item_is_re_embedded_and_the_item_layers_learn(
    timed,
) -> None:
    served, tuned = timed
    # every trained item's share of all recent events moved with the new events
    assert tuned.scorer._meta["report"]["reembedded_items"] == len(tuned.scorer._item_vectors)
    assert "items.mlp.0.weight" in moved_weights(served, tuned)


def test_the_index_keeps_its_centroids_and_the_lists_of_unchanged_rows(versions) -> None:
    served, tuned = versions
    old_index, new_index = served.scorer.serving_index(), tuned.scorer.serving_index()
    assert new_index is not None and new_index is not old_index
    assert len(new_index) == len(tuned.scorer._item_vectors)
    centroids = old_index._ivf.quantizer.reconstruct_n(0, old_index.nlist)
    assert np.array_equal(new_index._ivf.quantizer.reconstruct_n(0, new_index.nlist), centroids)
    lists, matrix = new_index.lists(), tuned.scorer.index_vectors()
    kept = unchanged_columns(served, tuned)
    assert np.array_equal(lists[kept[:, 0]], old_index.lists()[kept[:, 1]])
    fresh = np.setdiff1d(np.arange(len(lists)), kept[:, 0])
    assert len(fresh)
    nearest = np.argmax(matrix[fresh] @ centroids.T, axis=1)
    assert (lists[fresh] == nearest).mean() > 0.99  # ties in float aside
    # scanning every list, the index finds exactly the inner-product top 10
    queries = np.random.default_rng(0).standard_normal((5, matrix.shape[1])).astype(np.float32)
    rows, scores = new_index.search(queries, 10, probe_k=10_000)
    expected = np.sort(queries @ matrix.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert (rows >= 0).all()


def test_a_saved_version_loads_its_index_without_training_one(
    versions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tuned = versions
    tuned.save(tmp_path / "v2")

    def no_training(*args, **kwargs):
        raise AssertionError("the loaded model built a new serving index")

    monkeypatch.setattr(index_module.ColumnIndex, "__init__", no_training)
    drawn: list[tuple[int, ...]] = []  # what the load drew random initial values for
    real_normal = torch.nn.init.normal_

    def normal_(tensor, *args, **kwargs):  # type: ignore[no-untyped-def]
        drawn.append(tuple(tensor.shape))
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", normal_)
    loaded = load_model(tmp_path / "v2")
    assert isinstance(loaded, CollaborativeRecommender)
    # the id tables (thousands of rows here) were not drawn, only to be overwritten
    assert drawn and max(shape[0] for shape in drawn) < 1_000
    saved, restored = tuned.scorer._model.state_dict(), loaded.scorer._model.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[name], restored[name]) for name in saved)
    index = loaded.scorer.serving_index()
    assert index is not None and len(index) == len(loaded.scorer._item_vectors)
    users = tuned.user_ids.to_list()[:20]
    columns = ["user_id", "item_id", "rank"]
    served = tuned.recommend(users, 10).select(columns)
    assert loaded.recommend(users, 10).select(columns).equals(served)
