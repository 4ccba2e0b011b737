"""What arrives over HTTP is validated field by field: a bad batch is refused whole with a
message naming the event, the field and the problem; nothing is dropped silently."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from marketrec.core.errors import MarketrecError, RecordError
from marketrec.data.schema import STRING_LIST, TIMESTAMP
from marketrec.online.records import (
    ItemUpdate,
    UserUpdate,
    events_from_payloads,
    parse_event_payloads,
    parse_events,
    parse_item_update,
    parse_user_update,
)

NOW_DT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW = NOW_DT.timestamp()

EVENTS_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "ts": TIMESTAMP,
    "event": pl.String,
    "value": pl.Float64,
    "session_id": pl.String,
    "region": pl.String,
    "device": pl.String,
    "query": pl.String,
}


def view(**fields: object) -> dict[str, object]:
    return {"user_id": "u1", "item_id": "i1", "event": "view", **fields}


def ts_of(payload: object) -> datetime:
    return parse_events(payload, NOW).get_column("ts").item()


def refused(payload: object) -> RecordError:
    with pytest.raises(RecordError) as caught:
        parse_events(payload, NOW)
    return caught.value


# --- events ------------------------------------------------------------------------------------


def test_one_object_gives_one_canonical_row() -> None:
    frame = parse_events(view(value=2, session_id="s1", region="north", device="mobile"), NOW)
    assert dict(frame.schema) == EVENTS_SCHEMA
    assert frame.row(0, named=True) == {
        "user_id": "u1",
        "item_id": "i1",
        "ts": NOW_DT,
        "event": "view",
        "value": 2.0,
        "session_id": "s1",
        "region": "north",
        "device": "mobile",
        "query": None,
    }


def test_a_list_keeps_its_order_and_other_event_names() -> None:
    frame = parse_events([view(), view(event="purchase", value=9.5), view(event="wishlist")], NOW)
    assert frame.get_column("event").to_list() == ["view", "purchase", "wishlist"]
    assert dict(frame.schema) == EVENTS_SCHEMA


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-01-01T12:00:00+02:00", datetime(2026, 1, 1, 10, tzinfo=UTC)),
        ("2026-01-01T12:00:00Z", datetime(2026, 1, 1, 12, tzinfo=UTC)),
        ("2026-01-01T12:00:00", datetime(2026, 1, 1, 12, tzinfo=UTC)),  # naive = UTC
        ("2026-01-01 12:00:00.123456", datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
        (1767225600, datetime(2026, 1, 1, tzinfo=UTC)),  # epoch int
        (1767225600.25, datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)),  # epoch float
        (None, NOW_DT),  # null = time of arrival
    ],
)
def test_time_formats(ts: object, expected: datetime) -> None:
    assert ts_of(view(ts=ts)) == expected


def test_missing_ts_is_now() -> None:
    assert ts_of(view()) == NOW_DT
    assert parse_event_payloads(view(), NOW)[0]["ts"] == NOW


@pytest.mark.parametrize(
    ("ts", "problem"),
    [
        ("yesterday", "not an ISO 8601 time or epoch seconds"),
        ("2026-13-01", "not an ISO 8601 time or epoch seconds"),
        (True, "not an ISO 8601 time or epoch seconds"),
        ([2026], "not an ISO 8601 time or epoch seconds"),
        (1767225600000, "epoch seconds out of range (milliseconds? send seconds)"),
    ],
)
def test_bad_times_are_refused(ts: object, problem: str) -> None:
    error = refused(view(ts=ts))
    assert str(error) == f"event 0: field 'ts': {problem}"


def test_a_batch_with_one_bad_event_is_refused_whole_naming_index_and_field() -> None:
    batch = [view(), view(), view(), view(ts="not a time"), view()]
    error = refused(batch)
    assert str(error) == "event 3: field 'ts': not an ISO 8601 time or epoch seconds"
    assert (error.index, error.field) == (3, "ts")
    assert isinstance(error, MarketrecError)  # the HTTP layer answers it with a 4xx


def test_search_needs_a_query_but_no_item() -> None:
    frame = parse_events({"user_id": "u1", "event": "search", "query": "red shoes"}, NOW)
    assert frame.row(0, named=True)["item_id"] is None
    assert frame.row(0, named=True)["query"] == "red shoes"
    error = refused({"user_id": "u1", "event": "search", "query": "  "})
    assert (error.field, error.index) == ("query", 0)


def test_other_events_need_an_item() -> None:
    error = refused([view(), {"user_id": "u1", "event": "click"}])
    assert str(error) == "event 1: field 'item_id': required unless event is 'search'"


def test_unknown_fields_are_refused_by_name() -> None:
    error = refused([view(), view(colour="red", sessionid="s")])
    assert error.index == 1 and error.field == "colour"
    assert "'colour'" in str(error) and "'sessionid'" in str(error)
    assert "session_id" in str(error)  # the known fields are listed to spot the typo
    assert str(error).startswith("event 1: unknown fields")


@pytest.mark.parametrize(
    ("event", "field", "problem"),
    [
        ({"item_id": "i1", "event": "view"}, "user_id", "required"),
        (view(user_id=""), "user_id", "must not be empty"),
        (view(user_id="   "), "user_id", "must not be empty"),
        (view(user_id=None), "user_id", "must be a string"),
        (view(event=""), "event", "must not be empty"),
        (view(value="3"), "value", "must be a number"),
        (view(value=True), "value", "must be a number"),
        (view(value=float("nan")), "value", "must be a finite number"),
        (view(region=3), "region", "must be a string"),
    ],
)
def test_field_problems_are_named(event: dict[str, object], field: str, problem: str) -> None:
    error = refused(event)
    assert str(error).startswith(f"event 0: field '{field}': {problem}")


def test_several_problems_of_one_event_are_all_named() -> None:
    error = refused(view(user_id="", value="x"))
    assert "field 'user_id'" in str(error) and "field 'value'" in str(error)


def test_integer_ids_become_strings() -> None:
    frame = parse_events({"user_id": 7, "item_id": 42, "event": "view", "session_id": 3}, NOW)
    assert frame.select("user_id", "item_id", "session_id").row(0) == ("7", "42", "3")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "events: empty list: send at least one event"),
        ("view", "events: expected an event object or a list of them, got a string"),
        (None, "events: expected an event object or a list of them, got null"),
        ([view(), 5], "event 1: expected a JSON object, got a number"),
    ],
)
def test_payloads_that_are_not_events(payload: object, message: str) -> None:
    assert str(refused(payload)) == message


def test_log_payloads_are_json_and_replay_to_the_same_frame() -> None:
    batch = [
        view(ts="2026-01-01T10:00:00.123456Z", value=1.5),
        {"user_id": "u2", "event": "search", "query": "lamp"},
    ]
    payloads = parse_event_payloads(batch, NOW)
    assert payloads[0]["ts"] == datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC).timestamp()
    assert "item_id" not in payloads[1]  # nulls are left out of the log
    replayed = events_from_payloads(json.loads(json.dumps(payloads)))
    assert replayed.equals(parse_events(batch, NOW))


def test_no_payloads_give_an_empty_canonical_frame() -> None:
    frame = events_from_payloads([])
    assert frame.height == 0 and dict(frame.schema) == EVENTS_SCHEMA


# --- items -------------------------------------------------------------------------------------

ITEMS_SCHEMA = {
    "item_id": pl.String,
    "title": pl.String,
    "description": pl.String,
    "brand": pl.String,
    "category": pl.String,
    "tags": STRING_LIST,
    "price": pl.Float64,
    "created_at": TIMESTAMP,
    "regions": STRING_LIST,
    "available": pl.Boolean,
}


def test_item_update_gives_one_canonical_row_listed_now_by_default() -> None:
    update = parse_item_update({"title": "Lamp", "tags": ["home"], "price": 12}, NOW)
    row = update.to_row("i9")
    assert dict(row.schema) == ITEMS_SCHEMA
    assert row.row(0, named=True) == {
        "item_id": "i9",
        "title": "Lamp",
        "description": None,
        "brand": None,
        "category": None,
        "tags": ["home"],
        "price": 12.0,
        "created_at": NOW_DT,
        "regions": None,
        "available": None,
    }


def test_item_created_at_iso_or_epoch_and_payload_round_trip() -> None:
    update = parse_item_update(
        {"created_at": "2026-01-01T00:00:00+01:00", "regions": ["north"], "available": False}, NOW
    )
    row = update.to_row("i1").row(0, named=True)
    assert row["created_at"] == datetime(2025, 12, 31, 23, tzinfo=UTC)
    payload = json.loads(json.dumps(update.to_payload()))
    assert ItemUpdate.model_validate(payload).to_row("i1").equals(update.to_row("i1"))
    epoch = parse_item_update({"created_at": 1767225600}, NOW).to_row("i1")
    assert epoch.get_column("created_at").item() == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({"price": -1}, "price", "must be ≥ 0"),
        ({"price": "3"}, "price", "must be a number"),
        ({"tags": "a"}, "tags", "must be a list"),
        ({"tags": ["a", 3]}, "tags[1]", "must be a string"),
        ({"available": "yes"}, "available", "must be true or false"),
        ({"created_at": "soon"}, "created_at", "not an ISO 8601 time or epoch seconds"),
    ],
)
def test_item_field_problems_are_named(body: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_item_update(body, NOW)
    assert str(caught.value) == f"item: field '{field}': {problem}"


def test_item_unknown_fields_and_non_objects_are_refused() -> None:
    with pytest.raises(RecordError, match="unknown field 'colour'"):
        parse_item_update({"title": "x", "colour": "red"}, NOW)
    with pytest.raises(RecordError, match="expected a JSON object, got a list"):
        parse_item_update([{"title": "x"}], NOW)
    with pytest.raises(RecordError, match="must not be empty"):
        ItemUpdate().to_row("")


# --- users -------------------------------------------------------------------------------------


def test_user_update_keeps_attributes_as_typed_columns() -> None:
    body = {"region": "north", "signup_at": "2025-06-01", "age": 31, "vip": True, "tier": "gold"}
    update = parse_user_update(body, NOW)
    row = update.to_row("u1")
    assert dict(row.schema) == {
        "user_id": pl.String,
        "region": pl.String,
        "signup_at": TIMESTAMP,
        "age": pl.Int64,
        "vip": pl.Boolean,
        "tier": pl.String,
    }
    assert row.row(0) == ("u1", "north", datetime(2025, 6, 1, tzinfo=UTC), 31, True, "gold")
    payload = json.loads(json.dumps(update.to_payload()))
    assert UserUpdate.model_validate(payload).to_row("u1").equals(row)


def test_user_update_without_fields_is_a_bare_profile() -> None:
    row = parse_user_update({}, NOW).to_row("u2")
    assert row.row(0) == ("u2", None, None)
    assert row.schema["signup_at"] == TIMESTAMP


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"likes": ["a"]}, "likes"),
        ({"address": {"city": "x"}}, "address"),
        ({"score": float("inf")}, "score"),
        ({"user_id": "u9"}, "user_id"),
        ({"signup_at": "someday"}, "signup_at"),
        ({"region": 5}, "region"),
    ],
)
def test_user_field_problems_are_named(body: dict[str, object], field: str) -> None:
    with pytest.raises(RecordError) as caught:
        parse_user_update(body, NOW)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"user: field '{field}': ")


def test_times_are_kept_to_the_microsecond() -> None:
    ts = NOW_DT + timedelta(microseconds=7)
    assert ts_of(view(ts=ts.isoformat())) == ts


def test_an_event_stamped_in_the_future_is_refused() -> None:
    from marketrec.core.errors import RecordError
    from marketrec.online.records import MAX_FUTURE_SECONDS, parse_events

    now = 1.8e9
    ok = {"user_id": "u", "item_id": "i", "event": "view", "ts": now + MAX_FUTURE_SECONDS - 1}
    assert parse_events([ok], now=now).height == 1
    late = {**ok, "ts": now + 3600}
    with pytest.raises(RecordError, match=r"event 1: field 'ts': 3600 s in the future"):
        parse_events([ok, late], now=now)
