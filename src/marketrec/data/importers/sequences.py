"""Item-sequence files (the S3-Rec / ICLRec format) into the canonical dataset.

The format is what sequential-recommendation papers publish for the Amazon 5-core sets
(`Toys_and_Games.txt`, `Beauty.txt`, …): one line per user, the user id followed by the ids of
the items the user interacted with, in time order, separated by white space. There are no
timestamps and no ratings: every interaction is an implicit positive. An optional
`<name>_item2attributes.json` maps each item id to a list of anonymised attribute ids (brand and
categories mixed together).

Since the canonical dataset needs a time for every event, `ts` is synthetic: a fixed base instant
plus the item's position in the user's sequence, in seconds. That keeps each user's order (what
the leave-one-out protocol P3 needs) but carries no information across users, so a global
temporal cut (P1g) of such a dataset is meaningless; the notes say so.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from marketrec.core.errors import DataError
from marketrec.data.schema import Dataset, make_dataset

#: The synthetic time of each user's first interaction; the n-th (0-based) is n seconds later.
SEQUENCE_BASE_TIME = datetime(2000, 1, 1, tzinfo=UTC)

_ATTRIBUTES_SUFFIX = "_item2attributes.json"


def import_sequences(src: str | Path) -> Dataset:
    """Import an item-sequence file: the `.txt` file or the folder holding it.

    Events: `event="purchase"`, `value` null, `ts` = `SEQUENCE_BASE_TIME` + position seconds.
    Items: every item of the sequences and of the attributes file, with `tags` = attribute ids
    as strings (`"a12"`); `brand` and `category` stay null because the attributes are anonymised.
    The attributes file (`<stem>_item2attributes.json` beside the `.txt`) is optional.
    """
    sequences, attributes = _locate(Path(src))
    notes: list[str] = []
    events = _read_sequences(sequences, notes)
    items = _items(events, attributes, notes)
    notes.append(
        f"{sequences.name}: the format has no timestamps: ts = "
        f"{SEQUENCE_BASE_TIME:%Y-%m-%dT%H:%M:%SZ} + the item's position in the user's sequence "
        "(seconds), so only each user's order is meaningful (use a per-user or leave-one-out "
        "split, not a global time cut)"
    )
    notes.append(
        f"{sequences.name}: no ratings: each of the {events.height:,} interactions is an "
        "implicit positive (event 'purchase', value null)"
    )
    ds = make_dataset(events, items)
    return dataclasses.replace(ds, notes=(*notes, *ds.notes))


def _locate(src: Path) -> tuple[Path, Path | None]:
    """The sequence file and its attributes file (None when absent)."""
    if not src.exists():
        raise DataError(str(src), "not found (expected an item-sequence .txt file or its folder)")
    if src.is_file():
        if src.name.endswith(_ATTRIBUTES_SUFFIX):
            raise DataError(
                str(src), "this is the attributes file: pass the sequence .txt file or its folder"
            )
        sequences = src
    else:
        candidates = sorted(p for p in src.glob("*.txt") if p.is_file())
        if not candidates:
            raise DataError(str(src), "no item-sequence file (*.txt) in this folder")
        if len(candidates) > 1:
            # Prefer the one with an attributes file beside it, when that settles it.
            paired = [p for p in candidates if _attributes_for(p) is not None]
            if len(paired) != 1:
                names = ", ".join(p.name for p in candidates)
                raise DataError(
                    str(src), f"several .txt files ({names}): pass the sequence file itself"
                )
            candidates = paired
        sequences = candidates[0]
    return sequences, _attributes_for(sequences)


def _attributes_for(sequences: Path) -> Path | None:
    path = sequences.with_name(sequences.stem + _ATTRIBUTES_SUFFIX)
    return path if path.is_file() else None


def _read_sequences(path: Path, notes: list[str]) -> pl.DataFrame:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(str(path), f"cannot be read ({exc.strerror or exc})") from exc
    lines = (
        pl.DataFrame({"line": text.split("\n")})
        .with_row_index("lineno", offset=1)
        .with_columns(tokens=pl.col("line").str.extract_all(r"\S+"))
        .filter(pl.col("tokens").list.len() > 0)
    )
    if lines.height == 0:
        raise DataError(str(path), "no sequences (the file is empty)")
    tokens = (
        lines.select("lineno", "tokens")
        .with_columns(pos=pl.int_ranges(0, pl.col("tokens").list.len()))
        .explode("tokens", "pos")
    )
    bad = tokens.filter(~pl.col("tokens").str.contains(r"^[0-9]+$"))
    if bad.height:
        first = bad.row(0, named=True)
        raise DataError(
            str(path),
            f"tokens that are not integer ids (first '{first['tokens'][:40]}' at line "
            f"{first['lineno']})",
            rows=bad.get_column("lineno").n_unique(),
        )
    users = lines.select(
        "lineno", pl.col("tokens").list.first().alias("user_id"), pl.col("tokens").list.len()
    )
    repeated = users.filter(pl.col("user_id").is_duplicated())
    if repeated.height:
        first = repeated.row(0, named=True)
        raise DataError(
            str(path),
            f"user ids on more than one line (first '{first['user_id']}' at line "
            f"{first['lineno']}): each user must have one sequence",
            rows=repeated.height,
        )
    empty = users.filter(pl.col("tokens") == 1)
    if empty.height:
        notes.append(
            f"{path.name}: {empty.height:,} users without any item (first at line "
            f"{int(empty.get_column('lineno')[0])}) → no events"
        )
    events = (
        tokens.join(users.select("lineno", "user_id"), on="lineno")
        .filter(pl.col("pos") > 0)
        .sort("lineno", "pos")
        .select(
            "user_id",
            pl.col("tokens").alias("item_id"),
            (
                pl.lit(SEQUENCE_BASE_TIME, dtype=pl.Datetime("us", "UTC"))
                + pl.duration(seconds=pl.col("pos") - 1)
            ).alias("ts"),
            pl.lit("purchase").alias("event"),
            pl.lit(None, dtype=pl.Float64).alias("value"),
        )
    )
    repeats = events.height - events.select("user_id", "item_id").unique().height
    if repeats:
        notes.append(
            f"{path.name}: {repeats:,} interactions repeat an item already in the user's "
            "sequence (kept)"
        )
    return events


def _items(events: pl.DataFrame, attributes: Path | None, notes: list[str]) -> pl.DataFrame:
    seen = events.select("item_id").unique()
    if attributes is None:
        notes.append("no *_item2attributes.json beside the sequence file: items have no tags")
        return seen.with_columns(
            pl.lit(None, dtype=pl.String).alias("brand"),
            pl.lit(None, dtype=pl.String).alias("category"),
            pl.lit(None, dtype=pl.List(pl.String)).alias("tags"),
        ).sort("item_id")
    table = _read_attributes(attributes)
    items = (
        seen.join(table, on="item_id", how="full", coalesce=True)
        .with_columns(
            pl.lit(None, dtype=pl.String).alias("brand"),
            pl.lit(None, dtype=pl.String).alias("category"),
        )
        .select("item_id", "brand", "category", "tags")
        .sort("item_id")
    )
    without = seen.join(table, on="item_id", how="anti").height
    unused = table.join(seen, on="item_id", how="anti").height
    notes.append(
        f"{attributes.name}: attribute ids of {table.height:,} items → tags 'a<id>' (brand and "
        "categories are anonymised, so brand and category stay null)"
    )
    if without:
        notes.append(f"{attributes.name}: {without:,} items of the sequences have no attributes")
    if unused:
        notes.append(
            f"{attributes.name}: {unused:,} items have attributes but no interaction "
            "(kept in the catalogue)"
        )
    return items


def _read_attributes(path: Path) -> pl.DataFrame:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            str(path), f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(raw, dict):
        raise DataError(str(path), "expected a JSON object mapping item id → list of attributes")
    ids: list[str] = []
    tags: list[list[str]] = []
    bad: list[str] = []
    for item, values in raw.items():
        if not str(item).isdigit() or not isinstance(values, list):
            bad.append(str(item))
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            bad.append(str(item))
            continue
        ids.append(str(item))
        tags.append([f"a{v}" for v in values])
    if bad:
        raise DataError(
            str(path),
            f"entries that are not integer item id → list of integer attribute ids "
            f"(first item '{bad[0][:40]}')",
            rows=len(bad),
        )
    return pl.DataFrame(
        {"item_id": ids, "tags": tags},
        schema={"item_id": pl.String, "tags": pl.List(pl.String)},
    )
