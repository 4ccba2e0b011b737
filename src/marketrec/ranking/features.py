"""Point-in-time features of (user, candidate item, moment) rows for the ranking stage.

Every feature reads only events strictly before the row's moment, so training rows built for
a past window see what serving would have seen then (the test in tests/ranking checks it).

- user: events before (log count, in the last week), days since the last event and the last
  purchase, average order value, average rating given, region, profile attributes;
- item: events in the last hour, day, week, month and ever (point-in-time counts), its share
  of the day's and week's events, price, brand, category, days since listing, whether it is
  sellable in the user's region;
- context: device, hour, weekday, region;
- cross: the retrieval score (standardised within the user's candidate list) and rank, the
  user's affinity for the candidate's category, top category and brand (share of their last
  `AFFINITY_EVENTS` events), the candidate's price relative to the user's usual price, how
  similar the candidate is to the user's last `COOC_ANCHORS` and `RECENT_ITEMS` events' items
  by co-occurrence in users' histories (`Cooccurrence`: sum and maximum), and the user's last
  `RECENT_ITEMS` items for the model's target attention.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

import numpy as np
import polars as pl
from scipy import sparse

from marketrec.data.schema import Dataset
from marketrec.features.activity import ActivityCounter, key_of, time_key
from marketrec.features.listing import listing_times
from marketrec.ranking.companion import Companion

AFFINITY_EVENTS = 50
RECENT_ITEMS = 10
ITEM_WINDOWS_S = (3_600.0, 86_400.0, 7 * 86_400.0, 30 * 86_400.0, None)
EVENT_CODES = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4, "rating": 5}
NUMERIC = (
    "user_events_log",
    "user_events_week_log",
    "user_days_since_last",
    "user_days_since_purchase",
    "user_never_bought",
    "user_order_value_log",
    "user_rating_mean",
    "item_hour_log",
    "item_day_log",
    "item_week_log",
    "item_month_log",
    "item_ever_log",
    "item_day_share_log",
    "item_week_share_log",
    "item_age_days_log",
    "item_price_log",
    "item_sellable",
    "retrieval_z",
    "retrieval_rank_log",
    "retrieved",
    "affinity_category",
    "affinity_top_category",
    "affinity_brand",
    "price_vs_usual_log",
    "cooc_sum_log",
    "cooc_max",
    "cooc_recent_sum_log",
    "companion_z",
    "companion_rank_log",
)
CATEGORICAL = (
    "item_bucket",
    "category",
    "top_category",
    "brand",
    "region",
    "device",
    "hour",
    "weekday",
)
ITEM_BUCKETS = 1 << 16
#: co-occurrence (see `Cooccurrence`): how many distinct neighbouring items of a user's history
#: pair with each, the shrinkage of the cosine, and how many of the user's latest events the
#: candidate is compared with
COOC_WINDOW = 50
COOC_SHRINK = 10.0
COOC_ANCHORS = 20


def value_codes(values: pl.Series) -> tuple[np.ndarray, int]:
    """Strings → codes in sorted order of the values (0 = missing), and the table size."""
    vocab = values.drop_nulls().unique().sort()
    lookup = pl.DataFrame({"v": vocab, "code": np.arange(1, vocab.len() + 1)})
    coded = pl.DataFrame({"v": values}).join(lookup, on="v", how="left", maintain_order="left")
    return coded.get_column("code").fill_null(0).to_numpy().astype(np.int64), vocab.len() + 1


def _column(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Series:
    if name in frame.columns:
        return frame.get_column(name).cast(dtype)
    return pl.Series(name, [None] * frame.height, dtype=dtype)


@dataclass(frozen=True)
class RankingState:
    """What the features read: the event log by user, item counters and item/user tables, all
    aligned with the retrieval model's user rows and item columns."""

    user_codes: np.ndarray  # sorted (user, second) codes of item events
    ev_item: np.ndarray
    ev_ts: np.ndarray
    ev_last_purchase: np.ndarray  # per event: index of the user's latest purchase so far, -1
    spend_cum: np.ndarray  # prefix sums over events (len + 1)
    purchases_cum: np.ndarray
    rating_sum_cum: np.ndarray
    ratings_cum: np.ndarray
    item_counter: ActivityCounter
    item_category: np.ndarray
    item_top_category: np.ndarray
    item_brand: np.ndarray
    item_price: np.ndarray  # NaN = unknown
    item_listed: np.ndarray  # epoch s, NaN = unknown
    item_bucket: np.ndarray
    user_region: np.ndarray  # code, 0 = unknown
    cardinality: dict[str, int]
    #: item-to-item co-occurrence, built once from the state's events (live events do not
    #: change it until the next retrain or fine-tune)
    cooccurrence: Cooccurrence | None = None
    #: a second model's item-to-item weights (see `Companion`), None = no companion
    companion: Companion | None = None

    @classmethod
    def build(
        cls,
        data: Dataset,
        user_ids: pl.Series,
        item_ids: pl.Series,
        region_names: tuple[str, ...],
        companion: Companion | None = None,
    ) -> RankingState:
        users = pl.DataFrame({"user_id": user_ids}).with_row_index("u")
        items = pl.DataFrame({"item_id": item_ids}).with_row_index("i")
        ev = (
            data.events.filter(pl.col("item_id").is_not_null() & (pl.col("event") != "search"))
            .join(users, on="user_id")
            .join(items, on="item_id")
            .with_columns(
                t=pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6,
                v=pl.col("value") if "value" in data.events.columns else pl.lit(0.0),
            )
            .sort("u", "t")
        )
        u = ev.get_column("u").to_numpy().astype(np.int64)
        t = ev.get_column("t").to_numpy()
        event = ev.get_column("event").to_numpy()
        value = ev.get_column("v").cast(pl.Float64).fill_null(0.0).to_numpy()
        purchase = event == "purchase"
        rating = event == "rating"
        last = _last_purchase(u, purchase)
        catalogue = pl.DataFrame({"item_id": item_ids}).join(
            data.items, on="item_id", how="left", maintain_order="left"
        )
        category = _column(catalogue, "category", pl.String)
        category_codes, n_categories = value_codes(category)
        top_codes, n_top = value_codes(category.str.split(" > ").list.first())
        brand_codes, n_brands = value_codes(_column(catalogue, "brand", pl.String))
        profile = users.join(data.users, on="user_id", how="left", maintain_order="left")
        region_lookup = {name: j + 1 for j, name in enumerate(region_names)}
        region = np.array(
            [region_lookup.get(r, 0) for r in _column(profile, "region", pl.String).to_list()],
            dtype=np.int64,
        )
        ev_item = ev.get_column("i").to_numpy().astype(np.int64)
        return cls(
            user_codes=time_key(u, t),
            ev_item=ev_item,
            ev_ts=t,
            ev_last_purchase=last.astype(np.int64),
            spend_cum=np.r_[0.0, np.cumsum(np.where(purchase, value, 0.0))],
            purchases_cum=np.r_[0, np.cumsum(purchase)],
            rating_sum_cum=np.r_[0.0, np.cumsum(np.where(rating, value, 0.0))],
            ratings_cum=np.r_[0, np.cumsum(rating)],
            item_counter=ActivityCounter.build(ev_item, t),
            item_category=category_codes,
            item_top_category=top_codes,
            item_brand=brand_codes,
            item_price=_column(catalogue, "price", pl.Float64).fill_null(np.nan).to_numpy(),
            item_listed=listing_times(data, item_ids),
            item_bucket=np.array(
                [zlib.crc32(s.encode()) % (ITEM_BUCKETS - 1) + 1 for s in item_ids.to_list()],
                dtype=np.int64,
            ),
            user_region=region,
            cardinality={
                "item_bucket": ITEM_BUCKETS,
                "category": n_categories,
                "top_category": n_top,
                "brand": n_brands,
                "region": len(region_names) + 1,
                "device": 17,
                "hour": 25,
                "weekday": 8,
            },
            cooccurrence=Cooccurrence.build(u, ev_item, t),
            companion=companion,
        )

    def absorb(
        self,
        user_rows: np.ndarray,
        item_columns: np.ndarray,
        ts: np.ndarray,
        event: np.ndarray,
        value: np.ndarray,
        n_users: int,
    ) -> RankingState:
        """This state with live item events added (user rows, item columns, epoch seconds,
        event names, values; searches already left out) and `n_users` user rows: the user
        counters, affinities and item trends the next request reads include them.

        One copy of the event arrays per call (events are inserted in (user, time) order and
        the running sums rebuilt), so a live service applies events in batches."""
        if len(user_rows) == 0:
            return self.with_users(n_users)
        codes = time_key(user_rows, ts)
        order = np.argsort(codes, kind="stable")
        codes, item, ts = codes[order], item_columns[order], ts[order]
        event, value = event[order], value[order].astype(np.float64)
        where = np.searchsorted(self.user_codes, codes, "right")
        purchase = np.insert(np.diff(self.purchases_cum), where, event == "purchase")
        rating = np.insert(np.diff(self.ratings_cum), where, event == "rating")
        spend = np.insert(np.diff(self.spend_cum), where, np.where(event == "purchase", value, 0))
        stars = np.insert(
            np.diff(self.rating_sum_cum), where, np.where(event == "rating", value, 0)
        )
        user_codes = np.insert(self.user_codes, where, codes)
        users = key_of(user_codes)
        return dataclasses.replace(
            self,
            user_codes=user_codes,
            ev_item=np.insert(self.ev_item, where, item.astype(np.int64)),
            ev_ts=np.insert(self.ev_ts, where, ts),
            ev_last_purchase=_last_purchase(users, purchase.astype(bool)).astype(np.int64),
            spend_cum=np.r_[0.0, np.cumsum(spend)],
            purchases_cum=np.r_[0, np.cumsum(purchase.astype(np.int64))],
            rating_sum_cum=np.r_[0.0, np.cumsum(stars)],
            ratings_cum=np.r_[0, np.cumsum(rating.astype(np.int64))],
            item_counter=self.item_counter.with_events(item, ts),
        ).with_users(n_users)

    def with_users(self, n_users: int) -> RankingState:
        """This state over `n_users` user rows (rows first seen live: no region, no events)."""
        extra = n_users - len(self.user_region)
        if extra <= 0:
            return self
        region = np.r_[self.user_region, np.zeros(extra, dtype=np.int64)]
        return dataclasses.replace(self, user_region=region)

    def with_items(self, items: pl.DataFrame, listed_at: np.ndarray) -> RankingState:
        """This state with products listed live (canonical items rows, in the order of their
        new columns; `listed_at` epoch seconds). Their price and age are read; category and
        brand codes are those of training, 0 for a value training never saw."""
        if items.height == 0:
            return self
        ids = items.get_column("item_id").to_list()
        return dataclasses.replace(
            self,
            item_category=np.r_[self.item_category, np.zeros(len(ids), np.int64)],
            item_top_category=np.r_[self.item_top_category, np.zeros(len(ids), np.int64)],
            item_brand=np.r_[self.item_brand, np.zeros(len(ids), np.int64)],
            item_price=np.r_[
                self.item_price, _column(items, "price", pl.Float64).fill_null(np.nan).to_numpy()
            ],
            item_listed=np.r_[self.item_listed, listed_at],
            item_bucket=np.r_[
                self.item_bucket,
                [zlib.crc32(s.encode()) % (ITEM_BUCKETS - 1) + 1 for s in ids],
            ].astype(np.int64),
        )

    def with_user_regions(self, user_rows: np.ndarray, region_idx: np.ndarray) -> RankingState:
        """Home regions (model region indices, -1 = unknown) of existing user rows."""
        region = self.user_region.copy()
        region[user_rows] = np.where(region_idx >= 0, region_idx + 1, 0)
        return dataclasses.replace(self, user_region=region)


@dataclass(frozen=True)
class Cooccurrence:
    """Point-in-time item-to-item similarity from co-occurrence in user histories.

    Items a and b co-occur for a user when each is among the other's `COOC_WINDOW` nearest
    distinct items in the user's history (in order of first touch); the pair becomes known
    at the later of the two first touches. Similarity at moment t: the users with the pair
    known before t over sqrt(users of a × users of b before t) + `COOC_SHRINK` (a cosine
    shrunk towards 0 for rare items). Everything counts strictly before t, like the other
    features; the final values (every event known) are kept too, for serving, where the
    moment is after every event the state was built from.

    The signal item-kNN ranks by (on Amazon Toys it beats every embedding model at the top
    of the list): as ranker features it tells the ranker how close a candidate is to what
    the user touched, which retrieval scores only blur."""

    pairs: np.ndarray  # sorted unique keys a << 32 | b (both orders)
    pair_counter: ActivityCounter  # (pair index, second the pair became known)
    item_counter: ActivityCounter  # (item, second of a user's first touch)
    final: np.ndarray  # similarity of each pair once every event is known
    horizon: float  # the last (whole) second any pair or first touch became known

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "pairs": self.pairs,
            "pair_codes": self.pair_counter.codes,
            "item_codes": self.item_counter.codes,
            "final": self.final,
            "horizon": np.array(self.horizon),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Cooccurrence:
        return cls(
            a["pairs"],
            ActivityCounter(a["pair_codes"], np.zeros(0)),
            ActivityCounter(a["item_codes"], np.zeros(0)),
            a["final"],
            float(a["horizon"]),
        )

    @classmethod
    def build(
        cls, users: np.ndarray, items: np.ndarray, ts: np.ndarray, window: int = COOC_WINDOW
    ) -> Cooccurrence:
        """From events sorted by user, then time; `window`: see the class."""
        empty = np.zeros(0, np.int64)
        if len(users) == 0:
            counter = _counts_only(empty, np.zeros(0))
            return cls(empty, counter, counter, np.zeros(0, np.float32), -np.inf)
        # each user's distinct items at their first touch, in order
        pair_code = users.astype(np.int64) * (int(items.max()) + 1) + items
        _, first = np.unique(pair_code, return_index=True)
        first = np.sort(first)
        u, i, t = users[first], items[first].astype(np.int64), ts[first]
        starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
        position = np.arange(len(u)) - np.repeat(starts, np.diff(np.r_[starts, len(u)]))
        later, earlier = [], []
        for back in range(1, window + 1):
            ok = np.flatnonzero(position >= back)
            if not len(ok):
                break
            later.append(ok)
            earlier.append(ok - back)
        later_at = np.concatenate(later) if later else empty
        earlier_at = np.concatenate(earlier) if earlier else empty
        a = np.r_[i[later_at], i[earlier_at]]
        b = np.r_[i[earlier_at], i[later_at]]
        known = np.r_[t[later_at], t[later_at]]
        keys = (a << 32) | b
        pairs, pair_index = np.unique(keys, return_inverse=True)
        pair_counter = _counts_only(pair_index, known)
        item_counter = _counts_only(i, t)
        together = np.bincount(pair_index, minlength=len(pairs)).astype(np.float64)
        users_of = np.bincount(i, minlength=int(i.max()) + 1).astype(np.float64)
        final = together / (
            np.sqrt(users_of[pairs >> 32] * users_of[pairs & 0xFFFFFFFF]) + COOC_SHRINK
        )
        horizon = float(np.floor(np.nanmax(t))) if len(t) else -np.inf
        return cls(pairs, pair_counter, item_counter, final.astype(np.float32), horizon)

    @cached_property
    def _final_matrix(self) -> sparse.csr_matrix:
        """The final similarities as an (items × items) CSR matrix: a serving request's
        (anchor, candidate) lookups then search only their anchors' short rows (a binary
        search of every pair key among millions missed the cache: ~5 ms per request)."""
        n = int(max(self.pairs.max() >> 32, self.pairs.max() & 0xFFFFFFFF)) + 1
        matrix = sparse.csr_matrix(
            (self.final, (self.pairs >> 32, self.pairs & 0xFFFFFFFF)), shape=(n, n)
        )
        matrix.sort_indices()
        return matrix

    def similarity(self, anchors: np.ndarray, items: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Similarity of each row's item (`items` (R,)) to each of its `anchors` ((R, L)
        item columns, -1 = none) as of the row's moment `at` (R,): 0 for pairs that never
        co-occurred before it."""
        out = np.zeros(anchors.shape, dtype=np.float32)
        if len(self.pairs) == 0 or anchors.size == 0:
            return out
        # after the second of the last event everything is known: the final values (the
        # counters count whole seconds strictly before the moment's)
        late = np.floor(at) > self.horizon
        valid = anchors >= 0
        row, col = np.nonzero(valid & late[:, None])
        if len(row):
            matrix = self._final_matrix
            a, b = anchors[row, col], items[row]
            known = (a < matrix.shape[0]) & (b < matrix.shape[0])  # items listed since: none
            out[row[known], col[known]] = np.asarray(matrix[a[known], b[known]]).ravel()
        row, col = np.nonzero(valid & ~late[:, None])
        if len(row):
            keys = (anchors[row, col].astype(np.int64) << 32) | items[row].astype(np.int64)
            where = np.minimum(np.searchsorted(self.pairs, keys), len(self.pairs) - 1)
            found = self.pairs[where] == keys
            r, c, k, m = row[found], col[found], where[found], at[row[found]]
            together = self.pair_counter.count(k, m).astype(np.float64)
            a, b = self.pairs[k] >> 32, self.pairs[k] & 0xFFFFFFFF
            spread = np.sqrt(
                self.item_counter.count(a, m).astype(np.float64)
                * self.item_counter.count(b, m).astype(np.float64)
            )
            out[r, c] = together / (spread + COOC_SHRINK)
        return out


def _counts_only(keys: np.ndarray, ts: np.ndarray) -> ActivityCounter:
    """A counter for `ActivityCounter.count` alone: without the sorted copy of every time
    that only `total` reads (co-occurrence counts per pair and item, never totals; at
    ml-100k the pairs' times were tens of megabytes in memory and in the model folder)."""
    return ActivityCounter(np.sort(time_key(keys, ts)), np.zeros(0))


def _last_purchase(users: np.ndarray, purchase: np.ndarray) -> np.ndarray:
    """Per event (sorted by user): position of the user's latest purchase so far, -1 none."""
    idx = np.arange(len(users))
    if not len(users):
        return idx
    marks = np.where(purchase, idx, -1)
    # latest purchase so far within each user's run: running max, reset at run starts
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    last = np.maximum.accumulate(np.where(marks >= run_start, marks, -1))
    return np.where(last >= run_start, last, -1)


@dataclass(frozen=True)
class Rows:
    """The candidate rows to featurise (one entry per row)."""

    user: np.ndarray  # user row, -1 = unknown user
    item: np.ndarray  # item column
    at: np.ndarray  # moment, epoch seconds
    region: np.ndarray  # region code (0 = unknown)
    device: np.ndarray  # device code (0 = unknown)
    retrieval_score: np.ndarray  # NaN = not retrieved
    retrieval_rank: np.ndarray  # 1-based; 0 = not retrieved
    sellable: np.ndarray  # bool
    group: np.ndarray  # list id: rows of one request share it


@dataclass(frozen=True)
class Features:
    numeric: np.ndarray  # (B, len(NUMERIC)) float32
    categorical: np.ndarray  # (B, len(CATEGORICAL)) int64
    recent: np.ndarray  # (B, RECENT_ITEMS) item buckets, 0 = none
    recent_category: np.ndarray  # (B, RECENT_ITEMS)

    def take(self, rows: np.ndarray) -> Features:
        return Features(
            self.numeric[rows],
            self.categorical[rows],
            self.recent[rows],
            self.recent_category[rows],
        )


#: The item's point-in-time activity (counts and shares over windows before the moment).
ITEM_TREND = (
    "item_hour_log",
    "item_day_log",
    "item_week_log",
    "item_month_log",
    "item_ever_log",
    "item_day_share_log",
    "item_week_share_log",
)
#: Features that read the clock: meaningless where event times are only each user's order.
CLOCK_NUMERIC = (
    *ITEM_TREND,
    "user_events_week_log",
    "user_days_since_last",
    "user_days_since_purchase",
    "item_age_days_log",
)
CLOCK_CATEGORICAL = ("hour", "weekday")


def without_clock(features: Features) -> Features:
    """The same rows with every clock-reading feature set to one constant (0; code 0 =
    unknown), so a model trained and served on them cannot tell rows apart by it."""
    numeric = features.numeric.copy()
    numeric[:, [NUMERIC.index(n) for n in CLOCK_NUMERIC]] = 0.0
    categorical = features.categorical.copy()
    categorical[:, [CATEGORICAL.index(n) for n in CLOCK_CATEGORICAL]] = 0
    return Features(numeric, categorical, features.recent, features.recent_category)


def compute_features(
    state: RankingState, rows: Rows, chunk_rows: int = 200_000, timed: bool = True
) -> Features:
    """Features of every row, from events strictly before its moment; computed a few hundred
    thousand rows at a time (whole lists per chunk), so millions of rows fit in memory.
    `timed` False (event times are only each user's order): the clock-reading features are
    blanked (`without_clock`) and co-occurrence reads every pair the state holds, not those
    known before a moment that means nothing across users."""
    if len(rows.user) <= chunk_rows:
        features = _compute(state, rows, timed)
        return features if timed else without_clock(features)
    starts = np.r_[0, np.flatnonzero(np.diff(rows.group)) + 1]
    cuts = [0]
    for start in starts:
        if start - cuts[-1] >= chunk_rows:
            cuts.append(int(start))
    cuts.append(len(rows.user))
    parts = [_compute(state, _slice(rows, slice(a, b)), timed) for a, b in pairwise(cuts)]
    features = Features(
        np.concatenate([p.numeric for p in parts]),
        np.concatenate([p.categorical for p in parts]),
        np.concatenate([p.recent for p in parts]),
        np.concatenate([p.recent_category for p in parts]),
    )
    return features if timed else without_clock(features)


def _slice(rows: Rows, part: slice) -> Rows:
    return Rows(**{k: v[part] for k, v in rows.__dict__.items()})


def _runs(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """First row of each run of consecutive rows with the same user and moment, and each
    row's run: what depends on the user and the moment only is computed once per run (one
    per list: a request's candidates share it)."""
    n = len(rows.user)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bits = np.ascontiguousarray(rows.at, dtype=np.float64).view(np.int64)
    change = (rows.user[1:] != rows.user[:-1]) | (bits[1:] != bits[:-1])
    starts = np.r_[0, np.flatnonzero(change) + 1]
    return starts, np.r_[0, np.cumsum(change)]


def _compute(state: RankingState, rows: Rows, timed: bool) -> Features:
    s = state
    starts, run = _runs(rows)
    # per run (user, moment): the user's counters, windows and recent items
    user, at = rows.user[starts], rows.at[starts]
    n = len(user)
    known = user >= 0
    safe_user = np.maximum(user, 0)
    end = np.searchsorted(s.user_codes, time_key(safe_user, at), "left")
    begin = np.searchsorted(s.user_codes, time_key(safe_user, np.zeros(n)), "left")
    end = np.where(known, end, begin)
    count = end - begin
    week_start = np.searchsorted(s.user_codes, time_key(safe_user, at - 7 * 86_400.0))
    week = np.where(known, end - np.maximum(week_start, begin), 0)
    last = np.maximum(end - 1, 0)
    has = count > 0
    since_last = (
        np.where(has, (at - s.ev_ts[last]) / 86_400.0, 365.0) if len(s.ev_ts) else np.full(n, 365.0)
    )
    lp = s.ev_last_purchase[last] if len(s.ev_last_purchase) else np.full(n, -1)
    bought = has & (lp >= begin)
    since_purchase = np.where(bought, (at - s.ev_ts[np.maximum(lp, 0)]) / 86_400.0, 365.0)
    purchases = s.purchases_cum[end] - s.purchases_cum[begin]
    spend = s.spend_cum[end] - s.spend_cum[begin]
    ratings = s.ratings_cum[end] - s.ratings_cum[begin]
    rating_sum = s.rating_sum_cum[end] - s.rating_sum_cum[begin]
    # the user's last AFFINITY_EVENTS events: (runs, L) positions, -1 = none
    offsets = np.arange(AFFINITY_EVENTS, 0, -1)
    window = end[:, None] - offsets[None, :]
    valid = window >= begin[:, None]
    window_items = (
        np.where(valid, s.ev_item[np.clip(window, 0, max(len(s.ev_item) - 1, 0))], -1)
        if len(s.ev_item)
        else np.full((n, AFFINITY_EVENTS), -1)
    )
    item_safe = np.maximum(window_items, 0)
    seen = valid.sum(1)
    prices = np.where(valid, s.item_price[item_safe], np.nan)
    priced = np.isfinite(prices)
    usual = np.where(priced, prices, 0.0).sum(1) / np.maximum(priced.sum(1), 1)
    usual = np.where(priced.any(1), usual, np.nan)
    day_total = s.item_counter.total(at, 86_400.0)
    week_total = s.item_counter.total(at, 7 * 86_400.0)
    recent_pos = window_items[:, -RECENT_ITEMS:]
    recent_ok = recent_pos >= 0
    recent_safe = np.maximum(recent_pos, 0)
    recent = np.where(recent_ok, s.item_bucket[recent_safe], 0)
    recent_category = np.where(recent_ok, s.item_category[recent_safe], 0)
    hour = (np.floor(at / 3600.0) % 24).astype(np.int64) + 1
    weekday = ((np.floor(at / 86_400.0) + 3) % 7).astype(np.int64) + 1
    seen_rows = np.maximum(seen, 1)[run]
    valid_rows = valid[run]

    def affinity(table: np.ndarray) -> np.ndarray:
        candidate = table[rows.item]
        same = (table[item_safe][run] == candidate[:, None]) & valid_rows & (candidate[:, None] > 0)
        return same.sum(1) / seen_rows

    # per row (candidate)
    usual_rows = usual[run]
    cand_price = s.item_price[rows.item]
    ratio = np.where(
        np.isfinite(usual_rows) & np.isfinite(cand_price) & (usual_rows > 0),
        np.log((cand_price + 1.0) / (np.nan_to_num(usual_rows) + 1.0)),
        0.0,
    )
    # co-occurrence with the user's last events (window_items: oldest first)
    similar = (
        s.cooccurrence.similarity(
            window_items[:, -COOC_ANCHORS:][run],
            rows.item,
            rows.at if timed else np.full(len(rows.at), np.inf),
        )
        if s.cooccurrence is not None
        else np.zeros((len(rows.item), COOC_ANCHORS), dtype=np.float32)
    )
    companion = _companion_features(s, begin, end, run, rows)
    # item activity, point in time
    counts = s.item_counter.counts(rows.item, rows.at, ITEM_WINDOWS_S)
    age = (rows.at - s.item_listed[rows.item]) / 86_400.0
    # retrieval score standardised within each user's list (rows of one request are adjacent)
    z = _within_list_z(rows.retrieval_score, rows.group)
    numeric = np.column_stack(
        [
            np.log1p(count)[run],
            np.log1p(week)[run],
            np.log1p(np.clip(since_last, 0, 365))[run],
            np.log1p(np.clip(since_purchase, 0, 365))[run],
            (~bought).astype(np.float64)[run],
            np.log1p(np.where(purchases > 0, spend / np.maximum(purchases, 1), 0.0))[run],
            np.where(ratings > 0, rating_sum / np.maximum(ratings, 1), 0.0)[run],
            *[np.log1p(c) for c in counts],
            np.log((counts[1] + 0.5) / (day_total[run] + 1.0)),
            np.log((counts[2] + 0.5) / (week_total[run] + 1.0)),
            np.log1p(np.clip(np.nan_to_num(age, nan=365.0), 0, None)),
            np.log1p(np.nan_to_num(np.clip(cand_price, 0, None), nan=0.0)),
            rows.sellable.astype(np.float64),
            z,
            np.log1p(rows.retrieval_rank),
            (rows.retrieval_rank > 0).astype(np.float64),
            affinity(s.item_category),
            affinity(s.item_top_category),
            affinity(s.item_brand),
            ratio,
            np.log1p(similar.sum(1)),
            similar.max(1, initial=0.0),
            np.log1p(similar[:, -RECENT_ITEMS:].sum(1)),
            *companion,
        ]
    ).astype(np.float32)
    categorical = np.column_stack(
        [
            s.item_bucket[rows.item],
            s.item_category[rows.item],
            s.item_top_category[rows.item],
            s.item_brand[rows.item],
            rows.region,
            np.clip(rows.device, 0, 16),
            hour[run],
            weekday[run],
        ]
    ).astype(np.int64)
    return Features(
        numeric,
        categorical,
        recent[run].astype(np.int64),
        recent_category[run].astype(np.int64),
    )


def _companion_features(
    s: RankingState, begin: np.ndarray, end: np.ndarray, run: np.ndarray, rows: Rows
) -> tuple[np.ndarray, np.ndarray]:
    """The companion's score of each row's item for the distinct items of the user's events
    in [begin, end) of its run (point in time), as its list's z score and as the log of its
    rank in the list (1 = the companion's favourite); zeros without a companion."""
    if s.companion is None:
        zeros = np.zeros(len(rows.item))
        return zeros, zeros
    counts = np.maximum(end - begin, 0)
    positions = np.repeat(begin - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(
        counts.sum()
    )
    items = s.ev_item[positions]
    history = sparse.csr_matrix(
        (np.ones(len(items), np.float32), items, np.r_[0, np.cumsum(counts)]),
        shape=(len(begin), max(s.companion.n_items, int(items.max(initial=-1)) + 1)),
    )
    history.sum_duplicates()
    history.data[:] = 1.0
    score = s.companion.scores(history, run, rows.item).astype(np.float64)
    order = np.lexsort((-score, rows.group))
    starts = np.r_[0, np.flatnonzero(np.diff(rows.group[order])) + 1]
    rank = np.empty(len(score))
    rank[order] = np.arange(len(score)) - np.repeat(starts, np.diff(np.r_[starts, len(score)]))
    return _within_list_z(score, rows.group), np.log1p(rank + 1.0)


def _within_list_z(score: np.ndarray, list_id: np.ndarray) -> np.ndarray:
    """A score minus the mean of its list, over the list's standard deviation. Rows without
    a score (NaN: not retrieved) get the list's minimum − 1 sd."""
    _, group = np.unique(list_id, return_inverse=True)
    ok = np.isfinite(score)
    filled = np.where(ok, score, 0.0)
    n = np.bincount(group, weights=ok.astype(np.float64))
    mean = np.bincount(group, weights=filled) / np.maximum(n, 1)
    var = np.bincount(group, weights=np.where(ok, (filled - mean[group]) ** 2, 0.0))
    sd = np.sqrt(var / np.maximum(n - 1, 1))
    sd = np.where((n > 1) & (sd > 1e-6), sd, 1.0)
    low = np.full(len(n), np.inf)
    np.minimum.at(low, group[ok], filled[ok])
    low = np.where(np.isfinite(low), low, 0.0)
    value = np.where(ok, filled, low[group] - sd[group])
    return np.clip((value - mean[group]) / sd[group], -5, 5)
