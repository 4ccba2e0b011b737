"""Real `marketrec serve` processes on both stores (SQLite, Redis): every event answered 202
survives `kill -9` of the server (its log and, after a restart, its history have it), and
two servers on one store see each other's writes on their next request.

Redis tests use database 15 under a unique key prefix (`--store-prefix`), delete their keys
afterwards, and skip when no Redis answers at 127.0.0.1:6379.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from market_model import ITEMS, train_tower_model
from server_process import ServerProcess

from conftest import REDIS_URL
from marketrec.online.log import EventLog, RedisEventLog, SQLiteEventLog

T_BASE = 1_767_225_600.0  # 2026-01-01: after the test market's training events
SELLABLE = {*ITEMS, "north-only"}  # the test market's products a user without a region gets


@dataclass
class Store:
    """One event-log location: how `marketrec serve` names it, and how to open it here."""

    args: list[str]
    open: Callable[[], EventLog]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tower_model(tmp_path_factory.mktemp("durability") / "model")


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        path = tmp_path / "shared" / "events.sqlite"
        yield Store(["--store", f"sqlite:///{path}"], lambda: SQLiteEventLog(path))
        return
    prefix = request.getfixturevalue("redis_prefix")  # skips without Redis; cleans up
    yield Store(
        ["--store", REDIS_URL, "--store-prefix", prefix],
        lambda: RedisEventLog(REDIS_URL, prefix),
    )


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers a test starts; whatever is left running is stopped afterwards."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[ServerProcess], model: Path, store: Store, tmp_path: Path, n: int = 1):
    """Start `n` servers at once on one store, wait until each is ready."""
    new = [
        ServerProcess(model, store.args, tmp_path / f"server-{len(servers) + i}.log")
        for i in range(n)
    ]
    servers.extend(new)
    for server in new:
        server.wait_ready()
    return new


def key(event: dict) -> tuple[str, str, str, float]:
    return (event["user_id"], event["item_id"], event["event"], float(event["ts"]))


# --------------------------------------------------------------------------- durability
def test_every_accepted_event_survives_kill_9(
    model_folder: Path, store: Store, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """Four clients post batches as fast as the server accepts them; the moment 400
    events have been answered 202, the server and its workers get SIGKILL (other batches
    still in flight). Every event answered 202 is in the log and, after a restart on the
    same store, in its user's history."""
    (server,) = start(servers, model_folder, store, tmp_path)
    accepted: list[dict] = []
    lock = threading.Lock()
    enough = threading.Event()
    done = threading.Event()

    def post(worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            for batch_no in range(40):
                batch = [
                    {
                        "user_id": f"k{worker}-{(batch_no * 20 + j) % 16}",
                        "item_id": f"c{j % 3}-{(batch_no + j) % 6}",
                        "event": ("view", "click", "add_to_cart", "purchase")[j % 4],
                        "ts": T_BASE + batch_no * 20 + j,
                    }
                    for j in range(20)
                ]
                if done.is_set():
                    return
                try:
                    response = client.post("/v1/events", json=batch)
                except httpx.HTTPError:
                    return  # the server is gone
                if response.status_code != 202:
                    return
                with lock:
                    accepted.extend(batch)
                    if len(accepted) >= 400:
                        enough.set()

    threads = [threading.Thread(target=post, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    assert enough.wait(timeout=30), f"only {len(accepted)} events accepted: {server.log()}"
    server.kill()  # right after the 202s, with other batches on the wire
    done.set()
    for thread in threads:
        thread.join(timeout=15)
    with lock:
        expected = {key(e) for e in accepted}
    assert len(expected) == len(accepted) >= 400

    event_log = store.open()
    logged = {key(r.payload) for r in event_log.read(0) if r.kind == "event"}
    event_log.close()
    assert expected <= logged, f"{len(expected - logged)} accepted events are not in the log"

    (restarted,) = start(servers, model_folder, store, tmp_path)
    users = sorted({e[0] for e in expected})
    seen: set[tuple[str, str, str, float]] = set()
    with httpx.Client(base_url=restarted.url, timeout=10.0) as client:
        for user in users:
            response = client.get(f"/v1/users/{user}/history", params={"limit": 1000})
            assert response.status_code == 200
            seen |= {key(e) for e in response.json()["events"]}
        missing = expected - seen
        assert not missing, f"{len(missing)} accepted events missing after restart"
        # the restarted server's lists leave out what the user did before the kill; how many
        # products are left depends on how many batches got in, so the length follows that
        touched = {e[1] for e in seen if e[0] == users[0]}
        recs = client.get("/v1/recommendations", params={"user_id": users[0], "k": 5})
        assert recs.status_code == 200
        listed_items = [item["item_id"] for item in recs.json()["items"]]
        assert not touched & set(listed_items)
        assert len(listed_items) == min(5, len(SELLABLE - touched))


# --------------------------------------------------------------------------- two servers
def listed(client: httpx.Client, user: str) -> list[str]:
    response = client.get("/v1/recommendations", params={"user_id": user, "k": 10})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_two_servers_on_one_store_see_each_others_writes(
    model_folder: Path, store: Store, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    first, second = start(servers, model_folder, store, tmp_path, n=2)
    with (
        httpx.Client(base_url=first.url, timeout=10.0) as a,
        httpx.Client(base_url=second.url, timeout=10.0) as b,
    ):
        user = "u11"
        target = listed(b, user)[0]
        event = {"user_id": user, "item_id": target, "event": "add_to_cart", "ts": T_BASE}
        assert a.post("/v1/events", json=event).status_code == 202
        assert target not in listed(b, user)  # the second server's very next request
        history = b.get(f"/v1/users/{user}/history").json()["events"]
        assert [(e["item_id"], e["event"]) for e in history] == [(target, "add_to_cart")]

        assert b.get("/v1/items/shared-new").status_code == 404
        body = {"title": "A shared wooden puzzle", "category": "Toys > Puzzles", "price": 7.5}
        sent = time.monotonic()
        assert a.put("/v1/items/shared-new", json=body).status_code == 200
        while True:
            response = b.get("/v1/items/shared-new")
            if response.status_code == 200 and response.json()["recommendable"]:
                break
            assert time.monotonic() - sent < 1.0, f"not recommendable on B after 1 s: {response}"
            time.sleep(0.005)
        assert time.monotonic() - sent < 1.0
        assert response.json()["listed_live"]

        assert b.delete("/v1/items/shared-new").status_code == 200  # and the other way
        assert not a.get("/v1/items/shared-new").json()["recommendable"]
