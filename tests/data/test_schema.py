"""Validation of the canonical dataset: clear errors naming file, column and row count;
coercions reported, never silent."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from marketrec.core.errors import DataError
from marketrec.data.schema import TIMESTAMP, load_dataset, make_dataset

EVENTS = pl.DataFrame(
    {
        "user_id": ["u1", "u1", "u2"],
        "item_id": ["i1", None, "i2"],
        "ts": [datetime(2026, 1, 1, h, tzinfo=UTC) for h in (1, 2, 3)],
        "event": ["view", "search", "purchase"],
    }
)
ITEMS = pl.DataFrame({"item_id": ["i1", "i2", "i3"]})


def write(folder: Path, events: pl.DataFrame = EVENTS, items: pl.DataFrame = ITEMS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    events.write_parquet(folder / "events.parquet")
    items.write_parquet(folder / "items.parquet")
    return folder


def test_valid_folder_round_trip(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path / "d"))
    assert data.events.schema["ts"] == TIMESTAMP
    assert data.users.height == 0 and data.notes == ()
    data.save(tmp_path / "copy")
    again = load_dataset(tmp_path / "copy")
    assert again.events.equals(data.events) and again.items.equals(data.items)
    assert data.item_ids().to_list() == ["i1", "i2", "i3"]


def test_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")
    folder = write(tmp_path / "d")
    (folder / "items.parquet").unlink()
    with pytest.raises(DataError, match=r"items\.parquet: required file is missing"):
        load_dataset(folder)


def test_malformed_parquet(tmp_path: Path) -> None:
    folder = write(tmp_path / "d")
    (folder / "events.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"events\.parquet: not a readable Parquet file"):
        load_dataset(folder)


def test_missing_required_column_names_it() -> None:
    with pytest.raises(DataError, match="required column 'event' is missing"):
        make_dataset(EVENTS.drop("event"))


def test_wrong_type_names_column() -> None:
    bad = EVENTS.with_columns(pl.Series("value", ["a", "b", "c"]))
    with pytest.raises(DataError, match=r"column 'value': wrong type String, expected float64"):
        make_dataset(bad)


def test_null_ids_are_counted() -> None:
    bad = EVENTS.with_columns(pl.Series("user_id", ["u1", None, None]))
    with pytest.raises(DataError, match=r"column 'user_id': null values \(2 rows\)"):
        make_dataset(bad)
    no_item = EVENTS.with_columns(pl.Series("event", ["view", "view", "purchase"]))
    with pytest.raises(DataError, match=r"null item_id on events other than 'search' \(1 row\)"):
        make_dataset(no_item)


def test_unparsable_timestamps_are_counted() -> None:
    bad = EVENTS.with_columns(pl.Series("ts", ["2026-01-01T00:00:00", "yesterday", "soon"]))
    with pytest.raises(DataError, match=r"column 'ts': unparsable timestamps \(2 rows\)"):
        make_dataset(bad)


def test_duplicate_item_ids_refused() -> None:
    items = pl.DataFrame({"item_id": ["i1", "i1", "i2", "i2", "i3"]})
    with pytest.raises(DataError, match=r"column 'item_id': duplicate ids \(2 rows\)"):
        make_dataset(EVENTS, items)


def test_coercions_are_reported_with_counts() -> None:
    raw = pl.DataFrame(
        {
            "user_id": [1, 2],
            "item_id": [10, 11],
            "ts": ["2026-01-01T10:00:00+02:00", "2026-01-02"],
            "event": ["view", "view"],
            "value": [1, 2],
        }
    )
    data = make_dataset(raw)
    assert data.events.get_column("user_id").to_list() == ["1", "2"]
    assert data.events.get_column("ts").to_list() == [
        datetime(2026, 1, 1, 8, tzinfo=UTC),
        datetime(2026, 1, 2, tzinfo=UTC),
    ]
    notes = " | ".join(data.notes)
    assert "'user_id' coerced Int64 → string (2 rows)" in notes
    assert "'ts' parsed from ISO 8601 strings (2 rows)" in notes
    assert "'value' coerced Int64 → float64 (2 rows)" in notes


def test_epoch_and_zone_coercion() -> None:
    raw = EVENTS.with_columns(pl.Series("ts", [1_767_225_600, 1_767_225_601, 1_767_225_602]))
    data = make_dataset(raw)
    assert data.events.get_column("ts")[0] == datetime(2026, 1, 1, tzinfo=UTC)
    assert any("read as epoch s" in n for n in data.notes)
    tokyo = EVENTS.with_columns(pl.col("ts").dt.convert_time_zone("Asia/Tokyo"))
    converted = make_dataset(tokyo)
    assert converted.events.get_column("ts").equals(make_dataset(EVENTS).events.get_column("ts"))
    assert any("converted from time zone Asia/Tokyo" in n for n in converted.notes)


def test_exact_duplicate_events_reported_not_dropped() -> None:
    data = make_dataset(pl.concat([EVENTS, EVENTS.head(1)]))
    assert data.events.height == 4
    assert any("1 rows are exact duplicates" in n for n in data.notes)


def test_a_million_events_validate() -> None:
    """A 1M-row frame with repeated timestamps validates whole (10M: benchmarks/scale.py)."""
    n = 1_000_000
    big = pl.DataFrame(
        {
            "user_id": pl.int_range(0, n, eager=True).cast(pl.String),
            "item_id": (pl.int_range(0, n, eager=True) % 5000).cast(pl.String),
            "ts": pl.datetime_range(
                datetime(2026, 1, 1), datetime(2026, 1, 2), "1s", eager=True, time_zone="UTC"
            )
            .head(n)
            .extend_constant(datetime(2026, 1, 2, tzinfo=UTC), max(0, n - 86_401)),
            "event": ["view"] * n,
        }
    )
    data = make_dataset(big)
    assert data.events.height == n
