"""Exploration statistics online: the new listings a worker shows reach every worker's
impression counts through the event log, so Thompson sampling sees the misses."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from marketrec.models.registry import create
from marketrec.online.live import LiveRecommender
from marketrec.online.log import SQLiteEventLog
from marketrec.online.retrain import retrain
from marketrec.online.versions import model_version, trained_offset
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.recommender import Recommender, load_recommender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from market_model import market


def fit(folder: Path, exploration_share: float) -> Path:
    config = PipelineConfig(exploration_share=exploration_share)
    Recommender(create("itemknn"), config).fit(market()).save(folder)
    return folder


#: Products listed through the log: new to exploration (every trained item has events).
FRESH = ["fresh-1", "fresh-2", "fresh-3"]


def open_live(folder: Path, log_file: Path, flush_s: float = 3600.0) -> LiveRecommender:
    """A worker whose impressions are appended only by `flush_impressions` (or at close)."""
    live = LiveRecommender(
        load_recommender(folder), SQLiteEventLog(log_file), version=model_version(folder)
    )
    live.impression_flush_s = flush_s
    live.recover()
    if live.log.last_offset() == 0:
        for item in FRESH:
            live.put_item(item, {"title": "A new puzzle", "category": "Toys > Puzzles"})
    return live


def impressions(live: LiveRecommender, ids: list[str]) -> list[int]:
    model = live.model
    assert isinstance(model, Recommender) and model.stats is not None
    cols = model.retrieval.item_columns(pl.Series(ids, dtype=pl.String))
    return model.stats.impressions[cols].tolist()


def logged(live: LiveRecommender) -> Counter[str]:
    shown: Counter[str] = Counter()
    for record in live.log.read(0):
        if record.kind == "impressions":
            shown.update(record.payload["items"])
    return shown


def test_shown_new_listings_reach_every_worker_once(tmp_path: Path) -> None:
    folder = fit(tmp_path / "model", exploration_share=0.3)
    log_file = tmp_path / "events.sqlite"
    a, b = open_live(folder, log_file), open_live(folder, log_file)
    shown = [
        i["item_id"] for u in ("u00", "u01", "u21", "walk-in") for i in a.recommend(u, 6)["items"]
    ]
    assert not logged(a)  # gathered, not written per request
    a.flush_impressions()
    counted = logged(a)
    assert counted and set(counted) <= set(shown) & set(FRESH)
    ids = sorted(counted)
    a.sync()
    b.sync()
    # each worker applies the record once, the writer included (it counts no shortcut)
    assert impressions(a, ids) == impressions(b, ids) == [counted[i] for i in ids]
    # only the items exploration counts as new at the model's now
    model = a.model
    assert isinstance(model, Recommender)
    new = model._new_items(model._reference_ts)
    cols = model.retrieval.item_columns(pl.Series(shown, dtype=pl.String))
    assert sum(counted.values()) == int(new[cols].sum())
    # a worker that starts later replays them
    late = open_live(folder, log_file)
    assert impressions(late, ids) == [counted[i] for i in ids]
    for live in (a, b, late):
        live.close()


def test_impressions_are_appended_in_the_background_and_at_close(tmp_path: Path) -> None:
    folder = fit(tmp_path / "model", exploration_share=0.3)
    log_file = tmp_path / "events.sqlite"
    live = open_live(folder, log_file, flush_s=0.0)  # every request's are due at once
    for user in ("u00", "u01", "u02"):
        live.recommend(user, 6)
    deadline = time.monotonic() + 10
    while not logged(live) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert logged(live)
    quiet = open_live(folder, tmp_path / "other.sqlite")
    quiet.recommend("u00", 6)
    quiet.close()
    assert logged(open_live(folder, tmp_path / "other.sqlite"))


def test_no_impressions_without_exploration(tmp_path: Path) -> None:
    folder = fit(tmp_path / "model", exploration_share=0.0)
    live = open_live(folder, tmp_path / "events.sqlite")
    for user in ("u00", "u01"):
        live.recommend(user, 6)
    live.flush_impressions()
    assert not logged(live)
    # a request whose experiment settings explore counts them
    live.recommend("u02", 6, settings={"exploration_share": 0.5})
    live.flush_impressions()
    assert logged(live)
    live.close()


def test_impressions_without_clicks_lower_an_items_draws(tmp_path: Path) -> None:
    folder = fit(tmp_path / "model", exploration_share=0.3)
    model = load_recommender(folder)
    assert isinstance(model, Recommender) and model.stats is not None
    model.record_impressions({"c0-1": 500, "unknown-item": 3})  # unknown: ignored
    cols = model.retrieval.item_columns(pl.Series(["c0-1", "c0-2"], dtype=pl.String))
    assert model.stats.impressions[cols].tolist() == [500, 0]
    from marketrec.pipeline.exploration import ThompsonExplorer

    explorer = ThompsonExplorer((1.0, 20.0), model.stats, np.random.default_rng(0))
    eligible = np.zeros(len(model.stats.impressions), dtype=bool)
    eligible[cols] = True
    picked = [explorer.pick(eligible, 1).items[0] for _ in range(200)]
    # Beta(1, 520) against the prior Beta(1, 20): the shown item almost never wins
    assert picked.count(cols[0]) < 20


def test_a_retrained_version_keeps_the_logs_impressions_and_clicks(tmp_path: Path) -> None:
    folder = fit(tmp_path / "model", exploration_share=0.3)
    log_file = tmp_path / "events.sqlite"
    live = open_live(folder, log_file)
    for user in ("u00", "u01", "u21", "walk-in"):
        live.recommend(user, 6)
    live.flush_impressions()
    live.ingest({"user_id": "u03", "item_id": "fresh-1", "event": "click", "ts": 1.77e9})
    live.sync()
    counted = logged(live)
    ids = sorted({*counted, "fresh-1"})
    before = impressions(live, ids)
    model = live.model
    assert isinstance(model, Recommender) and model.stats is not None
    cols = model.retrieval.item_columns(pl.Series(ids, dtype=pl.String))
    clicks = model.stats.clicks[cols].tolist()
    assert sum(clicks) == 1
    retrained, fold = retrain(folder, market(), live.log, tmp_path / "v2")
    assert fold.shown == dict(counted) and fold.clicked == {"fresh-1": 1}
    # the new version, replaying nothing (trained up to the log's end), counts the same
    swapped = LiveRecommender(
        load_recommender(retrained),
        live.log,
        version=model_version(retrained),
        trained_up_to=trained_offset(retrained),
    )
    swapped.recover()
    assert impressions(swapped, ids) == before
    new_model = swapped.model
    assert isinstance(new_model, Recommender) and new_model.stats is not None
    new_cols = new_model.retrieval.item_columns(pl.Series(ids, dtype=pl.String))
    assert new_model.stats.clicks[new_cols].tolist() == clicks
    live.close()
