"""A request's deadline counts its wait in the worker's queue: one that waited its whole
ranking budget is answered in retrieval order (cheaper, so an overloaded worker's queue
drains instead of growing), and its response says so."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import market_world, small_two_stage
from marketrec.online.live import LiveRecommender, NullObserver
from marketrec.pipeline.recommender import Recommender

USERS = ["u00", "u07", "u25"]
K = 5


class Counting(NullObserver):
    def __init__(self) -> None:
        self.lists: list[tuple[str, dict[str, str] | None]] = []

    def served(self, served_by: str, degraded: dict[str, str] | None) -> None:
        self.lists.append((served_by, degraded))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("deadline") / "model"
    small_two_stage(market_world()).save(folder)
    return folder


def open_live(folder: Path, log_file: Path, budget_ms: float) -> LiveRecommender:
    live = LiveRecommender.open(folder, f"sqlite:///{log_file}", recover=False)
    live.observer = Counting()
    live.recover()
    assert isinstance(live.model, Recommender) and live.model.ranking is not None
    live.model.ranking.active = True  # the tiny world's gate cannot judge it
    live.model.config = live.model.config.model_copy(update={"rank_budget_ms": budget_ms})
    return live


def ask_all(live: LiveRecommender, users: list[str], hold_s: float, late: int) -> list[Any]:
    """`late` of the users queue while the worker is busy for `hold_s` (its lock held); the
    others join the queue just before it is let go."""
    answers: list[Any] = [None] * len(users)

    def ask(j: int) -> None:
        answers[j] = live.recommend(users[j], K)

    threads = [threading.Thread(target=ask, args=(j,)) for j in range(len(users))]
    with live._lock:
        for thread in threads[:late]:
            thread.start()
        time.sleep(hold_s)
        for thread in threads[late:]:
            thread.start()
        deadline = time.monotonic() + 30
        while len(live._queue) < len(users) and time.monotonic() < deadline:
            time.sleep(0.001)
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_a_pass_behind_its_budget_keeps_retrieval_order(folder, tmp_path) -> None:
    live = open_live(folder, tmp_path / "events.sqlite", budget_ms=300.0)
    try:
        on_time = [live.recommend(user, K) for user in USERS]
        assert all(a["served_by"] == "ranker" and a["degraded"] is None for a in on_time)
        # two wait past the budget, one joins the queue at the end: the worker is behind,
        # and the pass skips the ranker for all three (ranking the third would cost nearly
        # a whole ranked pass: the queue would not drain)
        answers = ask_all(live, USERS, hold_s=0.6, late=2)
        model = live.model
        assert isinstance(model, Recommender)
        plain = model.recommend_many(USERS, K, skip_ranking="x")
        for answer, expected in zip(answers, plain, strict=True):
            assert answer["served_by"] == "retrieval"
            reason = answer["degraded"]["ranker_skipped"]
            assert reason.startswith("deadline: the pass's oldest request waited ")
            assert reason.endswith(" ms (budget 300 ms)")
            assert [i["item_id"] for i in answer["items"]] == [e.item_id for e in expected]
        observed = live.observer.lists  # type: ignore[attr-defined]
        assert [served for served, _ in observed[-3:]] == ["retrieval"] * 3
        # caught up: ranked again, the same lists as before
        again = [live.recommend(user, K) for user in USERS]
        assert [a["items"] for a in again] == [a["items"] for a in on_time]
        assert all(a["served_by"] == "ranker" for a in again)
    finally:
        live.close()


def test_no_budget_no_deadline(folder, tmp_path) -> None:
    """A model whose config sets no budget (offline use of the live class) never skips."""
    live = open_live(folder, tmp_path / "events.sqlite", budget_ms=300.0)
    try:
        live.model.config = live.model.config.model_copy(update={"rank_budget_ms": None})
        answers = ask_all(live, USERS, hold_s=0.4, late=len(USERS))
        assert all(a["served_by"] == "ranker" and a["degraded"] is None for a in answers)
    finally:
        live.close()


def test_the_metrics_count_lists_by_what_served_them() -> None:
    from marketrec.serving.metrics import ServiceMetrics

    metrics = ServiceMetrics("v1")
    metrics.served("ranker", None)
    metrics.served("retrieval", {"ranker_skipped": "deadline: waited 63 ms (budget 50 ms)"})
    metrics.served("retrieval", {"ranker_skipped": "deadline: waited 81 ms (budget 50 ms)"})
    metrics.served("fallback", {"retrieval_failed": "ValueError: index offline"})
    text = metrics.render().decode()
    for labels, count in (
        ('degraded="none",served_by="ranker"', 1),
        ('degraded="ranker_skipped:deadline",served_by="retrieval"', 2),
        ('degraded="retrieval_failed:ValueError",served_by="fallback"', 1),
    ):
        assert f"marketrec_lists_served_total{{{labels}}} {count:.1f}" in text, labels


def test_a_front_proxys_stamp_starts_the_deadline(folder, tmp_path) -> None:
    """A worker's event loop reads a request only once its current pass is done; the
    `X-Request-Start` stamp a front proxy adds (nginx's `t=${msec}`) starts the deadline at
    the proxy instead, so that wait counts too."""
    from fastapi.testclient import TestClient

    from marketrec.serving.app import create_app

    live = open_live(folder, tmp_path / "events.sqlite", budget_ms=300.0)
    recs = "/v1/recommendations"
    with TestClient(create_app(live)) as client:
        fresh = client.get(recs, params={"user_id": "u00", "k": K}).json()
        assert fresh["served_by"] == "ranker" and fresh["degraded"] is None
        for stamp in (f"t={time.time() - 1.5:.3f}", f"{(time.time() - 1.5) * 1000:.0f}"):
            late = client.get(
                recs, params={"user_id": "u00", "k": K}, headers={"X-Request-Start": stamp}
            ).json()
            assert late["served_by"] == "retrieval"
            waited = late["degraded"]["ranker_skipped"]
            assert waited.startswith("deadline: the pass's oldest request waited 1")
            assert waited.endswith(" ms (budget 300 ms)")
        # a stamp from a skewed clock (ahead, or hours back) or unreadable is ignored
        for stamp in (f"t={time.time() + 5:.3f}", f"t={time.time() - 7200:.3f}", "t=soon", ""):
            answer = client.get(
                recs, params={"user_id": "u00", "k": K}, headers={"X-Request-Start": stamp}
            ).json()
            assert answer["served_by"] == "ranker", stamp


def test_received_at_reads_seconds_milliseconds_and_microseconds() -> None:
    from marketrec.serving.app import received_at

    wall, now = 1_765_000_000.0, 500.0
    for stamp in ("t=1764999999.75", "1764999999750", "t=1764999999750000"):
        assert received_at(stamp, now, wall) == pytest.approx(499.75), stamp
    for stamp in (None, "", "t=", "garbage", "t=nan", "t=inf", "t=1765000001"):
        assert received_at(stamp, now, wall) == now, stamp
