"""Full retraining from the event log: the log's events, products and profiles are folded into
the training data, and the new model knows how far into the log it was trained."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from marketrec.online.log import SQLiteEventLog
from marketrec.online.retrain import dataset_with_log, retrain, same_kind, trained_offset
from marketrec.pipeline.recommender import Recommender, load_recommender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from market_model import market, train_model


def filled_log(path: Path) -> SQLiteEventLog:
    log = SQLiteEventLog(path)
    event = {"user_id": "walk-in", "item_id": "c1-2", "event": "purchase", "ts": 1.8e9}
    log.append([("event", "walk-in", event), ("event", "u00", {**event, "user_id": "u00"})])
    log.append([("item", "fresh", {"title": "new puzzle", "category": "Toys > Puzzles"})])
    log.append([("item_delete", "c2-0", {}), ("user", "walk-in", {"region": "south"})])
    return log


def test_the_log_folds_into_the_training_data(tmp_path: Path) -> None:
    data = market()
    fold = dataset_with_log(data, filled_log(tmp_path / "log.sqlite"))
    assert fold.offset == 5 and fold.events == 2 and fold.users == 1
    assert fold.data.events.height == data.events.height + 2
    items = fold.data.items
    assert "fresh" in items.get_column("item_id").to_list()
    assert items.filter(pl.col("item_id") == "c2-0").get_column("available").to_list() == [False]
    assert fold.data.users.filter(pl.col("user_id") == "walk-in").get_column("region")[0] == "south"
    # only up to an offset
    assert dataset_with_log(data, filled_log(tmp_path / "other.sqlite"), upto=2).events == 2
    assert dataset_with_log(data, SQLiteEventLog(tmp_path / "empty.sqlite")).offset == 0


def test_retrain_fits_the_same_kind_on_data_plus_log(tmp_path: Path) -> None:
    folder = train_model(tmp_path / "model")
    fresh = same_kind(folder)
    assert isinstance(fresh, Recommender) and fresh.retrieval.name == "itemknn"
    out, _ = retrain(folder, market(), filled_log(tmp_path / "log.sqlite"), tmp_path / "v2")
    assert trained_offset(out) == 5 and trained_offset(folder) == 0
    model = load_recommender(out)
    assert "fresh" in model.retrieval.item_ids.to_list()
    assert "walk-in" in model.retrieval.user_ids.to_list()
    recs = model.recommend(["walk-in", "u01"], 20).get_column("item_id").to_list()
    assert "c2-0" not in recs and "c1-2" not in model.recommend(["walk-in"], 20)["item_id"]
