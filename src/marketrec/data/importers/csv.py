"""Clickstream CSV (RetailRocket `events.csv` and the like) into the canonical dataset.

Marketplaces export events with their own column names, event names and timestamp units, so the
importer is driven by a mapping from canonical column to source column rather than by a fixed
layout. Everything is read as text with a lazy Polars scan (only the mapped columns are
materialised) and converted with column expressions, so a 10M-row export imports in seconds and
no value is reinterpreted by type inference (ids keep their leading zeros).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from marketrec.core.errors import ConfigError, DataError
from marketrec.data.schema import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    KNOWN_EVENTS,
    USER_COLUMNS,
    Dataset,
    make_dataset,
)

#: Canonical event columns a mapping may name.
EVENT_FIELDS: tuple[str, ...] = tuple(c.name for c in EVENT_COLUMNS)
ITEM_FIELDS: tuple[str, ...] = tuple(c.name for c in ITEM_COLUMNS)
USER_FIELDS: tuple[str, ...] = tuple(c.name for c in USER_COLUMNS)

#: The RetailRocket `events.csv` layout (`timestamp,visitorid,event,itemid,transactionid`).
RETAILROCKET_MAPPING: dict[str, str] = {
    "user_id": "visitorid",
    "item_id": "itemid",
    "ts": "timestamp",
    "event": "event",
}
#: Default event renames: RetailRocket names → canonical names (`view` is already canonical).
RETAILROCKET_EVENTS: dict[str, str] = {"addtocart": "add_to_cart", "transaction": "purchase"}

_REQUIRED = ("user_id", "item_id", "ts", "event")
_MICROSECONDS = {"s": 1_000_000.0, "ms": 1_000.0, "us": 1.0, "ns": 0.001}
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")


def parse_mapping(pairs: Iterable[str], *, allowed: Iterable[str] | None = None) -> dict[str, str]:
    """Parse CLI `--map CANONICAL=SOURCE` pairs (`event==view` maps a constant event).

    `allowed` defaults to the canonical event columns; pass `ITEM_FIELDS` or `USER_FIELDS` for
    the catalogue and user tables (whose extra user attributes are kept without mapping).
    """
    names = tuple(allowed) if allowed is not None else EVENT_FIELDS
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ConfigError(
                f"mapping {pair!r}: expected CANONICAL=SOURCE_COLUMN, e.g. user_id=visitorid"
            )
        if key not in names:
            raise ConfigError(
                f"mapping {pair!r}: unknown canonical column {key!r} (known: {', '.join(names)})"
            )
        if key in out:
            raise ConfigError(f"mapping {pair!r}: {key!r} is mapped twice")
        out[key] = value
    return out


def import_csv(
    src: str | Path,
    mapping: Mapping[str, str],
    *,
    event_map: Mapping[str, str] | None = None,
    ts_unit: str | None = None,
    items: str | Path | None = None,
    users: str | Path | None = None,
    item_mapping: Mapping[str, str] | None = None,
    user_mapping: Mapping[str, str] | None = None,
    separator: str = ",",
) -> Dataset:
    """Import an events CSV (plus optional items/users CSVs) using canonical→source mappings.

    A mapping value starting with `=` is a constant (`{"event": "=purchase"}` for an orders
    export). `event_map` renames event values; by default RetailRocket's `addtocart` and
    `transaction` become `add_to_cart` and `purchase`. Numeric timestamps are epoch values whose
    unit is `ts_unit` or, when not given, detected from their magnitude; text timestamps are
    parsed as ISO 8601. Rows without a user, item or time are dropped and counted in the notes.
    """
    if ts_unit is not None and ts_unit not in _MICROSECONDS:
        raise ConfigError(f"ts_unit {ts_unit!r}: expected one of {', '.join(_MICROSECONDS)}")
    if len(separator) != 1:
        raise ConfigError(f"separator {separator!r}: must be a single character")
    _check_names(mapping, EVENT_FIELDS, "mapping")
    missing = [name for name in _REQUIRED if name not in mapping]
    if missing:
        hint = " (a constant works too: event==view)" if "event" in missing else ""
        raise ConfigError(f"mapping lacks required column(s) {', '.join(missing)}{hint}")
    path = _existing(src)
    notes: list[str] = []
    events = _read_events(path, mapping, event_map, ts_unit, separator, notes)
    items_df = None
    if items is not None:
        _check_names(item_mapping or {}, ITEM_FIELDS, "item_mapping")
        items_df = _read_table(
            _existing(items), item_mapping, "item_id", separator, notes, keep_extra=False
        )
    users_df = None
    if users is not None:
        _check_names(user_mapping or {}, USER_FIELDS, "user_mapping", open_ended=True)
        users_df = _read_table(
            _existing(users), user_mapping, "user_id", separator, notes, keep_extra=True
        )
    ds = make_dataset(events, items_df, users_df)
    return dataclasses.replace(ds, notes=(*notes, *ds.notes))


def _check_names(
    mapping: Mapping[str, str], names: tuple[str, ...], what: str, open_ended: bool = False
) -> None:
    """Unknown canonical names are configuration errors (users may add attribute columns)."""
    if open_ended:
        return
    unknown = [key for key in mapping if key not in names]
    if unknown:
        raise ConfigError(
            f"{what}: unknown canonical column(s) {', '.join(unknown)} (known: {', '.join(names)})"
        )


def _existing(src: str | Path) -> Path:
    path = Path(src)
    if not path.exists():
        raise DataError(str(path), "file not found")
    if not path.is_file():
        raise DataError(str(path), "not a file (expected a CSV file)")
    return path


def _scan(path: Path, separator: str) -> tuple[pl.LazyFrame, list[str]]:
    """Lazy all-text scan of `path` and its header, with Polars errors turned into DataError."""
    lf = pl.scan_csv(path, separator=separator, infer_schema=False)
    try:
        columns = lf.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(str(path), f"not a readable CSV file ({_reason(exc)})") from exc
    return lf, columns


def _collect(lf: pl.LazyFrame, path: Path) -> pl.DataFrame:
    try:
        return lf.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(str(path), f"malformed CSV ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _sources(mapping: Mapping[str, str], columns: list[str], path: Path) -> dict[str, pl.Expr]:
    """Canonical name → expression (source column or `=constant`); missing columns refused."""
    exprs: dict[str, pl.Expr] = {}
    for canonical, source in mapping.items():
        if source.startswith("=") and len(source) > 1:
            exprs[canonical] = pl.lit(source[1:], dtype=pl.String)
        elif source in columns:
            exprs[canonical] = pl.col(source)
        else:
            raise DataError(
                str(path),
                f"mapped source column '{source}' (for {canonical}) not found; "
                f"columns present: {', '.join(columns) or 'none'}",
                column=source,
            )
    return exprs


def _read_events(
    path: Path,
    mapping: Mapping[str, str],
    event_map: Mapping[str, str] | None,
    ts_unit: str | None,
    separator: str,
    notes: list[str],
) -> pl.DataFrame:
    lf, columns = _scan(path, separator)
    exprs = _sources(mapping, columns, path)
    unused = [c for c in columns if c not in mapping.values()]
    if unused:
        notes.append(f"{path.name}: columns not imported: {', '.join(unused)}")
    df = _collect(lf.select([e.alias(name) for name, e in exprs.items()]), path)
    name = path.name

    renames = dict(RETAILROCKET_EVENTS if event_map is None else event_map)
    if renames:
        counts = df.group_by("event").len().filter(pl.col("event").is_in(list(renames)))
        for event, n in counts.sort("event").iter_rows():
            notes.append(f"{name}: event '{event}' renamed '{renames[event]}' ({n:,} rows)")
        df = df.with_columns(pl.col("event").replace(renames))

    drop = (
        pl.col("user_id").is_null()
        | pl.col("ts").is_null()
        | pl.col("event").is_null()
        | (pl.col("item_id").is_null() & (pl.col("event") != "search"))
    )
    dropped = df.filter(drop)
    if dropped.height:
        per = ", ".join(
            f"{c} {dropped.get_column(c).null_count():,}"
            for c in ("user_id", "item_id", "ts", "event")
            if dropped.get_column(c).null_count()
        )
        notes.append(f"{name}: {dropped.height:,} rows with empty required fields dropped ({per})")
        df = df.filter(~drop)

    if "value" in df.columns:
        df = df.with_columns(_float(df.get_column("value"), name, notes))
    df = df.with_columns(_timestamp(df.get_column("ts"), ts_unit, path, notes))

    others = (
        df.group_by("event").len().filter(~pl.col("event").is_in(list(KNOWN_EVENTS))).sort("event")
    )
    for event, n in others.iter_rows():
        notes.append(
            f"{name}: event '{event}' is not a standard name ({n:,} rows, kept; weight it in the "
            "configuration or rename it with event_map)"
        )
    return df


def _float(s: pl.Series, file: str, notes: list[str]) -> pl.Series:
    """Text → float64; present values that are not numbers become null and are counted."""
    value = s.str.strip_chars().cast(pl.Float64, strict=False)
    bad = int((value.is_null() & s.is_not_null() & (s.str.strip_chars() != "")).sum())
    if bad:
        notes.append(f"{file}: {bad:,} '{s.name}' values are not numbers → null")
    return value


def _timestamp(s: pl.Series, ts_unit: str | None, path: Path, notes: list[str]) -> pl.Series:
    """Epoch numbers (explicit or detected unit) → UTC timestamps; ISO text left to validation."""
    text = s.str.strip_chars()
    number = text.cast(pl.Float64, strict=False)
    numeric = number.null_count() == text.null_count()
    if ts_unit is not None:
        if not numeric:
            bad = number.null_count() - text.null_count()
            raise DataError(
                str(path),
                f"ts_unit '{ts_unit}' given but values are not epoch numbers",
                column=s.name,
                rows=bad,
            )
        notes.append(f"{path.name}: column '{s.name}' read as epoch {ts_unit} ({s.len():,} rows)")
        micros = (number * _MICROSECONDS[ts_unit]).round(0).cast(pl.Int64)
        return micros.cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias(s.name)
    if numeric and s.len():
        integers = text.cast(pl.Int64, strict=False)
        # make_dataset detects the unit from the magnitude and reports it.
        return integers if integers.null_count() == text.null_count() else number
    return text


def _read_table(
    path: Path,
    mapping: Mapping[str, str] | None,
    id_column: str,
    separator: str,
    notes: list[str],
    *,
    keep_extra: bool,
) -> pl.DataFrame:
    """An items or users CSV: rename mapped columns, type canonical ones, dedupe ids.

    Without a mapping the file must already use canonical names. Users keep unmapped columns as
    attributes (numeric when every value is a number, categorical text otherwise); items keep
    only canonical columns, since the catalogue schema is closed.
    """
    lf, columns = _scan(path, separator)
    # Columns already named canonically are taken as they are unless the mapping says otherwise.
    mapping = dict(mapping or {})
    targets, sources = set(mapping), set(mapping.values())
    for column in columns:
        if column in _known(id_column) and column not in targets and column not in sources:
            mapping[column] = column
    if id_column not in mapping:
        raise DataError(
            str(path),
            f"no '{id_column}' column; map it (e.g. {id_column}=<column>); "
            f"columns present: {', '.join(columns) or 'none'}",
        )
    exprs = _sources(mapping, columns, path)
    used = set(mapping.values())
    extra = [c for c in columns if c not in used and c not in exprs]
    selection = [e.alias(name) for name, e in exprs.items()]
    if keep_extra:
        selection += [pl.col(c) for c in extra]
    elif extra:
        notes.append(f"{path.name}: columns not imported: {', '.join(extra)}")
    df = _collect(lf.select(selection), path)
    name = path.name

    no_id = df.get_column(id_column).is_null()
    if no_id.any():
        notes.append(f"{name}: {int(no_id.sum()):,} rows without {id_column} dropped")
        df = df.filter(~no_id)
    unique = df.filter(pl.col(id_column).is_first_distinct())
    if unique.height < df.height:
        notes.append(
            f"{name}: {df.height - unique.height:,} rows repeat an earlier {id_column} (first kept)"
        )
        df = unique

    for column in df.columns:
        s = df.get_column(column)
        if column in ("price",):
            df = df.with_columns(_float(s, name, notes))
        elif column in ("created_at", "signup_at"):
            df = df.with_columns(_timestamp(s, None, path, notes))
        elif column in ("tags", "regions"):
            parts = s.str.split("|").list.eval(pl.element().str.strip_chars())
            df = df.with_columns(parts.list.eval(pl.element().filter(pl.element() != "")))
        elif column == "available":
            df = df.with_columns(_bool(s, name, notes))
        elif column not in _known(id_column):
            df = df.with_columns(_attribute(s))
    return df


def _known(id_column: str) -> tuple[str, ...]:
    return ITEM_FIELDS if id_column == "item_id" else USER_FIELDS


def _bool(s: pl.Series, file: str, notes: list[str]) -> pl.Series:
    low = s.str.strip_chars().str.to_lowercase()
    value = pl.select(
        pl.when(low.is_in(list(_TRUE)))
        .then(True)
        .when(low.is_in(list(_FALSE)))
        .then(False)
        .alias(s.name)
    ).to_series()
    bad = int((value.is_null() & low.is_not_null() & (low != "")).sum())
    if bad:
        notes.append(f"{file}: {bad:,} '{s.name}' values are not true/false → null")
    return value


def _attribute(s: pl.Series) -> pl.Series:
    """A free user attribute: integers or floats when every value is a number, else text."""
    text = s.str.strip_chars()
    for dtype in (pl.Int64, pl.Float64):
        cast = text.cast(dtype, strict=False)
        if cast.null_count() == text.null_count():
            return cast
    return s
