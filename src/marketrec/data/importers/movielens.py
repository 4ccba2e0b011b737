"""MovieLens importer: the ML-100K and ML-1M folders into the canonical dataset.

The two releases differ in separators (`\\t`/`|` versus `::`), in how genres are stored (19 flag
columns named by `u.genre` versus `A|B` text) and in user attributes (age in years and occupation
names versus age and occupation codes). The importer hides those differences so that every later
stage sees one schema. Files are decoded as latin-1 (both releases contain non-UTF-8 titles) and
split with Polars string expressions rather than a CSV reader, because `::` is not a single-byte
separator and titles contain quote characters that a CSV reader would interpret.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from marketrec.core.errors import DataError
from marketrec.data.schema import Dataset, make_dataset

#: ML-1M occupation codes, from the ML-1M README ("0: other or not specified" is kept as "other").
ML1M_OCCUPATIONS: tuple[str, ...] = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)

#: ML-100K genre order, used only when `u.genre` is absent (the flags in `u.item` follow it).
ML100K_GENRES: tuple[str, ...] = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_NO_GENRE = "(no genres listed)"


def import_movielens(src: str | Path) -> Dataset:
    """Import an ML-100K or ML-1M folder (or its ratings file); the layout is auto-detected.

    Events are star ratings (`event="rating"`, `value` = stars, `ts` from epoch seconds in UTC);
    items get title, genres as `tags`, the first genre as `category` and the release date as
    `created_at`; users get age, gender, occupation, zip and a census-style `region` from the zip.
    """
    root = _locate(Path(src))
    notes: list[str] = []
    if (root / "u.data").is_file():
        events, items, users = _read_100k(root, notes)
    else:
        events, items, users = _read_1m(root, notes)
    ds = make_dataset(events, items, users)
    return dataclasses.replace(ds, notes=(*notes, *ds.notes))


def zip_region(zip_code: pl.Expr) -> pl.Expr:
    """US ZIP code → census-style region by its first digit; non-numeric codes → "other".

    ZIP codes are assigned from the north-east (0) to the west (9), so the first digit is a
    cheap and stable proxy for the region. Canadian postal codes (`T8H1N`) and other
    non-numeric codes become "other"; a missing code stays null (unknown, not "other").
    """
    z = zip_code.str.strip_chars()
    first = z.str.slice(0, 1)
    numeric = z.str.contains(r"^[0-9]+(-[0-9]+)?$")
    region = (
        pl.when(first.is_in(["0", "1"]))
        .then(pl.lit("northeast"))
        .when(first.is_in(["2", "3", "7"]))
        .then(pl.lit("south"))
        .when(first.is_in(["4", "5", "6"]))
        .then(pl.lit("midwest"))
        .otherwise(pl.lit("west"))
    )
    return (
        pl.when(z.is_null() | (z == ""))
        .then(pl.lit(None, dtype=pl.String))
        .when(numeric)
        .then(region)
        .otherwise(pl.lit("other"))
    )


def _locate(src: Path) -> Path:
    """The folder holding the ratings file; accepts the folder, the file, or an unzip parent."""
    if not src.exists():
        raise DataError(str(src), "not found (expected a MovieLens ml-100k or ml-1m folder)")
    if src.is_file():
        if src.name in ("u.data", "ratings.dat"):
            return src.parent
        raise DataError(
            str(src), "not a MovieLens ratings file: pass the folder holding u.data or ratings.dat"
        )
    candidates = [src, *sorted(p for p in src.iterdir() if p.is_dir())]
    for folder in candidates:
        if (folder / "u.data").is_file() or (folder / "ratings.dat").is_file():
            return folder
    raise DataError(
        str(src),
        "no MovieLens ratings found: expected u.data (ML-100K) or ratings.dat (ML-1M); "
        "the CSV releases (ratings.csv) are imported with `import_csv`",
    )


def _split_file(path: Path, sep: str, names: list[str]) -> pl.DataFrame:
    """Read `path` as latin-1 lines split on `sep` into string columns named `names`.

    A line with the wrong number of fields is an error naming the first offending line number,
    since a shifted column would silently corrupt every value after it.
    """
    if not path.is_file():
        raise DataError(str(path), "required file is missing")
    text = path.read_bytes().decode("latin-1")  # latin-1 maps every byte: cannot fail
    # Split on "\n" only: str.splitlines() would also split on U+0085, a valid latin-1 byte.
    lines = pl.DataFrame({"line": text.split("\n")}).with_row_index("lineno", offset=1)
    lines = lines.with_columns(pl.col("line").str.strip_chars_end("\r")).filter(
        pl.col("line").str.strip_chars() != ""
    )
    parts = lines.get_column("line").str.split(sep)
    counts = parts.list.len()
    bad = counts != len(names)
    if bad.any():
        first = int(lines.filter(bad).get_column("lineno")[0])
        raise DataError(
            str(path),
            f"lines without the expected {len(names)} '{sep}'-separated fields "
            f"(first at line {first})",
            rows=int(bad.sum()),
        )
    return pl.DataFrame(
        {name: parts.list.get(i).str.strip_chars() for i, name in enumerate(names)}
    ).with_columns(lines.get_column("lineno"))


def _cast(df: pl.DataFrame, column: str, dtype: pl.DataType, file: Path) -> pl.Series:
    """Cast a string column, refusing values that are present but not numbers."""
    raw = df.get_column(column)
    raw = pl.Series(column, raw).replace("", None)
    cast = raw.cast(dtype, strict=False)
    bad = cast.is_null() & raw.is_not_null()
    if bad.any():
        first = int(df.filter(bad).get_column("lineno")[0])
        raise DataError(
            str(file),
            f"values that are not {dtype} numbers (first at line {first})",
            column=column,
            rows=int(bad.sum()),
        )
    return cast


def _epoch_seconds(s: pl.Series) -> pl.Series:
    return (
        pl.select(pl.from_epoch(s, time_unit="s").dt.replace_time_zone("UTC"))
        .to_series()
        .alias("ts")
    )


def _ratings(path: Path, sep: str) -> pl.DataFrame:
    df = _split_file(path, sep, ["user_id", "item_id", "rating", "ts"])
    return pl.DataFrame(
        {
            "user_id": df.get_column("user_id"),
            "item_id": df.get_column("item_id"),
            "ts": _epoch_seconds(_cast(df, "ts", pl.Int64(), path)),
            "event": pl.Series(["rating"] * df.height, dtype=pl.String),
            "value": _cast(df, "rating", pl.Float64(), path),
        }
    )


def _read_100k(
    root: Path, notes: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame | None]:
    events = _ratings(root / "u.data", "\t")
    items = None
    if (root / "u.item").is_file():
        items = _items_100k(root, notes)
    else:
        notes.append("u.item not found: no item titles or genres imported")
    users = None
    if (root / "u.user").is_file():
        path = root / "u.user"
        df = _split_file(path, "|", ["user_id", "age", "gender", "occupation", "zip"])
        users = df.select("user_id", "gender", "occupation", "zip").with_columns(
            age=_cast(df, "age", pl.Int64(), path),
            region=zip_region(pl.col("zip")),
        )
        _note_regions(users, "u.user", notes)
    else:
        notes.append("u.user not found: no user attributes imported")
    return events, items, users


def _genres_100k(root: Path, notes: list[str]) -> list[str]:
    """Genre names in flag order, from `u.genre` (`name|index`), or the documented default."""
    path = root / "u.genre"
    if not path.is_file():
        notes.append("u.genre not found: using the 19 genre names of the ML-100K README")
        return list(ML100K_GENRES)
    df = _split_file(path, "|", ["name", "index"])
    order = _cast(df, "index", pl.Int64(), path)
    return df.with_columns(order).sort("index").get_column("name").to_list()


def _items_100k(root: Path, notes: list[str]) -> pl.DataFrame:
    genres = _genres_100k(root, notes)
    path = root / "u.item"
    flags = [f"g{i}" for i in range(len(genres))]
    df = _split_file(path, "|", ["item_id", "title", "release", "video", "url", *flags])
    tags = pl.concat_list(
        [
            pl.when(pl.col(f) == "1").then(pl.lit(name))
            for f, name in zip(flags, genres, strict=True)
        ]
    ).list.drop_nulls()
    released = pl.col("release").str.strptime(pl.Date, "%d-%b-%Y", strict=False)
    items = df.select(
        "item_id",
        pl.col("title").replace("", None),
        pl.lit(None, dtype=pl.String).alias("description"),
        tags.alias("tags"),
        released.alias("created_at"),
        pl.col("release"),
    ).with_columns(category=pl.col("tags").list.first().fill_null("unknown"))
    missing = items.filter(pl.col("created_at").is_null())
    if missing.height:
        shown = ", ".join(missing.get_column("item_id").head(5).to_list())
        notes.append(
            f"u.item: {missing.height:,} items without a parsable release date → created_at null "
            f"(items {shown}{', …' if missing.height > 5 else ''})"
        )
    no_genre = items.filter(pl.col("tags").list.len() == 0).height
    if no_genre:
        notes.append(f"u.item: {no_genre:,} items have no genre flag → category 'unknown'")
    return items.drop("release")


def _read_1m(
    root: Path, notes: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame | None]:
    events = _ratings(root / "ratings.dat", "::")
    items = None
    if (root / "movies.dat").is_file():
        items = _items_1m(root / "movies.dat", notes)
    else:
        notes.append("movies.dat not found: no item titles or genres imported")
    users = None
    if (root / "users.dat").is_file():
        users = _users_1m(root / "users.dat", notes)
    else:
        notes.append("users.dat not found: no user attributes imported")
    return events, items, users


def _items_1m(path: Path, notes: list[str]) -> pl.DataFrame:
    df = _split_file(path, "::", ["item_id", "title", "genres"])
    tags = (
        pl.col("genres")
        .str.split("|")
        .list.eval(pl.element().filter((pl.element() != "") & (pl.element() != _NO_GENRE)))
    )
    year = pl.col("title").str.extract(r"\((\d{4})\)\s*$", 1)
    items = df.select(
        "item_id",
        pl.col("title").replace("", None),
        pl.lit(None, dtype=pl.String).alias("description"),
        tags.alias("tags"),
        pl.date(year.cast(pl.Int32, strict=False), 1, 1).alias("created_at"),
    ).with_columns(category=pl.col("tags").list.first().fill_null("unknown"))
    dated = items.get_column("created_at").is_not_null().sum()
    notes.append(
        f"movies.dat: created_at set to 1 January of the year in the title for {dated:,} of "
        f"{items.height:,} items (ML-1M has no release dates)"
    )
    no_genre = items.filter(pl.col("tags").list.len() == 0).height
    if no_genre:
        notes.append(f"movies.dat: {no_genre:,} items have no genre → category 'unknown'")
    return items


def _users_1m(path: Path, notes: list[str]) -> pl.DataFrame:
    df = _split_file(path, "::", ["user_id", "gender", "age", "occupation", "zip"])
    code = _cast(df, "occupation", pl.Int64(), path)
    occupation = code.replace_strict(
        dict(enumerate(ML1M_OCCUPATIONS)), default=None, return_dtype=pl.String
    )
    unknown = int((occupation.is_null() & code.is_not_null()).sum())
    if unknown:
        notes.append(f"users.dat: {unknown:,} occupation codes outside 0–20 → occupation null")
    users = df.select("user_id", "gender", "zip").with_columns(
        age=_cast(df, "age", pl.Int64(), path),
        occupation=occupation.alias("occupation"),
        region=zip_region(pl.col("zip")),
    )
    _note_regions(users, "users.dat", notes)
    return users


def _note_regions(users: pl.DataFrame, file: str, notes: list[str]) -> None:
    other = users.filter(pl.col("region") == "other").height
    missing = users.get_column("region").null_count()
    notes.append(
        f"{file}: region derived from the zip code's first digit for {users.height:,} users "
        f"({other:,} non-US or non-numeric codes → 'other', {missing:,} without a zip → null)"
    )
