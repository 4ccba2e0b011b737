"""The HTTP API of CONTRACT §6 through FastAPI's TestClient, over a real SQLite event log:
bodies, bad input, freshness, delisting, several workers on one log, restart, probes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from market_model import ITEMS, train_model, train_tower_model

from marketrec.online.live import LiveRecommender, model_version
from marketrec.online.log import SQLiteEventLog
from marketrec.pipeline.recommender import load_recommender
from marketrec.serving.app import create_app

RECS = "/v1/recommendations"
EVENTS = "/v1/events"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("serving") / "model")


def open_live(model_folder: Path, log_file: Path, *, recover: bool = True) -> LiveRecommender:
    """One worker's state: the model loaded from its folder, the log opened on `log_file`."""
    live = LiveRecommender(
        load_recommender(model_folder),
        SQLiteEventLog(log_file),
        version=model_version(model_folder),
    )
    if recover:
        live.recover()
    return live


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "events.sqlite"


@pytest.fixture
def live(model_folder: Path, log_file: Path) -> Iterator[LiveRecommender]:
    state = open_live(model_folder, log_file)
    yield state
    state.close()


@pytest.fixture
def client(live: LiveRecommender) -> Iterator[TestClient]:
    with TestClient(create_app(live), raise_server_exceptions=False) as c:
        yield c


def recommended(client: TestClient, user: str, k: int = 10, **params: str) -> list[str]:
    response = client.get(RECS, params={"user_id": user, "k": k, **params})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def error_of(response) -> str:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --------------------------------------------------------------------------- recommendations
def test_recommendations_follow_the_contract(client: TestClient, live: LiveRecommender) -> None:
    response = client.get(RECS, params={"user_id": "u00", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"user_id", "items", "model_version", "request_id", "served_by", "degraded"}
    assert body["served_by"] == "retrieval" and body["degraded"] is None  # item-kNN, no ranker
    assert body["user_id"] == "u00"
    assert body["model_version"] == live.version and live.version.startswith("model@")
    assert len(body["request_id"]) == 32 and int(body["request_id"], 16) >= 0
    assert response.headers["x-request-id"] == body["request_id"]
    assert len(body["items"]) == 5
    for item in body["items"]:
        assert set(item) == {"item_id", "score", "source"}
        assert isinstance(item["score"], float)
        assert item["source"] in {"retrieval", "fallback", "exploration"}
    ids = [i["item_id"] for i in body["items"]]
    assert len(set(ids)) == 5 and "del" not in ids


def test_unknown_user_is_a_cold_start(client: TestClient) -> None:
    response = client.get(RECS, params={"user_id": "never-seen", "k": 3})
    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 3
    assert {i["source"] for i in items} == {"fallback"}
    assert response.json()["served_by"] == "fallback"


def test_region_is_request_context(client: TestClient) -> None:
    everything = len(ITEMS) + 2
    south = recommended(client, "never-seen", k=everything, region="south")
    north = recommended(client, "never-seen", k=everything, region="north")
    assert "north-only" not in south
    assert "north-only" in north


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"user_id": "u00", "k": 0}, "'k'"),
        ({"user_id": "u00", "k": -3}, "'k'"),
        ({"user_id": "u00", "k": "abc"}, "'k'"),
        ({"user_id": "u00", "k": 1001}, "'k'"),
        ({"user_id": "u00", "k": 2.5}, "'k'"),
        ({"k": 10}, "'user_id'"),
        ({"user_id": "", "k": 10}, "'user_id'"),
    ],
)
def test_bad_parameters_are_400_naming_them(client: TestClient, params: dict, named: str) -> None:
    response = client.get(RECS, params=params)
    assert response.status_code == 400
    assert named in error_of(response)


def test_unknown_paths_and_methods_are_json_errors(client: TestClient) -> None:
    assert client.get("/v1/nothing").status_code == 404
    assert error_of(client.get("/v1/nothing")) == "Not Found"
    response = client.post(RECS)
    assert response.status_code == 405
    error_of(response)


# --------------------------------------------------------------------------- events
def test_post_one_event_and_an_array(client: TestClient, live: LiveRecommender) -> None:
    one = {"user_id": "u01", "item_id": "c1-1", "event": "click"}
    response = client.post(EVENTS, json=one)
    assert response.status_code == 202
    assert response.json() == {"accepted": 1}
    batch = [
        {"user_id": "u02", "item_id": "c2-2", "event": "view", "ts": "2026-01-03T10:00:00"},
        {"user_id": "u02", "item_id": "c2-3", "event": "purchase", "value": 9.5, "ts": 1767e6},
        {"user_id": "u03", "event": "search", "query": "red puzzle"},
    ]
    response = client.post(EVENTS, json=batch)
    assert response.status_code == 202
    assert response.json() == {"accepted": 3}
    assert live.log.last_offset() == 4  # durably logged before the 202
    assert [r.kind for r in live.log.read(0)] == ["event"] * 4


def test_a_batch_with_one_bad_event_is_rejected_whole(
    client: TestClient, live: LiveRecommender
) -> None:
    client.post(EVENTS, json={"user_id": "u01", "item_id": "c1-1", "event": "click"})
    before = live.log.last_offset()
    batch = [
        {"user_id": "u02", "item_id": "c2-2", "event": "view"},
        {"user_id": "u02", "item_id": "c2-3", "event": "view"},
        {"item_id": "c2-4", "event": "view"},  # no user
    ]
    response = client.post(EVENTS, json=batch)
    assert response.status_code == 400
    message = error_of(response)
    assert "event 2" in message and "user_id" in message
    assert live.log.last_offset() == before
    assert client.get("/v1/users/u02/history").json()["events"] == []


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b'{"user_id": "u01", "item_id": ', {"content-type": "application/json"}, "JSON"),
        (b"{not json", {}, "JSON"),
        (b'{"user_id": "u01", "item_id": "c0-0", "event": "view", "colour": 1}', {}, "colour"),
        (b'{"user_id": "u01", "item_id": "c0-0", "event": "view", "ts": "soon"}', {}, "ts"),
        (b'{"user_id": "u01", "item_id": "c0-0", "event": "view", "value": "9"}', {}, "value"),
        (b'{"user_id": 3.5, "item_id": "c0-0", "event": "view"}', {}, "user_id"),
        (b"42", {"content-type": "application/json"}, "event"),
        (b"[]", {"content-type": "application/json"}, "empty"),
        (b"", {"content-type": "application/json"}, "body"),
    ],
)
def test_malformed_event_bodies_are_400(
    client: TestClient, live: LiveRecommender, body: bytes, headers: dict, expected: str
) -> None:
    response = client.post(EVENTS, content=body, headers=headers)
    assert response.status_code == 400
    assert expected in error_of(response)
    assert live.log.last_offset() == 0


def test_json_without_content_type_is_accepted(client: TestClient) -> None:
    response = client.post(
        EVENTS, content=b'{"user_id": "u01", "item_id": "c0-0", "event": "view"}'
    )
    assert response.status_code == 202


# --------------------------------------------------------------------------- freshness
def test_the_next_request_reflects_an_accepted_event(client: TestClient) -> None:
    user = "u05"
    first = recommended(client, user)
    target = first[0]
    response = client.post(EVENTS, json={"user_id": user, "item_id": target, "event": "click"})
    assert response.status_code == 202
    assert target not in recommended(client, user)  # seen items are left out, at once
    history = client.get(f"/v1/users/{user}/history").json()
    assert history["user_id"] == user
    assert [(e["item_id"], e["event"]) for e in history["events"]] == [(target, "click")]


def test_history_is_newest_first_and_limited(client: TestClient) -> None:
    for j in range(5):
        body = {"user_id": "u07", "item_id": f"c1-{j}", "event": "view", "ts": 1767e6 + j}
        assert client.post(EVENTS, json=body).status_code == 202
    events = client.get("/v1/users/u07/history", params={"limit": 3}).json()["events"]
    assert [e["item_id"] for e in events] == ["c1-4", "c1-3", "c1-2"]
    assert [e["offset"] for e in events] == sorted((e["offset"] for e in events), reverse=True)
    assert client.get("/v1/users/nobody/history").json() == {"user_id": "nobody", "events": []}
    response = client.get("/v1/users/u07/history", params={"limit": 0})
    assert response.status_code == 400 and "'limit'" in error_of(response)


def test_a_new_user_with_one_event_is_served_from_it(client: TestClient) -> None:
    body = {"user_id": "newcomer", "item_id": "c2-0", "event": "purchase"}
    assert client.post(EVENTS, json=body).status_code == 202
    items = recommended(client, "newcomer", k=5)
    assert "c2-0" not in items and len(items) == 5


# --------------------------------------------------------------------------- catalogue, users
def all_lists(client: TestClient, users: list[str]) -> set[str]:
    everything = len(ITEMS) + 2
    return {i for u in users for i in recommended(client, u, k=everything)}


def test_a_deleted_item_is_never_recommended_again(client: TestClient) -> None:
    users = [f"u{u:02d}" for u in range(40)] + ["never-seen"]
    target = recommended(client, "never-seen")[0]
    assert target in all_lists(client, users)
    response = client.delete(f"/v1/items/{target}")
    assert response.status_code == 200
    assert response.json()["id"] == target
    assert target not in all_lists(client, users)


def test_deleting_an_unknown_item_is_404(client: TestClient, live: LiveRecommender) -> None:
    response = client.delete("/v1/items/no-such-item")
    assert response.status_code == 404
    assert "no-such-item" in error_of(response)
    assert live.log.last_offset() == 0


def test_put_item_then_delete_it(client: TestClient) -> None:
    body = {"title": "A new puzzle", "category": "Toys > Puzzles", "price": 12.0, "tags": ["x"]}
    response = client.put("/v1/items/brand-new", json=body)
    assert response.status_code == 200
    assert response.json()["id"] == "brand-new"
    assert client.delete("/v1/items/brand-new").status_code == 200
    assert "brand-new" not in all_lists(client, ["u00", "never-seen"])


@pytest.mark.parametrize(
    "body", [{"price": -1.0}, {"price": "cheap"}, {"colour": "red"}, [1, 2], {"available": "yes"}]
)
def test_bad_item_bodies_are_400(client: TestClient, live: LiveRecommender, body: object) -> None:
    response = client.put("/v1/items/x1", json=body)
    assert response.status_code == 400
    error_of(response)
    assert live.log.last_offset() == 0


def test_put_user_sets_the_home_region(client: TestClient) -> None:
    response = client.put("/v1/users/traveller", json={"region": "south", "age": 31})
    assert response.status_code == 200
    everything = len(ITEMS) + 2
    assert "north-only" not in recommended(client, "traveller", k=everything)
    client.put("/v1/users/traveller", json={"region": "north"})
    assert "north-only" in recommended(client, "traveller", k=everything)
    response = client.put("/v1/users/traveller", json={"region": "north", "tastes": ["a"]})
    assert response.status_code == 400 and "tastes" in error_of(response)


# --------------------------------------------------------------------------- GET /v1/items
ITEM_FIELDS = {"item_id", "known", "recommendable", "sellable_regions", "listed_live"}


def item_state(client: TestClient, item_id: str) -> dict:
    response = client.get(f"/v1/items/{item_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == ITEM_FIELDS and body["item_id"] == item_id and body["known"] is True
    return body


def test_get_item_describes_trained_items(client: TestClient) -> None:
    assert item_state(client, "c0-0") == {
        "item_id": "c0-0",
        "known": True,
        "recommendable": True,
        "sellable_regions": None,
        "listed_live": False,
    }
    north = item_state(client, "north-only")
    assert north["recommendable"] and north["sellable_regions"] == ["north"]
    delisted = item_state(client, "del")  # trained as unavailable
    assert not delisted["recommendable"] and delisted["sellable_regions"] == []


def test_get_unknown_item_is_404(client: TestClient) -> None:
    response = client.get("/v1/items/no-such-item")
    assert response.status_code == 404
    assert "no-such-item" in error_of(response)


def test_get_item_follows_puts_and_deletes(client: TestClient) -> None:
    assert client.put("/v1/items/del", json={"title": "back"}).status_code == 200
    relisted = item_state(client, "del")
    assert relisted["recommendable"] and relisted["sellable_regions"] is None
    assert not relisted["listed_live"]
    assert client.put("/v1/items/c1-1", json={"regions": ["south"]}).status_code == 200
    assert item_state(client, "c1-1")["sellable_regions"] == ["south"]
    assert client.delete("/v1/items/c1-1").status_code == 200
    gone = item_state(client, "c1-1")
    assert not gone["recommendable"] and gone["sellable_regions"] == []
    # item-kNN cannot place a product it was not trained with: known, listed, not recommendable
    assert (
        client.put("/v1/items/fresh", json={"title": "new", "regions": ["north"]}).status_code
        == 200
    )
    fresh = item_state(client, "fresh")
    assert fresh["listed_live"] and not fresh["recommendable"]
    assert fresh["sellable_regions"] == ["north"]


def test_a_product_put_into_a_two_tower_model_is_recommendable(tmp_path: Path) -> None:
    model = train_tower_model(tmp_path / "tower")
    live = open_live(model, tmp_path / "state" / "events.sqlite")
    with TestClient(create_app(live)) as client:
        assert item_state(client, "c2-2")["recommendable"]
        body = {"title": "A wooden puzzle", "category": "Toys > Puzzles", "price": 9.0}
        assert client.put("/v1/items/tower-new", json=body).status_code == 200
        state = item_state(client, "tower-new")
        assert state["recommendable"] and state["listed_live"]
        assert state["sellable_regions"] is None
        everything = len(ITEMS) + 3
        assert "tower-new" in recommended(client, "never-seen", k=everything)
        assert client.delete("/v1/items/tower-new").status_code == 200
        assert not item_state(client, "tower-new")["recommendable"]
    live.close()


# --------------------------------------------------------------------------- workers, restart
def test_two_workers_on_one_log_see_each_others_writes(
    model_folder: Path, log_file: Path, live: LiveRecommender, client: TestClient
) -> None:
    other = open_live(model_folder, log_file)
    with TestClient(create_app(other)) as second:
        user = "u11"
        target = recommended(second, user)[0]
        body = {"user_id": user, "item_id": target, "event": "add_to_cart"}
        assert client.post(EVENTS, json=body).status_code == 202  # accepted by worker 1
        assert target not in recommended(second, user)  # worker 2's next request has it
        history = second.get(f"/v1/users/{user}/history").json()["events"]
        assert [e["item_id"] for e in history] == [target]
        shown = recommended(client, "never-seen")[0]
        assert second.delete(f"/v1/items/{shown}").status_code == 200  # and the other way
        assert shown not in all_lists(client, ["never-seen", "u00", "u30"])
        assert client.put("/v1/items/from-two", json={"title": "t"}).status_code == 200
        assert item_state(second, "from-two")["listed_live"]  # known to the other worker
        assert second.delete("/v1/items/from-two").status_code == 200  # known through the log
    other.close()


def test_a_restarted_worker_recovers_the_log(model_folder: Path, log_file: Path) -> None:
    first = open_live(model_folder, log_file)
    with TestClient(create_app(first)) as client:
        target = recommended(client, "u21")[0]
        body = [
            {"user_id": "u21", "item_id": target, "event": "click"},
            {"user_id": "u22", "item_id": "c0-5", "event": "view"},
        ]
        assert client.post(EVENTS, json=body).status_code == 202
        assert client.delete("/v1/items/c1-2").status_code == 200
    first.close()  # the worker goes away; the log stays

    restarted = open_live(model_folder, log_file, recover=False)
    assert not restarted.ready
    report = restarted.recover()
    assert report.records == 3 and report.events == 2 and restarted.offset == 3
    with TestClient(create_app(restarted)) as client:
        history = client.get("/v1/users/u21/history").json()["events"]
        assert [e["item_id"] for e in history] == [target]
        assert target not in recommended(client, "u21")
        assert "c1-2" not in all_lists(client, ["u21", "u22", "never-seen"])
    restarted.close()


# --------------------------------------------------------------------------- probes, metrics
def test_readyz_waits_for_recovery(model_folder: Path, log_file: Path) -> None:
    writer = SQLiteEventLog(log_file)
    writer.append(
        [("event", "u01", {"user_id": "u01", "item_id": "c0-0", "event": "view", "ts": 1767e6})]
    )
    writer.close()
    live = open_live(model_folder, log_file, recover=False)
    app = create_app(live)
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: nothing recovers
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and "not ready" in error_of(response)
    response = client.get(RECS, params={"user_id": "u01"})
    assert response.status_code == 503
    error_of(response)
    with TestClient(app) as started:  # startup replays the log in the background
        deadline = time.monotonic() + 10
        while started.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = started.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "model_version": live.version,
            "offset": 1,
            "swapping": False,
            "swap_error": None,
            "rank_budget_ms": 50.0,  # the service's default (the model sets none)
            "versions": [
                {"model_version": live.version, "primary": True, "ready": True, "offset": 1}
            ],
        }
        assert "c0-0" not in recommended(started, "u01", k=len(ITEMS))
    live.close()


def test_metrics_name_every_series(client: TestClient, live: LiveRecommender) -> None:
    recommended(client, "u00")
    client.post(EVENTS, json=[{"user_id": "u00", "item_id": "c0-0", "event": "view"}] * 2)
    client.get(RECS, params={"user_id": "u00", "k": 0})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        'marketrec_request_seconds_bucket{endpoint="/v1/recommendations"',
        'marketrec_request_seconds_count{endpoint="/v1/events"}',
        'marketrec_stage_seconds_count{stage="total"}',
        'marketrec_stage_seconds_count{stage="model"}',
        'marketrec_stage_seconds_count{stage="sync"}',
        'marketrec_stage_seconds_count{stage="retrieve"} 1.0',
        'marketrec_stage_seconds_count{stage="rank"} 1.0',
        'marketrec_stage_seconds_count{stage="finish"} 1.0',
        "marketrec_model_swaps_total 0.0",
        "marketrec_events_ingested_total 2.0",
        f'marketrec_model_info{{version="{live.version}"}} 1.0',
        'marketrec_errors_total{status="400"} 1.0',
        "marketrec_event_to_effect_seconds_count 1.0",
        "marketrec_batch_requests_count 1.0",  # one pass, answering one request
        "marketrec_batch_requests_sum 1.0",
        'marketrec_lists_served_total{degraded="none",served_by="retrieval"} 1.0',
    ):
        assert name in text, name


def test_each_request_is_logged_with_its_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="marketrec.requests"):
        response = client.get(RECS, params={"user_id": "u00", "k": 2})
    lines = [r for r in caplog.records if r.name == "marketrec.requests"]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == response.json()["request_id"]
    assert fields["endpoint"] == RECS and fields["status"] == 200 and fields["ms"] > 0


def test_openapi_lists_the_paths(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/recommendations",
        "/v1/events",
        "/v1/users/{user_id}/history",
        "/v1/items/{item_id}",
        "/v1/users/{user_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    assert set(spec["paths"]["/v1/items/{item_id}"]) == {"get", "put", "delete"}
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert "anyOf" in body["schema"]


def test_a_bug_is_a_json_500_with_the_request_id(
    client: TestClient, live: LiveRecommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(live, "recommend_async", broken)
    response = client.get(RECS, params={"user_id": "u00"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] in error_of(response)
    assert "boom" not in response.text  # internals stay in the log
