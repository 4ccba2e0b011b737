"""The canonical dataset (CONTRACT §1): schemas, validation and the folder format.

A dataset is a folder with `events.parquet`, `items.parquet` and optionally `users.parquet`.
Every stage reads data through `load_dataset`, so a file that violates the schema is refused
once, here, with an error that names the file, column and number of offending rows. Harmless
differences (integer ids, naive or non-UTC timestamps, ISO strings for timestamps, categorical
strings) are coerced and reported as notes with counts: nothing is silently changed or dropped.
All checks are column-wise Polars expressions, so 10M events validate in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from marketrec.core.errors import DataError

log = logging.getLogger(__name__)

EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"

#: Event names the contract defines; others are kept and weighted by configuration.
KNOWN_EVENTS = ("view", "click", "add_to_cart", "purchase", "search", "rating")

TIMESTAMP = pl.Datetime("us", "UTC")
STRING_LIST = pl.List(pl.String)

# Column kind per canonical column: what it must be (after coercion) and whether it is required.
_STRING, _TIME, _FLOAT, _BOOL, _LIST = "string", "timestamp", "float64", "bool", "list of strings"


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str
    required: bool = False
    nullable: bool = True


EVENT_COLUMNS = (
    _Column("user_id", _STRING, required=True, nullable=False),
    _Column("item_id", _STRING, required=True),
    _Column("ts", _TIME, required=True, nullable=False),
    _Column("event", _STRING, required=True, nullable=False),
    _Column("value", _FLOAT),
    _Column("session_id", _STRING),
    _Column("region", _STRING),
    _Column("device", _STRING),
    _Column("query", _STRING),
)
ITEM_COLUMNS = (
    _Column("item_id", _STRING, required=True, nullable=False),
    _Column("title", _STRING),
    _Column("description", _STRING),
    _Column("brand", _STRING),
    _Column("category", _STRING),
    _Column("tags", _LIST),
    _Column("price", _FLOAT),
    _Column("created_at", _TIME),
    _Column("regions", _LIST),
    _Column("available", _BOOL),
)
USER_COLUMNS = (
    _Column("user_id", _STRING, required=True, nullable=False),
    _Column("region", _STRING),
    _Column("signup_at", _TIME),
)


@dataclass(frozen=True)
class Dataset:
    """Events, catalogue and user table, validated; `notes` lists every coercion made."""

    events: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    notes: tuple[str, ...] = field(default=())

    def save(self, folder: str | Path) -> Path:
        """Write the three Parquet files into `folder` (created if needed)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.events.write_parquet(out / EVENTS_FILE)
        self.items.write_parquet(out / ITEMS_FILE)
        self.users.write_parquet(out / USERS_FILE)
        return out

    def item_ids(self) -> pl.Series:
        """Every item of the catalogue: the items table plus items seen only in events."""
        from_events = self.events.get_column("item_id").drop_nulls()
        ids = pl.concat([self.items.get_column("item_id"), from_events]).unique()
        return ids.sort()

    def summary(self) -> dict[str, int]:
        """Counts a person wants to see first: rows per table and distinct ids."""
        return {
            "events": self.events.height,
            "users_with_events": self.events.get_column("user_id").n_unique(),
            "items_with_events": self.events.get_column("item_id").drop_nulls().n_unique(),
            "catalogue_items": self.items.height,
            "user_profiles": self.users.height,
        }


def make_dataset(
    events: pl.DataFrame,
    items: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
) -> Dataset:
    """Validate in-memory frames into a `Dataset` (what importers and generators call)."""
    notes: list[str] = []
    ev = validate_events(events, notes)
    it = validate_items(items if items is not None else _empty(ITEM_COLUMNS[:1]), notes)
    us = validate_users(users if users is not None else _empty(USER_COLUMNS[:1]), notes)
    return Dataset(ev, it, us, tuple(notes))


def load_dataset(folder: str | Path) -> Dataset:
    """Read and validate a dataset folder; raise `DataError` naming what is wrong."""
    path = Path(folder)
    if not path.exists():
        raise DataError(str(path), "dataset folder not found")
    if not path.is_dir():
        raise DataError(str(path), "not a folder (a dataset is a folder of Parquet files)")
    notes: list[str] = []
    events = validate_events(
        _read(path / EVENTS_FILE, required=True), notes, _name(path, EVENTS_FILE)
    )
    items_raw = _read(path / ITEMS_FILE, required=True)
    items = validate_items(items_raw, notes, _name(path, ITEMS_FILE))
    users_raw = _read(path / USERS_FILE, required=False)
    if users_raw is None:
        users_raw = _empty(USER_COLUMNS[:1])
    users = validate_users(users_raw, notes, _name(path, USERS_FILE))
    for note in notes:
        log.info("%s", note)
    return Dataset(events, items, users, tuple(notes))


def validate_events(df: pl.DataFrame, notes: list[str], file: str = EVENTS_FILE) -> pl.DataFrame:
    """Check and coerce an events frame to the canonical schema."""
    df = _conform(df, EVENT_COLUMNS, notes, file)
    missing_item = df.filter(pl.col("item_id").is_null() & (pl.col("event") != "search")).height
    if missing_item:
        raise DataError(
            file, "null item_id on events other than 'search'", column="item_id", rows=missing_item
        )
    duplicates = df.height - df.unique().height if df.height else 0
    if duplicates:
        notes.append(f"{file}: {duplicates:,} rows are exact duplicates of another row (kept)")
    return df


def validate_items(df: pl.DataFrame, notes: list[str], file: str = ITEMS_FILE) -> pl.DataFrame:
    """Check and coerce a catalogue frame; duplicate item ids are an error."""
    df = _conform(df, ITEM_COLUMNS, notes, file)
    _refuse_duplicates(df, "item_id", file)
    return df


def validate_users(df: pl.DataFrame, notes: list[str], file: str = USERS_FILE) -> pl.DataFrame:
    """Check and coerce a user table; other columns are free-form user attributes."""
    df = _conform(df, USER_COLUMNS, notes, file)
    _refuse_duplicates(df, "user_id", file)
    return df


def _refuse_duplicates(df: pl.DataFrame, column: str, file: str) -> None:
    dup = df.height - df.get_column(column).n_unique()
    if dup:
        raise DataError(file, "duplicate ids", column=column, rows=dup)


def _name(folder: Path, file: str) -> str:
    return str(folder / file)


def _read(path: Path, required: bool) -> pl.DataFrame | None:
    if not path.exists():
        if required:
            raise DataError(str(path), "required file is missing")
        return None
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(str(path), f"not a readable Parquet file ({reason[:200]})") from exc


def _empty(columns: tuple[_Column, ...]) -> pl.DataFrame:
    return pl.DataFrame({c.name: pl.Series([], dtype=_dtype(c.kind)) for c in columns})


def _dtype(kind: str) -> pl.DataType:
    return {
        _STRING: pl.String(),
        _TIME: TIMESTAMP,
        _FLOAT: pl.Float64(),
        _BOOL: pl.Boolean(),
        _LIST: STRING_LIST,
    }[kind]


def _conform(
    df: pl.DataFrame, columns: tuple[_Column, ...], notes: list[str], file: str
) -> pl.DataFrame:
    for col in columns:
        if col.required and col.name not in df.columns:
            raise DataError(
                file,
                f"required column '{col.name}' is missing "
                f"(columns present: {', '.join(df.columns) or 'none'})",
            )
    for col in columns:
        if col.name not in df.columns:
            continue
        coerce = _COERCERS[col.kind]
        df = df.with_columns(coerce(df.get_column(col.name), file, notes))
        if not col.nullable:
            nulls = df.get_column(col.name).null_count()
            if nulls:
                raise DataError(file, "null values", column=col.name, rows=nulls)
    return df


def _coerce_string(s: pl.Series, file: str, notes: list[str]) -> pl.Series:
    if s.dtype == pl.String:
        return s
    if s.dtype in (pl.Categorical, pl.Enum) or isinstance(s.dtype, pl.Categorical | pl.Enum):
        return s.cast(pl.String)
    if s.dtype.is_integer() or s.dtype == pl.Null:
        if s.dtype != pl.Null:
            notes.append(
                f"{file}: column '{s.name}' coerced {s.dtype} → string "
                f"({s.len() - s.null_count():,} rows)"
            )
        return s.cast(pl.String)
    raise DataError(file, f"wrong type {s.dtype}, expected string", column=s.name, rows=s.len())


def _coerce_float(s: pl.Series, file: str, notes: list[str]) -> pl.Series:
    if s.dtype == pl.Float64:
        return s
    if s.dtype.is_numeric() or s.dtype in (pl.Boolean, pl.Null):
        if s.dtype != pl.Null:
            notes.append(
                f"{file}: column '{s.name}' coerced {s.dtype} → float64 "
                f"({s.len() - s.null_count():,} rows)"
            )
        return s.cast(pl.Float64)
    raise DataError(file, f"wrong type {s.dtype}, expected float64", column=s.name, rows=s.len())


def _coerce_bool(s: pl.Series, file: str, notes: list[str]) -> pl.Series:
    if s.dtype == pl.Boolean:
        return s
    if s.dtype == pl.Null:
        return s.cast(pl.Boolean)
    raise DataError(file, f"wrong type {s.dtype}, expected bool", column=s.name, rows=s.len())


def _coerce_list(s: pl.Series, file: str, notes: list[str]) -> pl.Series:
    if s.dtype == STRING_LIST:
        return s
    if s.dtype == pl.Null:
        return s.cast(STRING_LIST)
    if isinstance(s.dtype, pl.List) and (
        s.dtype.inner == pl.Null or s.dtype.inner.is_integer()  # type: ignore[union-attr]
    ):
        return s.cast(STRING_LIST)
    raise DataError(
        file, f"wrong type {s.dtype}, expected list of strings", column=s.name, rows=s.len()
    )


def _coerce_timestamp(s: pl.Series, file: str, notes: list[str]) -> pl.Series:
    name = s.name
    if isinstance(s.dtype, pl.Datetime):
        tz = s.dtype.time_zone  # type: ignore[union-attr]
        if tz is None:
            s = s.dt.replace_time_zone("UTC")
        elif tz != "UTC":
            notes.append(f"{file}: column '{name}' converted from time zone {tz} to UTC")
            s = s.dt.convert_time_zone("UTC")
        return s.dt.cast_time_unit("us")
    if s.dtype == pl.Date:
        return s.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if s.dtype == pl.Null:
        return s.cast(TIMESTAMP)
    if s.dtype.is_integer() or s.dtype.is_float():
        largest = abs(s.max() or 0)  # type: ignore[arg-type]
        unit = "s" if largest < 1e11 else "ms" if largest < 1e14 else "us"
        notes.append(
            f"{file}: column '{name}' read as epoch {unit} ({s.len() - s.null_count():,} rows)"
        )
        scaled = (s.cast(pl.Float64) * {"s": 1e6, "ms": 1e3, "us": 1.0}[unit]).round(0)
        return scaled.cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if s.dtype == pl.String:
        parsed = _parse_iso(s)
        bad = parsed.is_null().sum() - s.null_count()
        if bad:
            raise DataError(file, "unparsable timestamps", column=name, rows=int(bad))
        notes.append(
            f"{file}: column '{name}' parsed from ISO 8601 strings "
            f"({s.len() - s.null_count():,} rows)"
        )
        return parsed.alias(name)
    raise DataError(file, f"wrong type {s.dtype}, expected timestamp", column=name, rows=s.len())


_ISO_WITH_OFFSET = (
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%z",
)
_ISO_NAIVE = (
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
)


def _parse_iso(s: pl.Series) -> pl.Series:
    """Parse ISO 8601 strings element by element (formats may mix within a column).

    With an offset (`Z`, `+02:00`) the instant is converted to UTC; without, it is taken as UTC.
    """
    text = s.str.strip_chars().str.replace(r"Z$", "+00:00")
    aware = [text.str.strptime(pl.Datetime("us", "UTC"), f, strict=False) for f in _ISO_WITH_OFFSET]
    naive = [
        text.str.strptime(pl.Datetime("us"), f, strict=False, exact=True).dt.replace_time_zone(
            "UTC"
        )
        for f in _ISO_NAIVE
    ]
    return pl.select(pl.coalesce([*aware, *naive]).alias(s.name)).to_series()


_COERCERS: dict[str, Callable[[pl.Series, str, list[str]], pl.Series]] = {
    _STRING: _coerce_string,
    _TIME: _coerce_timestamp,
    _FLOAT: _coerce_float,
    _BOOL: _coerce_bool,
    _LIST: _coerce_list,
}


def epoch_seconds(times: pl.Series) -> np.ndarray:
    """A timestamp column as float64 epoch seconds (microsecond precision; NaN for null)."""
    seconds = times.cast(TIMESTAMP).dt.epoch("us").cast(pl.Float64) / 1e6
    return seconds.fill_null(np.nan).to_numpy()
