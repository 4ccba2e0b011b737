"""The ranker's companion model: fitted like any retrieval model, its weights moved onto the
retrieval model's item columns."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy import sparse

from conftest import events_frame
from marketrec.data.schema import make_dataset
from marketrec.models.registry import create
from marketrec.pipeline.ranking_stage import RankingParams, companion_kind, fit_companion


def test_auto_picks_ease_for_small_catalogues_and_none_for_large() -> None:
    assert companion_kind("auto", 1_682) == "ease"
    assert companion_kind("auto", 100_000) is None
    assert companion_kind("itemknn", 100_000) == "itemknn"
    assert companion_kind("none", 10) is None


@pytest.mark.parametrize("kind", ["ease", "itemknn"])
def test_weights_follow_the_item_ids_not_the_companion_columns(kind) -> None:
    rows = [
        (u, i, t, "view")
        for t, (u, i) in enumerate(
            [
                ("u1", "a"),
                ("u1", "b"),
                ("u2", "b"),
                ("u2", "c"),
                ("u3", "a"),
                ("u3", "c"),
                ("u4", "a"),
                ("u4", "b"),
                ("u4", "c"),
            ]
        )
    ]
    data = make_dataset(events_frame(rows))
    params = RankingParams(companion=kind, companion_params={})
    # the retrieval model's columns: another order, and an item the companion never saw
    item_ids = pl.Series(["c", "new", "a", "b"])
    companion = fit_companion(params, data, item_ids)
    assert companion is not None and companion.name == kind
    model = create(kind, {}).fit(data)
    own = model.item_columns(item_ids)
    reference = model.scorer._weights if kind == "ease" else model.scorer._similarity.toarray()
    got = companion.weights.toarray() if sparse.issparse(companion.weights) else companion.weights
    for r, own_r in enumerate(own):
        for c, own_c in enumerate(own):
            expected = 0.0 if own_r < 0 or own_c < 0 else reference[own_r, own_c]
            assert got[r, c] == pytest.approx(expected), (r, c)
    assert np.abs(got).sum() > 0


def test_wrong_companion_settings_fail_before_any_training() -> None:
    from marketrec.core.errors import ConfigError

    with pytest.raises(ConfigError, match="l3"):
        RankingParams(companion_params={"l3": 1.0})
    with pytest.raises(ConfigError, match="neighbours"):
        RankingParams(companion="itemknn", companion_params={"neighbours": 0})
