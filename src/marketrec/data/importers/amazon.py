"""Amazon review dumps (McAuley et al., 2014 and 2018 releases) into the canonical dataset.

A dump is a reviews file (JSON Lines: `reviewerID`, `asin`, `overall`, `unixReviewTime`) and an
optional `meta_*` file describing the products. The metadata is messy upstream: fields change type
from row to row (`description` is a list or a string, `rank` a list or a string), titles are often
scraped HTML fragments, prices are CSS junk, asins repeat, and the 2014 metadata is Python literals
rather than JSON. Every field is therefore read as text with Polars (lists arrive as their JSON
text) and normalised column-wise; each cleaning step reports how many rows it touched.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import html
import io
import json
from pathlib import Path

import polars as pl

from marketrec.core.errors import DataError
from marketrec.data.schema import Dataset, make_dataset

_REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime", "reviewTime")
_META_FIELDS = ("asin", "title", "description", "brand", "category", "categories", "price")
_JSON_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")
# Scraped markup rather than a title: tags, attribute fragments, CSS rules.
_JUNK_TITLE = r"[<>{}]|=\"|^\s*[.#][\w-]"
_PRICE = r"^\$?\s*[0-9][0-9,]*(\.[0-9]+)?$"


def import_amazon(src: str | Path) -> Dataset:
    """Import an Amazon reviews dump: a folder, or the reviews file (its `meta_*` sibling is used).

    Events are ratings (`value` = `overall`, `ts` from `unixReviewTime`); exact duplicate review
    lines are removed. Items are every asin of the metadata and the reviews, so reviewed products
    without metadata keep a row with empty fields.
    """
    reviews_path, meta_path = _locate(Path(src))
    notes: list[str] = []
    events = _read_reviews(reviews_path, notes)
    reviewed = events.select(pl.col("item_id").unique(maintain_order=True))
    if meta_path is None:
        notes.append(f"no meta_*.json file next to {reviews_path.name}: items have no metadata")
        items = reviewed
    else:
        meta = _read_meta(meta_path, notes)
        without = reviewed.join(meta, on="item_id", how="anti")
        if without.height:
            notes.append(
                f"{meta_path.name}: {without.height:,} reviewed items have no metadata "
                "(kept with empty fields)"
            )
        items = pl.concat([meta, without], how="diagonal")
    ds = make_dataset(events, items, None)
    return dataclasses.replace(ds, notes=(*notes, *ds.notes))


def _locate(src: Path) -> tuple[Path, Path | None]:
    """Find the reviews file and, when present, the metadata file of the same category."""
    if not src.exists():
        raise DataError(str(src), "not found (expected an Amazon reviews file or its folder)")
    if src.is_file():
        if src.name.startswith("meta_"):
            raise DataError(str(src), "this is a metadata file: pass the reviews file or folder")
        return src, _find_meta(src.parent, _category(src.name))
    files = sorted(p for p in src.iterdir() if p.is_file() and p.name.endswith(_JSON_SUFFIXES))
    reviews = [p for p in files if not p.name.startswith("meta_")]
    if not reviews:
        raise DataError(str(src), "no reviews file (*.json, *.json.gz) found in this folder")
    if len(reviews) > 1:
        names = ", ".join(p.name for p in reviews)
        raise DataError(str(src), f"several candidate reviews files ({names}): pass one of them")
    return reviews[0], _find_meta(src, _category(reviews[0].name))


def _category(name: str) -> str:
    """`reviews_Toys_5.json.gz` / `Toys_5.json` / `Toys.json` → `Toys`."""
    for suffix in _JSON_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = name.removeprefix("reviews_")
    return name.removesuffix("_5")


def _find_meta(folder: Path, category: str) -> Path | None:
    metas = sorted(
        p
        for p in folder.iterdir()
        if p.name.startswith("meta_") and p.name.endswith(_JSON_SUFFIXES)
    )
    same = [p for p in metas if _category(p.name.removeprefix("meta_")) == category]
    if same:
        return same[0]
    if len(metas) == 1:
        return metas[0]
    if metas:
        names = ", ".join(p.name for p in metas)
        raise DataError(
            str(folder),
            f"several metadata files ({names}) and none named "
            f"meta_{category}.json: keep only the one that matches",
        )
    return None


def _read_lines(path: Path) -> pl.DataFrame:
    """Non-blank lines with their 1-based line numbers (gzip is detected by the file name)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(str(path), f"unreadable ({exc})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not UTF-8 text (byte offset {exc.start})") from exc
    return (
        pl.DataFrame({"line": text.split("\n")})
        .with_row_index("lineno", offset=1)
        .with_columns(pl.col("line").str.strip_chars())
        .filter(pl.col("line") != "")
    )


def _parse(
    lines: pl.DataFrame, fields: tuple[str, ...], path: Path, notes: list[str]
) -> pl.DataFrame:
    """Read `fields` of every JSON line as text (missing fields → null, lists → JSON text).

    Only when Polars refuses the input do we look at lines one by one, to name the first bad line
    and to accept the 2014 metadata's Python-literal lines (`{'asin': '…'}`), converted to JSON.
    """
    schema = dict.fromkeys(fields, pl.String())
    try:
        return _ndjson(lines.get_column("line"), schema)
    except pl.exceptions.PolarsError:
        pass
    fixed: list[str] = []
    literal = 0
    bad: list[int] = []
    for lineno, line in lines.select("lineno", "line").iter_rows():
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(lineno)
            fixed.append(line)
            continue
        except ValueError:
            pass
        try:
            value = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = None
        if isinstance(value, dict):
            literal += 1
            fixed.append(json.dumps(value))
        else:
            bad.append(lineno)
            fixed.append(line)
    if bad:
        raise DataError(
            str(path), f"lines that are not JSON objects (first at line {bad[0]})", rows=len(bad)
        )
    notes.append(
        f"{path.name}: {literal:,} lines are Python literals (2014 metadata format), read as such"
    )
    try:
        return _ndjson(pl.Series(fixed), schema)
    except pl.exceptions.PolarsError as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise DataError(str(path), f"unreadable JSON Lines ({reason})") from exc


def _ndjson(lines: pl.Series, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    data = "\n".join(lines.to_list()).encode("utf-8")
    if not data:
        return pl.DataFrame(schema=schema)
    return pl.read_ndjson(io.BytesIO(data), schema=schema)


def _read_reviews(path: Path, notes: list[str]) -> pl.DataFrame:
    lines = _read_lines(path)
    unique = lines.filter(pl.col("line").is_first_distinct())
    dropped = lines.height - unique.height
    if dropped:
        notes.append(
            f"{path.name}: {dropped:,} exact duplicate review lines removed "
            f"({unique.height:,} of {lines.height:,} kept)"
        )
    df = _parse(unique, _REVIEW_FIELDS, path, notes).with_columns(unique.get_column("lineno"))
    for column in ("reviewerID", "asin"):
        if df.height and df.get_column(column).null_count() == df.height:
            raise DataError(
                str(path),
                "field missing on every line: is this an Amazon reviews file?",
                column=column,
                rows=df.height,
            )
    overall = _number(df, "overall", path)
    epoch = _number(df, "unixReviewTime", path).cast(pl.Int64)
    from_epoch = pl.from_epoch(epoch, time_unit="s")
    from_text = pl.col("reviewTime").str.strptime(pl.Datetime("us"), "%m %d, %Y", strict=False)
    events = df.select(
        pl.col("reviewerID").alias("user_id"),
        pl.col("asin").alias("item_id"),
        pl.coalesce(from_epoch, from_text).dt.replace_time_zone("UTC").alias("ts"),
        pl.lit("rating").alias("event"),
        overall.alias("value"),
    )
    incomplete = events.select(
        pl.any_horizontal(pl.col("user_id", "item_id", "ts").is_null()).alias("x")
    ).get_column("x")
    if incomplete.any():
        notes.append(
            f"{path.name}: {int(incomplete.sum()):,} reviews without reviewerID, asin or a review "
            "time dropped"
        )
        events = events.filter(~incomplete)
    return events


def _number(df: pl.DataFrame, column: str, path: Path) -> pl.Series:
    """A numeric field read as text; present values that are not numbers are refused."""
    raw = df.get_column(column)
    value = raw.cast(pl.Float64, strict=False)
    bad = value.is_null() & raw.is_not_null()
    if bad.any():
        first = int(df.filter(bad).get_column("lineno")[0])
        raise DataError(
            str(path),
            f"values that are not numbers (first at line {first})",
            column=column,
            rows=int(bad.sum()),
        )
    return value


def _read_meta(path: Path, notes: list[str]) -> pl.DataFrame:
    lines = _read_lines(path)
    df = _parse(lines, _META_FIELDS, path, notes).with_columns(lines.get_column("line"))
    no_asin = df.get_column("asin").is_null() | (df.get_column("asin").str.strip_chars() == "")
    if no_asin.any():
        notes.append(f"{path.name}: {int(no_asin.sum()):,} metadata rows without asin dropped")
        df = df.filter(~no_asin)
    unique = df.filter(pl.col("asin").is_first_distinct())
    if unique.height < df.height:
        repeats = df.height - unique.height
        copies = df.height - df.get_column("line").n_unique()
        notes.append(
            f"{path.name}: {repeats:,} metadata rows repeat an earlier asin ({copies:,} of them "
            f"identical copies); the first row of each asin kept, {unique.height:,} unique asins"
        )
    df = unique

    title = _unescape(df.get_column("title").str.strip_chars().replace("", None))
    junk = title.str.contains(_JUNK_TITLE).fill_null(False)
    if junk.any():
        notes.append(f"{path.name}: {int(junk.sum()):,} titles are HTML/CSS fragments → null")
        title = pl.select(pl.when(junk).then(None).otherwise(title)).to_series()

    description = _text(df.get_column("description"), "\n")
    brand = _unescape(df.get_column("brand").str.strip_chars().replace("", None))
    category = _category_path(df.get_column("category"), df.get_column("categories"))
    price = _price(df.get_column("price"), path, notes)
    return pl.DataFrame(
        {
            "item_id": df.get_column("asin").str.strip_chars(),
            "title": title.alias("title"),
            "description": description.alias("description"),
            "brand": brand.alias("brand"),
            "category": category.alias("category"),
            "price": price.alias("price"),
        }
    )


def _json_lists(s: pl.Series, inner: pl.DataType) -> pl.Series:
    """Decode the JSON-list texts of `s` (other rows → null).

    A plain string that merely looks like a list makes the vectorised decode fail; only then is
    the column decoded value by value, treating undecodable texts as plain strings.
    """
    looks = s.str.starts_with("[") & s.str.ends_with("]")
    candidates = pl.select(pl.when(looks).then(s)).to_series()
    try:
        return candidates.str.json_decode(pl.List(inner))
    except pl.exceptions.PolarsError:
        return candidates.map_elements(_safe_list, return_dtype=pl.List(inner), skip_nulls=True)


def _safe_list(text: str) -> list[object] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _text(s: pl.Series, sep: str) -> pl.Series:
    """A field that is either a string or a list of strings → one text (empty → null)."""
    as_list = _json_lists(s, pl.String())
    joined = as_list.list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
    joined = joined.list.join(sep)
    plain = pl.select(pl.when(as_list.is_null()).then(s)).to_series()
    text = pl.select(pl.coalesce(joined, plain).str.strip_chars()).to_series()
    return _unescape(text.replace("", None))


def _category_path(category: pl.Series, categories: pl.Series) -> pl.Series:
    """2018 `category` (levels) or 2014 `categories` (paths: the first one) → `A > B`."""
    levels = _json_lists(category, pl.String())
    paths = _json_lists(categories, pl.List(pl.String()))
    first_path = paths.list.first()
    chosen = pl.select(pl.coalesce(levels, first_path)).to_series()
    joined = chosen.list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
    plain = pl.select(pl.when(levels.is_null()).then(category)).to_series()
    text = pl.select(pl.coalesce(joined.list.join(" > "), plain)).to_series()
    return _unescape(text.replace("", None))


def _unescape(s: pl.Series) -> pl.Series:
    """Decode HTML entities (`&amp;` → `&`), once per distinct string that contains one."""
    has_entity = s.str.contains(r"&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);").fill_null(False)
    if not has_entity.any():
        return s
    distinct = s.filter(has_entity).unique().to_list()
    mapping = {text: html.unescape(text) for text in distinct}
    return s.replace(mapping)


def _price(s: pl.Series, path: Path, notes: list[str]) -> pl.Series:
    """`$12.99` / `12.99` / `1,299.00` → float; ranges, CSS and other junk → null (counted)."""
    text = s.str.strip_chars().replace("", None)
    ok = text.str.contains(_PRICE).fill_null(False)
    value = text.str.replace_all(r"[$,\s]", "").cast(pl.Float64, strict=False)
    value = pl.select(pl.when(ok).then(value)).to_series()
    junk = int((text.is_not_null() & ~ok).sum())
    if junk:
        notes.append(f"{path.name}: {junk:,} prices are not a single amount (e.g. CSS) → null")
    return value
