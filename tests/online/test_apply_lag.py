"""Other users' events may wait a moment: a pass applies its own users' events, and every
record that is not an event, before it answers; other users' events wait until then or at
most `apply_lag_s`, so a steady stream of single events is not applied one batch at a time
before every list."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from marketrec.models.registry import create
from marketrec.online.live import LiveRecommender
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.recommender import Recommender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from market_model import market


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lag") / "model"
    Recommender(create("itemknn"), PipelineConfig()).fit(market()).save(folder)
    return folder


def open_live(folder: Path, log_file: Path, lag_s: float) -> LiveRecommender:
    return LiveRecommender.open(folder, f"sqlite:///{log_file}", apply_lag_s=lag_s)


def bought(live: LiveRecommender, user: str) -> list[dict]:
    """Purchases of the user's current top 6 (a purchase leaves the item out next time)."""
    items = [i["item_id"] for i in live.recommend(user, 6)["items"]]
    return [{"user_id": user, "item_id": item, "event": "purchase"} for item in items]


def test_a_pass_applies_its_own_users_events_and_lets_others_wait(
    folder: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.sqlite"
    served, writer = open_live(folder, log_file, 3600.0), open_live(folder, log_file, 0.0)
    start = served.offset
    events = bought(served, "u00")
    writer.ingest(events)
    served.recommend("u21", 6)  # another user's pass: u00's events may wait
    assert served.offset == start
    after = served.recommend("u00", 6)  # u00's own pass applies them (and all before)
    assert served.offset == writer.log.last_offset()
    assert not {e["item_id"] for e in events} & {i["item_id"] for i in after["items"]}
    served.close()
    writer.close()


def test_records_that_are_not_events_never_wait(folder: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "events.sqlite"
    served, writer = open_live(folder, log_file, 3600.0), open_live(folder, log_file, 0.0)
    writer.ingest(bought(served, "u00"))  # waits behind …
    writer.put_item("brand-new", {"title": "A puzzle", "category": "Toys > Puzzles"})
    served.recommend("u21", 6)  # … a listing, applied in order with everything before it
    assert served.offset == writer.log.last_offset()
    assert served.knows_item("brand-new")
    served.close()
    writer.close()


def test_waiting_events_are_applied_within_the_lag(folder: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "events.sqlite"
    served, writer = open_live(folder, log_file, 0.05), open_live(folder, log_file, 0.0)
    writer.ingest(bought(served, "u00"))
    served.recommend("u21", 6)
    assert served.offset < writer.log.last_offset()
    time.sleep(0.06)
    served.recommend("u21", 6)
    assert served.offset == writer.log.last_offset()
    served.close()
    writer.close()


def test_a_writers_own_events_wait_for_the_pass_that_needs_them(
    folder: Path, tmp_path: Path
) -> None:
    """The 202 needs the events durable in the log, not applied: the writer applies them
    with the next pass for their user (or after the lag), like any other worker."""
    live = open_live(folder, tmp_path / "events.sqlite", 3600.0)
    start = live.offset
    events = bought(live, "u05")
    assert live.ingest(events) == len(events)
    assert live.offset == start
    after = live.recommend("u05", 6)
    assert live.offset == live.log.last_offset()
    assert not {e["item_id"] for e in events} & {i["item_id"] for i in after["items"]}
    assert live.history("u05")  # reads apply everything first
    live.close()


def test_the_lag_must_not_be_negative(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="apply_lag_s"):
        open_live(folder, tmp_path / "events.sqlite", -1.0)
