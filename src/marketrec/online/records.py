"""Typed validation of what arrives over HTTP (CONTRACT §5, §6).

An event, an item update or a user update is checked field by field before anything is logged:
once a record is in the event log every worker replays it, so a malformed one would be a
problem forever. Errors are `RecordError`s whose message names the record (with its index in
a batch), the field and the problem, which the HTTP layer returns as a 4xx as is. Unknown
fields are refused rather than dropped: a client that misspells `session_id` must hear about
it instead of silently losing the data.

Each record has two forms: a JSON-serialisable *payload* (what the event log stores; times are
epoch seconds as floats) and a one-row Polars frame in the canonical dataset schema (what the
online state consumes), built through `marketrec.data.schema`'s validators so the dtypes are
exactly those of a dataset read from disk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import polars as pl
from annotated_types import Ge
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from marketrec.core.errors import RecordError
from marketrec.data.schema import (
    STRING_LIST,
    validate_events,
    validate_items,
    validate_users,
)

#: The event fields of CONTRACT §1, in the order of the canonical events frame.
EVENT_FIELDS = (
    "user_id",
    "item_id",
    "ts",
    "event",
    "value",
    "session_id",
    "region",
    "device",
    "query",
)

#: An event may be stamped at most this far after the server's clock (clock skew).
MAX_FUTURE_SECONDS = 300.0
#: Epoch seconds at or beyond this are refused: they are almost surely milliseconds.
_MAX_EPOCH_SECONDS = 1e11
_INT64 = (-(2**63), 2**63 - 1)
_TIME_PROBLEM = "not an ISO 8601 time or epoch seconds"


# --- field types -------------------------------------------------------------------------------


def _id_value(value: object) -> object:
    """Integer ids become strings, as `validate_events` does for a dataset's integer ids."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _not_blank(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


def _epoch_seconds(value: object) -> float | None:
    """ISO 8601 (UTC when no offset) or epoch seconds → epoch seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PydanticCustomError("time", _TIME_PROBLEM)
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise PydanticCustomError("time", _TIME_PROBLEM)
        if abs(seconds) >= _MAX_EPOCH_SECONDS:
            raise PydanticCustomError(
                "time", "epoch seconds out of range (milliseconds? send seconds)"
            )
        return seconds
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise PydanticCustomError("time", _TIME_PROBLEM) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    raise PydanticCustomError("time", _TIME_PROBLEM)


Id = Annotated[str, BeforeValidator(_id_value), AfterValidator(_not_blank)]
Name = Annotated[str, AfterValidator(_not_blank)]
Time = Annotated[float | None, BeforeValidator(_epoch_seconds)]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Price = Annotated[float, Strict(), AllowInfNan(False), Ge(0)]
Flag = Annotated[bool, Strict()]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- events -------------------------------------------------------------------------------------


class EventIn(_Record):
    """One event of CONTRACT §1 as it arrives; `ts` is epoch seconds after validation.

    A missing `ts` stays None here; `parse_event_payloads` fills in the time of arrival.
    """

    user_id: Id
    item_id: Id | None = None
    ts: Time = None
    event: Name
    value: Number | None = None
    session_id: Id | None = None
    region: str | None = None
    device: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _item_or_query(self) -> EventIn:
        """Every event is about an item except a search, which is about its query."""
        if self.event == "search":
            if self.query is None or not self.query.strip():
                raise PydanticCustomError(
                    "search_query", "required (non-empty) on a 'search' event", {"field": "query"}
                )
        elif self.item_id is None:
            raise PydanticCustomError(
                "item_required", "required unless event is 'search'", {"field": "item_id"}
            )
        return self


def parse_event_payloads(payload: object, now: float) -> list[dict[str, Any]]:
    """Validate the body of `POST /v1/events` into event-log payloads.

    `payload` is the decoded JSON: one event object or a non-empty list of them. The batch is
    all or nothing: the first invalid event raises `RecordError` naming its index, so a client
    never has to guess which part of a batch was recorded. Missing or null `ts` = `now`.
    """
    if isinstance(payload, Mapping):
        raws: Sequence[object] = [payload]
    elif isinstance(payload, list):
        raws = payload
    else:
        raise RecordError(
            "events", f"expected an event object or a list of them, got {_json_type(payload)}"
        )
    if not raws:
        raise RecordError("events", "empty list: send at least one event")
    return [_event_payload(i, raw, now) for i, raw in enumerate(raws)]


def parse_events(payload: object, now: float) -> pl.DataFrame:
    """Validate the body of `POST /v1/events` into a canonical events frame (see above)."""
    return events_from_payloads(parse_event_payloads(payload, now))


def events_from_payloads(payloads: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Event-log payloads → an events frame with exactly a dataset's columns and dtypes.

    This is how a worker replaying the log turns event records back into rows, so live and
    replayed events go through the same conversion.
    """
    columns: dict[str, list[Any]] = {name: [p.get(name) for p in payloads] for name in EVENT_FIELDS}
    schema = {name: pl.String for name in EVENT_FIELDS} | {"ts": pl.Float64, "value": pl.Float64}
    frame = pl.DataFrame(columns, schema=schema)
    frame = frame.with_columns(_epoch_to_timestamp(pl.col("ts")))
    return validate_events(frame, notes=[])


def _event_payload(index: int, raw: object, now: float) -> dict[str, Any]:
    record = f"event {index}"
    if not isinstance(raw, Mapping):
        raise RecordError(record, f"expected a JSON object, got {_json_type(raw)}", index=index)
    try:
        event = EventIn.model_validate(raw)
    except ValidationError as exc:
        raise _record_error(record, exc, EventIn, index) from None
    out = event.model_dump(exclude_none=True)
    out["ts"] = now if event.ts is None else event.ts
    if out["ts"] > now + MAX_FUTURE_SECONDS:
        # a live model ranks at its latest event's moment: one event stamped in the future
        # would move every later list there
        raise RecordError(
            record,
            f"{out['ts'] - now:.0f} s in the future (clocks may differ by at most "
            f"{MAX_FUTURE_SECONDS:.0f} s)",
            field="ts",
            index=index,
        )
    return out


# --- catalogue and user updates -------------------------------------------------------------


class ItemUpdate(_Record):
    """The body of `PUT /v1/items/{item_id}`: the item's catalogue entry (CONTRACT §1).

    A PUT replaces the entry: a field left out is unknown (null), not kept from before.
    `created_at` (when the item was listed) defaults to the time of the update, so a new
    listing is new from the moment it is announced. `regions` null = sold everywhere.
    """

    title: str | None = None
    description: str | None = None
    brand: str | None = None
    category: str | None = None
    tags: list[str] | None = None
    price: Price | None = None
    created_at: Time = None
    regions: list[str] | None = None
    available: Flag | None = None

    @model_validator(mode="after")
    def _listed_now(self, info: ValidationInfo) -> ItemUpdate:
        if self.created_at is None:
            self.created_at = _now(info)
        return self

    def to_payload(self) -> dict[str, Any]:
        """The event-log payload: the set fields, times as epoch seconds."""
        return self.model_dump(exclude_none=True)

    def to_row(self, item_id: str) -> pl.DataFrame:
        """One row of the canonical items table for `item_id`."""
        _check_id(item_id, "item")
        row = {"item_id": item_id, **self.model_dump()}
        schema = {
            "item_id": pl.String,
            "title": pl.String,
            "description": pl.String,
            "brand": pl.String,
            "category": pl.String,
            "tags": STRING_LIST,
            "price": pl.Float64,
            "created_at": pl.Float64,
            "regions": STRING_LIST,
            "available": pl.Boolean,
        }
        frame = pl.DataFrame([row], schema=schema)
        frame = frame.with_columns(_epoch_to_timestamp(pl.col("created_at")))
        return validate_items(frame, notes=[])


class UserUpdate(BaseModel):
    """The body of `PUT /v1/users/{user_id}`: region, sign-up time and free attributes.

    Any other field is a user attribute (CONTRACT §1: strings are categorical, numbers
    numeric), so attributes must be scalars: a nested object or list has no column type.
    """

    model_config = ConfigDict(extra="allow")

    region: str | None = None
    signup_at: Time = None

    @model_validator(mode="after")
    def _scalar_attributes(self) -> UserUpdate:
        for name, value in self.attributes.items():
            problem = _attribute_problem(name, value)
            if problem:
                raise PydanticCustomError("attribute", problem, {"field": name})
        return self

    @property
    def attributes(self) -> dict[str, Any]:
        """The free-form attributes (every field other than region and signup_at)."""
        return dict(self.model_extra or {})

    def to_payload(self) -> dict[str, Any]:
        """The event-log payload: region, signup_at (epoch seconds) and the attributes."""
        out = {"region": self.region, "signup_at": self.signup_at}
        return {k: v for k, v in out.items() if v is not None} | self.attributes

    def to_row(self, user_id: str) -> pl.DataFrame:
        """One row of the canonical users table for `user_id` (attributes as extra columns)."""
        _check_id(user_id, "user")
        known = pl.DataFrame(
            {"user_id": [user_id], "region": [self.region], "signup_at": [self.signup_at]},
            schema={"user_id": pl.String, "region": pl.String, "signup_at": pl.Float64},
        ).with_columns(_epoch_to_timestamp(pl.col("signup_at")))
        if self.attributes:
            extra = pl.DataFrame({name: [value] for name, value in self.attributes.items()})
            known = pl.concat([known, extra], how="horizontal")
        return validate_users(known, notes=[])


def parse_item_update(payload: object, now: float) -> ItemUpdate:
    """Validate a `PUT /v1/items/{id}` body; a missing `created_at` becomes `now`."""
    return _parse_update(ItemUpdate, "item", payload, now)


def parse_user_update(payload: object, now: float) -> UserUpdate:
    """Validate a `PUT /v1/users/{id}` body."""
    return _parse_update(UserUpdate, "user", payload, now)


M = TypeVar("M", bound=BaseModel)


def _parse_update(model: type[M], record: str, payload: object, now: float) -> M:
    if not isinstance(payload, Mapping):
        raise RecordError(record, f"expected a JSON object, got {_json_type(payload)}")
    try:
        return model.model_validate(payload, context={"now": now})
    except ValidationError as exc:
        raise _record_error(record, exc, model) from None


def _attribute_problem(name: str, value: object) -> str | None:
    if name == "user_id":
        return "the user id comes from the URL, not the body"
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        return None if _INT64[0] <= value <= _INT64[1] else "integer out of the 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number"
    return f"an attribute must be a string, number, true/false or null, got {_json_type(value)}"


# --- helpers -----------------------------------------------------------------------------------


def _now(info: ValidationInfo) -> float:
    """The time of arrival the caller passed as validation context, else the clock."""
    context = info.context if isinstance(info.context, Mapping) else {}
    now = context.get("now")
    return float(now) if now is not None else datetime.now(UTC).timestamp()


def _check_id(value: str, record: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(record, "must not be empty", field=f"{record}_id")


def _epoch_to_timestamp(column: pl.Expr) -> pl.Expr:
    """Epoch seconds (float) → Datetime("us", "UTC"), rounded to the microsecond."""
    micros = (column * 1e6).round(0).cast(pl.Int64)
    return micros.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _record_error(
    record: str, exc: ValidationError, model: type[BaseModel], index: int | None = None
) -> RecordError:
    """Turn pydantic's errors into one `RecordError` a client can act on."""
    errors = exc.errors()
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        names = ", ".join(f"'{n}'" for n in unknown)
        known = ", ".join(model.model_fields)
        plural = "s" if len(unknown) > 1 else ""
        error = RecordError(record, f"unknown field{plural} {names} (known: {known})", index=index)
        error.field = unknown[0]  # named in the message already, not as "field 'x':"
        return error
    located = [(_field(e), _problem(e)) for e in errors]
    field, problem = located[0]
    others = "".join(f"; field '{f}': {p}" if f else f"; {p}" for f, p in located[1:])
    return RecordError(record, problem + others, field=field, index=index)


def _field(error: Mapping[str, Any]) -> str | None:
    loc = [part for part in error["loc"] if not isinstance(part, int)]
    positions = "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int))
    if loc:
        return ".".join(str(p) for p in loc) + positions
    ctx = error.get("ctx") or {}
    return ctx.get("field")


_PROBLEMS = {
    "missing": "required",
    "string_type": "must be a string",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
}


def _problem(error: Mapping[str, Any]) -> str:
    if error["type"] in _PROBLEMS:
        return _PROBLEMS[error["type"]]
    if error["type"] == "greater_than_equal":
        return f"must be ≥ {error['ctx']['ge']:g}"
    msg = str(error["msg"])
    return msg[:1].lower() + msg[1:]


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
