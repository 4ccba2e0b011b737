"""Queued requests answered together: a worker that falls behind answers the requests that
queued while it computed one list in a single pass of the pipeline, each with the list it
would have got alone."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from marketrec.models.registry import create
from marketrec.online.live import LiveRecommender, NullObserver
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.recommender import Recommender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from market_model import market

#: (user, k, region): known and new users, one user twice with other regions, two ks
ASKED = [
    ("u00", 6, None),
    ("u21", 6, "south"),
    ("walk-in", 6, None),
    ("u00", 6, "north"),
    ("u05", 4, None),
    ("u21", 6, None),
]


class Recording(NullObserver):
    """An observer that keeps the pass sizes."""

    def __init__(self) -> None:
        self.passes: list[int] = []

    def batch(self, requests: int) -> None:
        self.passes.append(requests)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("batching") / "model"
    config = PipelineConfig(diversity_strength=0.3, exploration_share=0.3)
    Recommender(create("itemknn"), config).fit(market()).save(folder)
    return folder


def open_live(folder: Path, log_file: Path, max_batch: int) -> LiveRecommender:
    live = LiveRecommender.open(folder, f"sqlite:///{log_file}", recover=False, max_batch=max_batch)
    live.observer = Recording()
    live.impression_flush_s = 3600.0  # no impressions record between the two runs
    live.recover()
    return live


def queued_at_once(live: LiveRecommender, asked: list[tuple[str, int, str | None]]) -> list[Any]:
    """Each request from its own thread, all queued while the worker is busy (its lock
    held), then let go: the requests the next passes answer together."""
    answers: list[Any] = [None] * len(asked)

    def ask(j: int) -> None:
        user, k, region = asked[j]
        try:
            answers[j] = live.recommend(user, k, region)
        except Exception as exc:  # the test reads it
            answers[j] = exc

    threads = [threading.Thread(target=ask, args=(j,)) for j in range(len(asked))]
    with live._lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(live._queue) < len(asked) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(live._queue) == len(asked)
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a queued request was never answered"
    return answers


def test_queued_requests_get_their_own_lists_in_fewer_passes(folder: Path, tmp_path: Path) -> None:
    live = open_live(folder, tmp_path / "events.sqlite", max_batch=4)
    alone = [live.recommend(user, k, region)["items"] for user, k, region in ASKED]
    observer = live.observer
    assert isinstance(observer, Recording)
    assert observer.passes == [1] * len(ASKED)  # one at a time: a pass each
    observer.passes.clear()
    answers = queued_at_once(live, ASKED)
    # oldest first, at most max_batch per pass; both ks in the first pass
    assert observer.passes == [4, 2]
    for (user, _, _), answer, items in zip(ASKED, answers, alone, strict=True):
        assert answer["user_id"] == user
        assert answer["model_version"] == live.version
        assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in items]
        assert [i["source"] for i in answer["items"]] == [i["source"] for i in items]
        assert [i["score"] for i in answer["items"]] == pytest.approx(
            [i["score"] for i in items], rel=1e-5
        )
    assert len({a["request_id"] for a in answers}) == len(ASKED)
    live.close()


def test_requests_on_an_event_loop_share_passes_on_that_loop(folder: Path, tmp_path: Path) -> None:
    """`recommend_async` (the HTTP endpoint's way): the requests the loop takes in before
    the scheduled pass runs are answered by it, on the loop's own thread, with the lists
    they get alone."""
    live = open_live(folder, tmp_path / "events.sqlite", max_batch=4)
    alone = [live.recommend(user, k, region)["items"] for user, k, region in ASKED]
    observer = live.observer
    assert isinstance(observer, Recording)
    observer.passes.clear()

    async def together() -> list[dict[str, Any]]:
        return await asyncio.gather(*(live.recommend_async(u, k, r) for u, k, r in ASKED))

    answers = asyncio.run(together())
    assert observer.passes == [4, 2]
    for (user, _, _), answer, items in zip(ASKED, answers, alone, strict=True):
        assert answer["user_id"] == user and answer["model_version"] == live.version
        assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in items]
    # one at a time on a loop: a pass each, nothing waits for a batch to fill
    observer.passes.clear()

    async def one_by_one() -> None:
        for user, k, region in ASKED[:3]:
            await live.recommend_async(user, k, region)

    asyncio.run(one_by_one())
    assert observer.passes == [1, 1, 1]
    live.close()


def test_a_failed_pass_fails_its_requests_on_an_event_loop(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = open_live(folder, tmp_path / "events.sqlite", max_batch=8)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("ranker exploded")

    monkeypatch.setattr(live.model, "recommend_many", broken)

    async def together() -> list[Any]:
        calls = (live.recommend_async(u, k, r) for u, k, r in ASKED[:3])
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = asyncio.run(asyncio.wait_for(together(), timeout=30))
    assert all(isinstance(a, RuntimeError) and "exploded" in str(a) for a in answers)
    live.close()


def test_a_pass_reflects_every_event_accepted_before_its_requests(
    folder: Path, tmp_path: Path
) -> None:
    """Written by another worker while this one was busy: the pass syncs the log first."""
    log_file = tmp_path / "events.sqlite"
    live, other = open_live(folder, log_file, 8), open_live(folder, log_file, 8)
    before = [i["item_id"] for i in live.recommend("u00", 6)["items"]]
    other.ingest([{"user_id": "u00", "item_id": item, "event": "purchase"} for item in before])
    after = queued_at_once(live, [("u00", 6, None), ("u21", 6, None)])
    assert not set(before) & {i["item_id"] for i in after[0]["items"]}
    live.close()
    other.close()


def test_a_failed_pass_fails_each_of_its_requests(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = open_live(folder, tmp_path / "events.sqlite", max_batch=8)
    model = live.model
    assert isinstance(model, Recommender)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("ranker exploded")

    monkeypatch.setattr(model, "recommend_many", broken)
    answers = queued_at_once(live, ASKED[:3])
    assert all(isinstance(a, RuntimeError) and "exploded" in str(a) for a in answers)
    monkeypatch.undo()
    assert live.recommend("u00", 6)["items"]  # the worker still serves
    live.close()


def test_max_batch_must_be_positive(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        open_live(folder, tmp_path / "events.sqlite", max_batch=0)
