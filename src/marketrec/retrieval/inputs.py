"""Integer-coded tower inputs for items and users, built once from the canonical tables.

Every categorical value becomes a code (0 = missing or unseen), every id a hashed bucket, so
an item listed after training or a user who never acted still maps to valid rows. The tables
are plain NumPy arrays saved with the model; the same code builds them offline and online.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from marketrec.data.schema import Dataset

log = logging.getLogger(__name__)

MAX_TAGS = 8
PRICE_BUCKETS = 16
AGE_BUCKETS = 16  # log2 of days, see `age_bucket`
TREND_BUCKETS = 20  # log2 of recent event counts, see `trend_bucket`
SHARE_WINDOWS_DAYS = (1.0, 7.0, 30.0)  # windows of an item's share of recent events
SHARE_BUCKETS = 48  # thirds of a natural log of that share, see `share_bucket`
#: Event types that get their own history embedding; anything else shares code 0.
EVENT_CODES = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4, "rating": 5, "search": 6}
DEVICE_CODES_MAX = 16
#: A categorical user column with more distinct values than both of these is an identifier.
MAX_ATTRIBUTE_VALUES = 100
MAX_ATTRIBUTE_SHARE = 0.1


def stable_bucket(ids: pl.Series, buckets: int, salt: str) -> np.ndarray:
    """crc32-hashed bucket per id: stable across processes and versions (unlike hash())."""
    values = ids.cast(pl.String).fill_null("").to_list()
    prefix = salt.encode()
    return (
        np.fromiter(
            (zlib.crc32(prefix + v.encode()) % buckets for v in values),
            dtype=np.int64,
            count=len(values),
        )
        + 1
    )  # 0 stays "no id"


def age_bucket(seconds: np.ndarray) -> np.ndarray:
    """Bucket an age in seconds on a log2 scale of days (code 0 = unknown/negative)."""
    days = np.asarray(seconds, dtype=np.float64) / 86_400.0
    known = np.isfinite(days) & (days >= 0)
    safe = np.where(known, days, 0.0)
    codes = np.floor(np.log2(safe + 1.0)).astype(np.int64) + 1
    return np.where(known, np.clip(codes, 1, AGE_BUCKETS - 1), 0)


def trend_bucket(counts: np.ndarray) -> np.ndarray:
    """Bucket recent event counts on a log2 scale (0 = no event)."""
    codes = np.floor(np.log2(np.asarray(counts, dtype=np.float64) + 1.0)).astype(np.int64)
    return np.clip(codes, 0, TREND_BUCKETS - 1)


def share_bucket(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Bucket an item's share of recent events, counts / totals, in steps of a third of a
    natural log (about ×1.4), smoothed so that no event is the lowest bucket, code 0."""
    codes = np.floor((_log_share(counts, totals) + SHARE_BUCKETS / 3.0) * 3.0).astype(np.int64)
    return np.clip(codes, 0, SHARE_BUCKETS - 1)


def share_level(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """An item's share of recent events as a number, log(share) / 8 + 1 (about -0.5 for no
    event among 10^5, 1 for every event), float32.

    The buckets of `share_bucket` let the towers learn any shape of response, but they blur
    the order among the top items, which often share a bucket; this linear input keeps the
    exact order, so a new user's list, where popularity decides, ranks items the way a
    time-decayed popularity ranking does."""
    return (_log_share(counts, totals) / 8.0 + 1.0).astype(np.float32)


def _log_share(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """log of counts / totals, smoothed so that no event stays finite."""
    return np.log((np.asarray(counts, dtype=np.float64) + 0.5) / (np.asarray(totals) + 1.0))


@dataclass(frozen=True)
class Vocab:
    """Sorted distinct values; code = position + 1 (0 = missing/unseen)."""

    values: tuple[str, ...]

    @classmethod
    def fit(cls, series: pl.Series) -> Vocab:
        return cls(tuple(series.cast(pl.String).drop_nulls().unique().sort().to_list()))

    def __len__(self) -> int:
        return len(self.values) + 1

    def encode(self, series: pl.Series) -> np.ndarray:
        table = pl.DataFrame(
            {"v": list(self.values), "code": np.arange(1, len(self.values) + 1)},
            schema={"v": pl.String, "code": pl.Int64},
        )
        frame = pl.DataFrame({"v": series.cast(pl.String)}).with_row_index("pos")
        joined = frame.join(table, on="v", how="left").sort("pos")
        return joined.get_column("code").fill_null(0).to_numpy().astype(np.int64)


@dataclass(frozen=True)
class ItemInputs:
    """Per catalogue item (vocabulary order): codes the item tower embeds."""

    id_bucket: np.ndarray  # (n,)
    category: np.ndarray  # (n,) full path
    top_category: np.ndarray  # (n,)
    brand: np.ndarray  # (n,)
    tags: np.ndarray  # (n, MAX_TAGS), 0 = padding
    price: np.ndarray  # (n,) price bucket, 0 = unknown
    listed_at: np.ndarray  # (n,) epoch seconds, NaN = unknown
    text: np.ndarray  # (n, text_dim) content vectors

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"item_{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ItemInputs:
        return cls(**{k: arrays[f"item_{k}"] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ItemVocabs:
    category: Vocab
    top_category: Vocab
    brand: Vocab
    tags: Vocab
    price_edges: tuple[float, ...]
    id_buckets: int

    def to_dict(self) -> dict:
        return {
            "category": self.category.values,
            "top_category": self.top_category.values,
            "brand": self.brand.values,
            "tags": self.tags.values,
            "price_edges": self.price_edges,
            "id_buckets": self.id_buckets,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ItemVocabs:
        return cls(
            Vocab(tuple(d["category"])),
            Vocab(tuple(d["top_category"])),
            Vocab(tuple(d["brand"])),
            Vocab(tuple(d["tags"])),
            tuple(d["price_edges"]),
            int(d["id_buckets"]),
        )


def _column(table: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Series:
    if name in table.columns:
        return table.get_column(name)
    return pl.Series(name, [None] * table.height, dtype=dtype)


def fit_item_vocabs(items: pl.DataFrame, id_buckets: int) -> ItemVocabs:
    category = _column(items, "category", pl.String)
    prices = _column(items, "price", pl.Float64).drop_nulls().to_numpy()
    edges = (
        tuple(np.unique(np.quantile(prices, np.linspace(0, 1, PRICE_BUCKETS)[1:-1])).tolist())
        if prices.size
        else ()
    )
    return ItemVocabs(
        category=Vocab.fit(category),
        top_category=Vocab.fit(category.str.split(" > ").list.first()),
        brand=Vocab.fit(_column(items, "brand", pl.String)),
        tags=Vocab.fit(_column(items, "tags", pl.List(pl.String)).explode()),
        price_edges=edges,
        id_buckets=id_buckets,
    )


def encode_items(
    ids: pl.Series, items: pl.DataFrame, vocabs: ItemVocabs, text: np.ndarray
) -> ItemInputs:
    """Codes for the items `ids` (in that order); items missing from `items` get zeros."""
    table = pl.DataFrame({"item_id": ids}).join(
        items, on="item_id", how="left", maintain_order="left"
    )
    category = _column(table, "category", pl.String)
    tags = _column(table, "tags", pl.List(pl.String))
    tag_frame = (
        pl.DataFrame({"tags": tags})
        .with_row_index("row")
        .explode("tags")
        .with_columns(pos=pl.int_range(pl.len()).over("row"))
        .filter(pl.col("pos") < MAX_TAGS)
    )
    tag_codes = np.zeros((len(ids), MAX_TAGS), dtype=np.int64)
    tag_codes[tag_frame.get_column("row").to_numpy(), tag_frame.get_column("pos").to_numpy()] = (
        vocabs.tags.encode(tag_frame.get_column("tags"))
    )
    price = _column(table, "price", pl.Float64).to_numpy()
    price_code = np.where(
        np.isnan(price), 0, np.searchsorted(np.asarray(vocabs.price_edges), price) + 1
    )
    created = _column(table, "created_at", pl.Datetime("us", "UTC"))
    listed = created.dt.epoch("s").cast(pl.Float64).fill_null(np.nan).to_numpy()
    return ItemInputs(
        id_bucket=stable_bucket(ids, vocabs.id_buckets, "item:"),
        category=vocabs.category.encode(category),
        top_category=vocabs.top_category.encode(category.str.split(" > ").list.first()),
        brand=vocabs.brand.encode(_column(table, "brand", pl.String)),
        tags=tag_codes,
        price=price_code.astype(np.int64),
        listed_at=listed,
        text=text.astype(np.float32),
    )


@dataclass(frozen=True)
class UserVocabs:
    region: Vocab
    attributes: dict[str, Vocab]  # categorical user columns
    numeric: dict[str, tuple[float, float]]  # numeric user column → (mean, std)
    device: Vocab
    id_buckets: int

    def to_dict(self) -> dict:
        return {
            "region": self.region.values,
            "attributes": {k: v.values for k, v in self.attributes.items()},
            "numeric": self.numeric,
            "device": self.device.values,
            "id_buckets": self.id_buckets,
        }

    @classmethod
    def from_dict(cls, d: dict) -> UserVocabs:
        return cls(
            Vocab(tuple(d["region"])),
            {k: Vocab(tuple(v)) for k, v in d["attributes"].items()},
            {k: (float(v[0]), float(v[1])) for k, v in d["numeric"].items()},
            Vocab(tuple(d["device"])),
            int(d["id_buckets"]),
        )


_NOT_ATTRIBUTES = {"user_id", "region", "signup_at"}


def fit_user_vocabs(data: Dataset, regions: tuple[str, ...], id_buckets: int) -> UserVocabs:
    users = data.users
    attributes, numeric = {}, {}
    for name, dtype in users.schema.items():
        if name in _NOT_ATTRIBUTES:
            continue
        column = users.get_column(name)
        if dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
            distinct = column.n_unique()
            if distinct > max(MAX_ATTRIBUTE_VALUES, MAX_ATTRIBUTE_SHARE * users.height):
                # nearly one value per user (a zip code, an email): an identifier, not an
                # attribute; its codes would be untrained noise for every new user
                log.info("user attribute %r skipped: %d distinct values", name, distinct)
                continue
            attributes[name] = Vocab.fit(column)
        elif dtype.is_numeric():
            values = column.cast(pl.Float64).drop_nulls()
            if values.len():
                numeric[name] = (float(values.mean()), float(values.std() or 1.0) or 1.0)
    device = _column(data.events, "device", pl.String)
    return UserVocabs(Vocab(regions), attributes, numeric, Vocab.fit(device), id_buckets)


@dataclass(frozen=True)
class UserInputs:
    """Per known user (vocabulary order): profile codes the user tower embeds."""

    id_bucket: np.ndarray  # (n,)
    region: np.ndarray  # (n,)
    attributes: np.ndarray  # (n, n_attr) codes
    numeric: np.ndarray  # (n, n_num) standardised, 0 where missing

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"user_{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> UserInputs:
        return cls(**{k: arrays[f"user_{k}"] for k in cls.__dataclass_fields__})


def encode_users(
    ids: pl.Series, data: Dataset, region_idx: np.ndarray, vocabs: UserVocabs
) -> UserInputs:
    """Profile codes for users `ids`; `region_idx` is each user's home region (-1 unknown)."""
    table = pl.DataFrame({"user_id": ids}).join(
        data.users, on="user_id", how="left", maintain_order="left"
    )
    attrs = np.zeros((len(ids), len(vocabs.attributes)), dtype=np.int64)
    for j, (name, vocab) in enumerate(vocabs.attributes.items()):
        attrs[:, j] = vocab.encode(_column(table, name, pl.String).cast(pl.String))
    nums = np.zeros((len(ids), len(vocabs.numeric)), dtype=np.float32)
    for j, (name, (mean, std)) in enumerate(vocabs.numeric.items()):
        values = _column(table, name, pl.Float64).cast(pl.Float64).to_numpy()
        nums[:, j] = np.nan_to_num((values - mean) / std)
    return UserInputs(
        id_bucket=stable_bucket(ids, vocabs.id_buckets, "user:"),
        region=np.where(region_idx >= 0, region_idx + 1, 0).astype(np.int64),
        attributes=attrs,
        numeric=nums,
    )
