"""The small interface every recommender implements, and the shared serving path of the
collaborative baselines.

`Recommender` is what evaluation, the CLI and later the services call: `fit`, `recommend`,
`save`, `load`. Baselines differ only in how they score items for a user with history, so each
is a `Scorer` plugged into one `CollaborativeRecommender` (composition, not a class tree) that
owns everything else: vocabularies, the filter (seen items, delisted items, items not sold in
the user's region), cold users (per-region popularity), top-K selection and the model folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import polars as pl
import scipy.sparse as sp

from marketrec import __version__
from marketrec.core.errors import ConfigError, ModelError
from marketrec.data.schema import Dataset, epoch_seconds
from marketrec.features.interactions import IdVocab, InteractionConfig, build_interactions
from marketrec.features.listing import listing_times
from marketrec.features.regions import home_regions, item_regions
from marketrec.models.scoring import Scorer, TrainContext

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "marketrec-model"
FORMAT_VERSION = 1
_BATCH = 1024


class Recommender(Protocol):
    """What every model offers, offline and online alike."""

    name: str

    def fit(self, data: Dataset) -> Self: ...

    def recommend(
        self,
        user_ids: Sequence[str] | pl.Series,
        k: int,
        *,
        include_seen: bool = False,
        regions: Sequence[str | None] | None = None,
        at: Sequence[datetime | None] | None = None,
    ) -> pl.DataFrame: ...

    def save(self, folder: str | Path) -> Path: ...


class CollaborativeRecommender:
    """Any `Scorer` behind the shared recommendation path.

    Cold users (no training events) get the fallback: popularity of their home region,
    time-decayed, or global popularity when the region is unknown.
    """

    kind: ClassVar[str] = "collaborative"

    def __init__(
        self,
        name: str,
        scorer: Scorer,
        fallback: Scorer,
        interaction_config: InteractionConfig | None = None,
    ) -> None:
        self.name = name
        self.scorer = scorer
        self.fallback = fallback
        self.interaction_config = interaction_config or InteractionConfig()
        self._users: IdVocab | None = None
        self._items: IdVocab | None = None
        self._history: sp.csr_matrix | None = None
        self._user_region: np.ndarray | None = None
        self._regions: tuple[str, ...] = ()
        self._sellable: np.ndarray | None = None  # (n_regions + 1, n_items); last = no region
        self._sellable_changes = 0  # `sellable_version`
        #: `sellable_bits` per region, for the `sellable_version` they were packed at
        self._sellable_bits: tuple[int, dict[int, np.ndarray]] = (-1, {})
        self._listed_at = np.zeros(0)  # per item: listing time, epoch seconds (NaN = unknown)
        self._now = np.nan  # the default ranking moment: one second past the last training event
        self._train_summary: dict[str, Any] = {}
        #: users first seen live (absorbed events, profile updates), after the trained rows
        self._live_users: dict[str, int] = {}
        #: products listed live (new item ids), after the trained columns
        self._live_items: dict[str, int] = {}
        self._live = False  # state changed since training: the folder no longer describes it

    # ----------------------------------------------------------------- training
    def fit(self, data: Dataset) -> Self:
        interactions = build_interactions(data, self.interaction_config)
        regions, user_region = _user_regions(data, interactions.users)
        self._users, self._items = interactions.users, interactions.items
        self._history = interactions.matrix
        self._user_region, self._regions = user_region, regions
        self._sellable = _sellable_matrix(data, interactions.items, regions)
        self._sellable_changes += 1
        self._listed_at = listing_times(data, interactions.items.ids)
        last = interactions.reference_time
        self._now = last.timestamp() + 1.0 if last is not None else np.nan
        ctx = TrainContext(interactions, user_region, regions, data, self._listed_at)
        log.debug(
            "%s: fitting on %s users × %s items, %s interactions",
            self.name,
            f"{len(interactions.users):,}",
            f"{len(interactions.items):,}",
            f"{interactions.matrix.nnz:,}",
        )
        self.fallback.fit(ctx)
        self.scorer.fit(ctx)
        self._train_summary = {**data.summary(), "reference_time": str(interactions.reference_time)}
        return self

    def fine_tune_from(
        self,
        previous: CollaborativeRecommender,
        since_ts: float,
        epochs: int = 1,
        learning_rate_scale: float = 0.1,
    ) -> None:
        """Make the next `fit` start from `previous`'s learned weights and learn from the
        events at or after `since_ts` (continuous learning); models without weights to
        carry over (the baselines) cannot: retrain them instead."""
        tune = getattr(self.scorer, "fine_tune_from", None)
        if tune is None or type(previous.scorer) is not type(self.scorer):
            raise ModelError(
                f"model '{self.name}' cannot be fine-tuned from '{previous.name}': "
                "retrain it instead (marketrec retrain)"
            )
        if previous._items is None:
            raise ModelError(f"model '{previous.name}' is not fitted")
        tune(previous.scorer, since_ts, epochs, learning_rate_scale, item_ids=previous._items.ids)

    # ----------------------------------------------------------------- serving
    def recommend(
        self,
        user_ids: Sequence[str] | pl.Series,
        k: int,
        *,
        include_seen: bool = False,
        regions: Sequence[str | None] | None = None,
        at: Sequence[datetime | None] | None = None,
        exclude: sp.csr_matrix | None = None,
    ) -> pl.DataFrame:
        """Top-k items per user: columns user_id, item_id, rank (1 = best), score.

        Fewer than k rows only when fewer than k items are sellable to that user.
        `regions` overrides each user's home region (request context); `at` gives each
        user's ranking moment (offline replay of a per-user protocol) to models that read
        time, None meaning "now" (just after the training data). `exclude` (one row per user,
        item columns in `item_ids` order) names the items to leave out instead of everything
        the user touched (`include_seen` then has no effect): the pipeline's per-event-type rules.
        """
        if self._users is None or self._items is None or self._history is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        if int(k) != k or k <= 0:
            raise ConfigError(f"k must be a positive integer, got {k}")
        ids = pl.Series(
            "user_id",
            list(user_ids) if not isinstance(user_ids, pl.Series) else user_ids,
            dtype=pl.String,
        )
        rows = self.user_rows(ids)
        region_idx = self._region_rows(rows, regions, len(ids))
        columns, scores = self.top_items(
            rows, region_idx, k, _epoch_seconds(at, len(ids)), exclude, include_seen
        )
        keep = np.isfinite(scores)
        user_pos = np.repeat(np.arange(len(ids)), columns.shape[1]).reshape(columns.shape)
        ranks = np.tile(np.arange(1, columns.shape[1] + 1, dtype=np.int32), (len(ids), 1))
        return pl.DataFrame(
            {
                "user_id": ids.gather(user_pos[keep]),
                "item_id": self.item_ids.gather(columns[keep]),
                "rank": ranks[keep],
                "score": scores[keep].astype(np.float64),
            },
            schema=_empty_recs().schema,
        )

    def top_items(
        self,
        rows: np.ndarray,
        region_idx: np.ndarray,
        k: int,
        moments: np.ndarray | None = None,
        exclude: sp.csr_matrix | None = None,
        include_seen: bool = False,
        devices: Sequence[str | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The numeric core of `recommend` for user rows (-1 = unknown) and region indices:
        (len(rows), k) item columns and scores, best first; -inf scores where fewer than k
        items may be shown. The pipeline calls it directly, without id lookups or frames.
        `devices`: each request's device, for scorers that read one (`reads_devices`: the
        two-tower's user tower); None per user or for all: none given."""
        assert self._items is not None
        n_items = self.n_items
        if exclude is not None and exclude.shape != (len(rows), n_items):
            raise ConfigError(
                f"exclude must be {len(rows)} users × {n_items} items, got {exclude.shape}"
            )
        k = min(int(k), n_items)
        out_cols = np.zeros((len(rows), k), dtype=np.int64)
        out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        reserve = getattr(self.scorer, "reserved_items", None)
        reserved, slots = reserve(k) if reserve is not None else (None, 0)
        index = self._serving_index()
        for start in range(0, len(rows), _BATCH):
            stop = min(start + _BATCH, len(rows))
            batch_moments = None if moments is None else moments[start:stop]
            batch_exclude = None if exclude is None else exclude[start:stop]
            context = self._device_context(devices, start, stop)
            found = (
                None
                if index is None
                else self._index_top(
                    index,
                    rows[start:stop],
                    region_idx[start:stop],
                    k,
                    batch_moments,
                    batch_exclude,
                    include_seen,
                    slots if reserved is not None else 0,
                    context,
                )
            )
            if found is not None:
                out_cols[start:stop], out_scores[start:stop] = found
                continue
            scores = self._scores_batch(
                rows[start:stop],
                region_idx[start:stop],
                include_seen,
                batch_moments,
                batch_exclude,
                context,
            )
            cols, best = _top_k(scores, k)
            if reserved is not None and slots > 0:
                cols, best = _with_reserved(scores, cols, best, reserved, slots)
            out_cols[start:stop], out_scores[start:stop] = cols, best
        return out_cols, out_scores

    def _device_context(
        self, devices: Sequence[str | None] | None, start: int, stop: int
    ) -> dict[str, Any]:
        """What the scorer's `score` / `query_vectors` take beyond the users: the batch's
        devices, for a scorer that reads them and when any was given."""
        if devices is None or not getattr(self.scorer, "reads_devices", False):
            return {}
        batch = list(devices[start:stop])
        return {"devices": batch} if any(d is not None for d in batch) else {}

    def _serving_index(self) -> Any:
        """The scorer's ANN index over every column (`TwoTowerScorer.serving_index`: large
        catalogues only), or None: score every item exactly."""
        get = getattr(self.scorer, "serving_index", None)
        if get is None or self._history is None:
            return None
        index = get()
        if index is None or len(index) != self._history.shape[1]:
            return None  # columns the index does not hold: exact scoring gives them -inf
        return index

    def _index_top(
        self,
        index: Any,
        rows: np.ndarray,
        region_idx: np.ndarray,
        k: int,
        moments: np.ndarray | None,
        exclude: sp.csr_matrix | None,
        include_seen: bool,
        slots: int,
        context: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """`top_items` of one batch through the scorer's ANN index: the same filters
        (sellable in the region, listed by the moment, not excluded or seen) and reserved
        places as the exact path, over the items the index finds nearest instead of all.
        None where the index does not apply (users the scorer does not embed itself, moments
        whose catalogue vectors differ from the stored ones, most of the catalogue filtered)."""
        assert self._history is not None and self._sellable is not None
        if not getattr(self.scorer, "handles_cold_users", False) or not self._scorable(rows).all():
            return None
        n_items = self._history.shape[1]
        skip = self._unlisted_columns(rows, moments)
        if exclude is not None:
            hidden = exclude
        elif not include_seen:
            hidden = self._history[np.maximum(rows, 0)]
            hidden = sp.diags((rows >= 0).astype(np.float32)) @ hidden
        else:
            hidden = None
        if hidden is not None:
            hidden = sp.csr_matrix(hidden)
            for u in range(len(rows)):
                cols = hidden.indices[hidden.indptr[u] : hidden.indptr[u + 1]]
                if len(cols):
                    skip[u] = np.concatenate([skip[u], cols]) if len(skip[u]) else cols
        # over-fetch what the filters may drop (an item counted twice only asks for more)
        fetch = [k + len(s) for s in skip]
        if max(fetch) > n_items // 4:
            return None
        queries = self.scorer.query_vectors(rows, region_idx, moments, **(context or {}))
        if queries is None:
            return None
        blocked = np.zeros(n_items, dtype=bool)
        cols = np.zeros((len(rows), k), dtype=np.int64)
        best = np.full((len(rows), k), -np.inf, dtype=np.float32)
        allowed = {int(r): self.sellable_bits(int(r)) for r in np.unique(region_idx)}
        for u in range(len(rows)):
            # one query per user: the lists scanned depend on k only, never on the batch
            labels, scores = index.search(
                queries[u : u + 1], fetch[u], allowed[int(region_idx[u])], probe_k=k
            )
            keep = labels[0] >= 0
            if len(skip[u]):
                blocked[skip[u]] = True
                keep &= ~blocked[labels[0]]
                blocked[skip[u]] = False
            picked = np.flatnonzero(keep)[:k]
            cols[u, : len(picked)] = labels[0, picked]
            best[u, : len(picked)] = scores[0, picked]
        if slots > 0:
            reserved, reserved_scores = self.scorer.reserved_scores(queries)
            reserved_scores[~self._sellable[region_idx[:, None], reserved[None, :]]] = -np.inf
            for u in range(len(rows)):
                if len(skip[u]):
                    blocked[skip[u]] = True
                    reserved_scores[u, blocked[reserved]] = -np.inf
                    blocked[skip[u]] = False
            take = min(slots, k, len(reserved))
            if take > 0:
                extra, extra_scores = _top_k(reserved_scores, take)
                cols, best = _merge_reserved(cols, best, reserved[extra], extra_scores)
        return cols, best

    def _unlisted_columns(self, rows: np.ndarray, moments: np.ndarray | None) -> list[np.ndarray]:
        """Per user, the columns listed after their moment (`_hide_unlisted`), sorted."""
        empty = np.zeros(0, dtype=np.int64)
        if not len(self._listed_at) or np.isnan(self._now):
            return [empty for _ in rows]
        moment = np.full(len(rows), self._now) if moments is None else moments
        moment = np.where(np.isnan(moment), self._now, moment)
        late = self._listed_after(float(moment.min()))
        if not len(late):
            return [empty for _ in rows]
        return [late[self._listed_at[late] > m] for m in moment]

    def _listed_after(self, moment: float) -> np.ndarray:
        """Columns listed after `moment` (NaN listing times: always listed), sorted. Kept
        for the last few moments while the listing times are the same array: a live service
        asks at its one "now" for every request, and this was a pass over the catalogue."""
        cached = self.__dict__.get("_late_columns")
        if cached is None or cached[0] is not self._listed_at:
            finite = self._listed_at[np.isfinite(self._listed_at)]
            cached = (self._listed_at, float(finite.max()) if len(finite) else -np.inf, {})
            self.__dict__["_late_columns"] = cached
        if not cached[1] > moment:  # nothing is listed after the moment
            return np.zeros(0, dtype=np.int64)
        known: dict[float, np.ndarray] = cached[2]
        late = known.get(moment)
        if late is None:
            with np.errstate(invalid="ignore"):
                late = np.flatnonzero(self._listed_at > moment)
            late.flags.writeable = False
            if len(known) >= 4:
                known.pop(next(iter(known)))
            known[moment] = late
        return late

    def _region_rows(
        self, rows: np.ndarray, regions: Sequence[str | None] | None, n: int
    ) -> np.ndarray:
        assert self._user_region is not None
        no_region = len(self._regions)
        home = np.where(rows >= 0, self._user_region[np.maximum(rows, 0)], -1)
        if regions is not None:
            if len(regions) != n:
                raise ConfigError(f"got {len(regions)} regions for {n} users")
            lookup = self._region_lookup
            given = np.array([lookup.get(r, -2) if r is not None else -1 for r in regions])
            home = np.where(given >= 0, given, np.where(given == -2, -1, home))
        return np.where(home >= 0, home, no_region)

    def _scores_batch(
        self,
        rows: np.ndarray,
        region_idx: np.ndarray,
        include_seen: bool,
        moments: np.ndarray | None,
        exclude: sp.csr_matrix | None = None,
        context: dict[str, Any] | None = None,
    ) -> np.ndarray:
        assert self._history is not None and self._sellable is not None
        known = rows >= 0
        embeds_cold = getattr(self.scorer, "handles_cold_users", False)
        if embeds_cold and exclude is not None and not getattr(self.scorer, "reads_history", True):
            # nothing below reads the history rows: skip slicing them (a request's fixed cost)
            history = sp.csr_matrix((len(rows), self._history.shape[1]), dtype=np.float32)
        else:
            history = self._history[np.maximum(rows, 0)]
            history = sp.diags(known.astype(np.float32)) @ history  # unknown users: empty rows
        warm = np.diff(history.indptr) > 0
        # scorers know the trained columns only (products listed live come after them)
        trained = history[:, : len(self._items)] if self._live_items else history
        if embeds_cold:
            warm = np.ones(len(rows), dtype=bool)  # the scorer embeds cold users itself
        warm &= self._scorable(rows)
        scores = np.empty((len(rows), self._history.shape[1]), dtype=np.float32)
        if warm.any():
            warm_rows = np.flatnonzero(warm)
            extra = dict(context or {})
            if "devices" in extra:
                extra["devices"] = [extra["devices"][r] for r in warm_rows]
            _fill(
                scores,
                warm_rows,
                self.scorer.score(
                    rows[warm_rows],
                    trained[warm_rows],
                    region_idx[warm_rows],
                    None if moments is None else moments[warm_rows],
                    **extra,
                ),
            )
        if (~warm).any():
            cold_rows = np.flatnonzero(~warm)
            _fill(
                scores,
                cold_rows,
                self.fallback.score(rows[cold_rows], trained[cold_rows], region_idx[cold_rows]),
            )
        self._filter(scores, region_idx, moments, history, exclude, include_seen)
        return scores

    def _filter(
        self,
        scores: np.ndarray,
        region_idx: np.ndarray,
        moments: np.ndarray | None,
        history: sp.csr_matrix,
        exclude: sp.csr_matrix | None,
        include_seen: bool,
    ) -> None:
        """-inf for what may not be shown: items not sellable in the region, not listed yet
        at the moment, and excluded (or seen, unless `include_seen`) ones."""
        assert self._sellable is not None
        np.copyto(scores, -np.inf, where=~self._sellable[region_idx])
        self._hide_unlisted(scores, moments)
        if exclude is not None:
            r, c = exclude.nonzero()
            scores[r, c] = -np.inf
        elif not include_seen:
            r, c = history.nonzero()
            scores[r, c] = -np.inf

    def fallback_items(
        self,
        rows: np.ndarray,
        region_idx: np.ndarray,
        k: int,
        moments: np.ndarray | None = None,
        exclude: sp.csr_matrix | None = None,
        include_seen: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`top_items` from the popularity fallback alone (every user as if cold: the
        popularity of their region), under the same filters: the degraded path when the
        scorer fails."""
        assert self._history is not None and self._items is not None
        n_items = self._history.shape[1]
        k = min(int(k), n_items)
        out_cols = np.zeros((len(rows), k), dtype=np.int64)
        out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        for start in range(0, len(rows), _BATCH):
            stop = min(start + _BATCH, len(rows))
            part = rows[start:stop]
            history = sp.diags((part >= 0).astype(np.float32)) @ self._history[np.maximum(part, 0)]
            history = sp.csr_matrix(history)
            trained = history[:, : len(self._items)] if self._live_items else history
            scores = np.empty((len(part), n_items), dtype=np.float32)
            _fill(
                scores,
                np.arange(len(part)),
                self.fallback.score(part, trained, region_idx[start:stop]),
            )
            self._filter(
                scores,
                region_idx[start:stop],
                None if moments is None else moments[start:stop],
                history,
                None if exclude is None else exclude[start:stop],
                include_seen,
            )
            out_cols[start:stop], out_scores[start:stop] = _top_k(scores, k)
        return out_cols, out_scores

    def _hide_unlisted(self, scores: np.ndarray, moments: np.ndarray | None) -> None:
        """No item before its listing time: at a user's ranking moment (the model's "now"
        without one), a product listed later does not exist yet."""
        if not len(self._listed_at) or np.isnan(self._now):
            return
        moment = np.full(len(scores), self._now) if moments is None else moments
        moment = np.where(np.isnan(moment), self._now, moment)
        late = self._listed_after(float(moment.min()))
        if len(late):
            hidden = self._listed_at[late][None, :] > moment[:, None]
            scores[:, late] = np.where(hidden, -np.inf, scores[:, late])

    @property
    def item_ids(self) -> pl.Series:
        """The catalogue in the model's column order (score and `exclude` columns)."""
        if self._items is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        if not self._live_items:
            return self._items.ids
        # products listed live are only ever added: the concatenation is kept per count
        key = (self._items, len(self._live_items))
        cached = self.__dict__.get("_item_ids_cache")
        if cached is None or cached[0][0] is not key[0] or cached[0][1] != key[1]:
            ids = pl.concat([self._items.ids, pl.Series("id", list(self._live_items))])
            cached = (key, ids)
            self.__dict__["_item_ids_cache"] = cached
        return cached[1]

    def item_id_array(self) -> np.ndarray:
        """`item_ids` as a NumPy object array (kept per catalogue): a request names its few
        items by indexing it, without a polars gather."""
        ids = self.item_ids
        cached = self.__dict__.get("_item_id_array")
        if cached is None or cached[0] is not ids:
            cached = (ids, ids.to_numpy())
            self.__dict__["_item_id_array"] = cached
        return cached[1]

    @property
    def n_items(self) -> int:
        """Item columns (trained and listed live)."""
        if self._history is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        return int(self._history.shape[1])

    def item_columns(self, item_ids: pl.Series) -> np.ndarray:
        """Each item's column in the model (-1: unknown to it, or null)."""
        if self._items is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        null = item_ids.is_null().to_numpy()
        cols = _with_live(self._items.lookup(item_ids.fill_null("")), item_ids, self._live_items)
        return np.where(null, -1, cols)

    @property
    def user_ids(self) -> pl.Series:
        """Every user the model knows, in row order (users first seen live last)."""
        if self._users is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        if not self._live_users:
            return self._users.ids
        return pl.concat([self._users.ids, pl.Series("id", list(self._live_users))])

    @property
    def _region_lookup(self) -> dict[str, int]:
        """Region name → region index (the regions are fixed at training)."""
        cached = self.__dict__.get("_region_lookup_cache")
        if cached is None or cached[0] is not self._regions:
            cached = (self._regions, {name: j for j, name in enumerate(self._regions)})
            self.__dict__["_region_lookup_cache"] = cached
        return cached[1]

    @property
    def n_users(self) -> int:
        """User rows (trained and first seen live)."""
        if self._user_region is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        return len(self._user_region)

    @property
    def region_names(self) -> tuple[str, ...]:
        """Region names, in the order of `region_index`."""
        return self._regions

    def user_rows(self, user_ids: pl.Series) -> np.ndarray:
        """Each user's row in the model (-1: unknown to it)."""
        if self._users is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        return _with_live(self._users.lookup(user_ids), user_ids, self._live_users)

    def sellable(self, regions: np.ndarray) -> np.ndarray:
        """(len(regions), n_items) bool: which items may be shown in each region index
        (`region_index`; unknown = len(regions) where only delisted items are hidden)."""
        assert self._sellable is not None
        return self._sellable[regions]

    @property
    def listed_at(self) -> np.ndarray:
        """Per item column: listing time in epoch seconds (NaN = unknown; see
        `features.listing`), empty for a model folder written before they were kept."""
        return self._listed_at

    @property
    def sellable_version(self) -> int:
        """Counts every change of the sellable matrix (fit, load, listings, delistings): what
        is derived from it (`sellable_bits`, the pipeline's exploration pools) is kept
        while this stays the same."""
        return self._sellable_changes

    def sellable_bits(self, region: int) -> np.ndarray:
        """`sellable([region])[0]` packed 8 items a byte (little bit order: the ANN index's
        filter), kept per region until the matrix changes."""
        assert self._sellable is not None
        cache = self._sellable_bits
        if cache[0] != self._sellable_changes:
            cache = self._sellable_bits = (self._sellable_changes, {})
        bits = cache[1].get(region)
        if bits is None:
            bits = np.packbits(self._sellable[region], bitorder="little")
            bits.flags.writeable = False
            cache[1][region] = bits
        return bits

    def sellable_pairs(self, regions: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (region index, item column) pair may be shown, elementwise."""
        assert self._sellable is not None
        return self._sellable[regions, items]

    def region_index(
        self, user_ids: pl.Series, regions: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Each user's region index: the request's region where given, else the home one."""
        return self._region_rows(self.user_rows(user_ids), regions, user_ids.len())

    def regions_of(
        self, rows: np.ndarray, regions: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """`region_index` for user rows already looked up."""
        return self._region_rows(rows, regions, len(rows))

    # ----------------------------------------------------------------- live updates
    def absorb(self, events: pl.DataFrame) -> np.ndarray:
        """Take events that arrived after training (canonical columns) into the serving
        state, without retraining: each user's next list leaves out what they just touched,
        scorers that read histories (EASE, item-kNN through the matrix; the two-tower
        through its sequences) score from the new history, and users first seen here get a
        row. Events on items the model does not know stay in the event log only.

        Returns each event's user row (the pipeline's own state follows the same rows)."""
        if self._users is None or self._items is None or self._history is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        rows = self.ensure_users(events.get_column("user_id"))
        self._live = True
        cfg = self.interaction_config
        items = events.get_column("item_id")
        cols = self.item_columns(items)
        kind = events.get_column("event")
        take = (cols >= 0) & ~kind.is_in(list(cfg.ignore)).to_numpy()
        if not take.any():
            return rows
        weights = (
            kind.replace_strict(
                cfg.event_weights, default=cfg.default_weight, return_dtype=pl.Float32
            )
            .to_numpy()
            .astype(np.float32)
        )
        delta = sp.csr_matrix((weights[take], (rows[take], cols[take])), shape=self._history.shape)
        # a pair keeps its strongest event (as in training: `build_interactions`)
        self._history = self._history.maximum(delta).tocsr()
        self._history.sort_indices()
        self._advance_clock(float(epoch_seconds(events.get_column("ts")).max()) + 1.0)
        absorb = getattr(self.scorer, "absorb", None)
        if absorb is not None:
            picked = np.flatnonzero(take)
            absorb(rows[take], cols[take], events[picked], weights[take], len(self._user_region))
        return rows

    def ensure_users(self, user_ids: pl.Series) -> np.ndarray:
        """Rows of `user_ids`, adding a row for each user the model has not seen (their home
        region unknown until `upsert_users` sets one)."""
        assert self._user_region is not None and self._history is not None
        rows = self.user_rows(user_ids)
        if (rows < 0).any():
            new = [u for u in dict.fromkeys(user_ids.filter(pl.Series(rows < 0)).to_list())]
            first = len(self._user_region)
            self._live_users.update({u: first + j for j, u in enumerate(new)})
            self._user_region = np.r_[self._user_region, np.full(len(new), -1, np.int64)]
            self._history.resize((len(self._user_region), self._history.shape[1]))
            grow = getattr(self.scorer, "grow_users", None)
            if grow is not None:
                grow(len(self._user_region))
            self._live = True
            rows = self.user_rows(user_ids)
        return rows

    @property
    def clock(self) -> float:
        """The default ranking moment (epoch seconds): one second past the last training
        event, moved forward by live events and listings (NaN: no timed data)."""
        return self._now

    def _advance_clock(self, moment: float) -> None:
        if np.isnan(self._now) or moment > self._now:
            self._now = moment

    def _scorable(self, rows: np.ndarray) -> np.ndarray:
        """Which user rows the scorer can score: all, except rows first seen live for
        scorers that look users up in trained tables (factor models): those get the
        fallback until the next training."""
        assert self._users is not None
        if getattr(self.scorer, "trained_rows_only", False):
            return rows < len(self._users)
        return np.ones(len(rows), dtype=bool)

    def delist(self, item_ids: Sequence[str]) -> None:
        """Never recommend these items again (anywhere); ids the model does not know are
        ignored (they can never be recommended)."""
        assert self._items is not None and self._sellable is not None
        cols = self.item_columns(pl.Series(list(item_ids), dtype=pl.String))
        self._sellable[:, cols[cols >= 0]] = False
        self._sellable_changes += 1
        self._live = True

    def upsert_items(self, items: pl.DataFrame) -> list[str]:
        """Create or replace products (canonical items columns; a PUT replaces the product:
        `regions` null = sold everywhere, `available` false = delisted). A new product gets a
        column at once; scorers that place items by content (the two-tower) can recommend it
        from the next request, the others only once trained with it. Returns the ids of the
        products this call created."""
        assert self._items is not None and self._sellable is not None
        assert self._history is not None
        items = items.unique("item_id", keep="last", maintain_order=True)
        fresh = items.filter(pl.Series(self.item_columns(items.get_column("item_id")) < 0))
        if fresh.height:
            first = self._history.shape[1]
            names = fresh.get_column("item_id").to_list()
            self._live_items.update({i: first + j for j, i in enumerate(names)})
            n_items = first + len(names)
            self._history.resize((self._history.shape[0], n_items))
            self._sellable = np.hstack(
                [self._sellable, np.ones((self._sellable.shape[0], len(names)), dtype=bool)]
            )
            listed = np.full(len(names), np.nan)  # unknown listing time: always listed
            if "created_at" in fresh.columns:
                listed = epoch_seconds(fresh.get_column("created_at"))
            self._listed_at = np.r_[self._listed_at, listed]
            if np.isfinite(listed).any():  # a product exists from its listing on
                self._advance_clock(float(np.nanmax(listed)))
            grow = getattr(self.scorer, "grow_items", None)
            if grow is not None:
                grow(fresh)
        cols = self.item_columns(items.get_column("item_id"))
        lookup = self._region_lookup
        for col, row in zip(cols, items.iter_rows(named=True), strict=True):
            allowed = np.ones(len(self._regions) + 1, dtype=bool)
            if row.get("regions") is not None:
                allowed[: len(self._regions)] = False
                allowed[[lookup[r] for r in row["regions"] if r in lookup]] = True
            if row.get("available") is False:
                allowed[:] = False
            self._sellable[:, col] = allowed
        self._sellable_changes += 1
        self._live = True
        return fresh.get_column("item_id").to_list()

    def upsert_users(self, users: pl.DataFrame) -> np.ndarray:
        """Profile updates (canonical users columns): users get a row if new; a `region`
        becomes their home region (unknown names: no region). Returns their rows."""
        rows = self.ensure_users(users.get_column("user_id"))
        if "region" in users.columns:
            assert self._user_region is not None
            lookup = self._region_lookup
            given = users.get_column("region").to_list()
            region = np.array([lookup.get(r, -1) if r is not None else -1 for r in given])
            self._user_region[rows] = region
            set_regions = getattr(self.scorer, "set_user_regions", None)
            if set_regions is not None:
                set_regions(rows, region)
        return rows

    # ----------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        if self._users is None or self._items is None or self._history is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        if self._live:
            raise ModelError(
                f"model '{self.name}' took in live updates: its folder would not describe it "
                "(live state is rebuilt from the event log; save before serving)"
            )
        assert self._user_region is not None and self._sellable is not None
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.name,
            "params": self.scorer.params.model_dump(),
            "fallback_params": self.fallback.params.model_dump(),
            "interactions": {
                "event_weights": self.interaction_config.event_weights,
                "default_weight": self.interaction_config.default_weight,
                "ignore": list(self.interaction_config.ignore),
            },
            "regions": list(self._regions),
            "created_at": datetime.now(UTC).isoformat(),
            "marketrec_version": __version__,
            "train": self._train_summary,
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        pl.DataFrame({"user_id": self._users.ids, "region_idx": self._user_region}).write_parquet(
            out / "users.parquet"
        )
        pl.DataFrame({"item_id": self._items.ids}).write_parquet(out / "items.parquet")
        h = self._history
        np.savez(
            out / "state.npz",
            history_data=h.data,
            history_indices=h.indices,
            history_indptr=h.indptr,
            history_shape=np.array(h.shape),
            sellable=self._sellable,
            listed_at=self._listed_at,
            now=np.array([self._now]),
        )
        np.savez(out / "scorer.npz", **self.scorer.arrays())
        np.savez(out / "fallback.npz", **self.fallback.arrays())
        return out

    def restore(self, folder: Path, manifest: dict[str, Any]) -> Self:
        users = pl.read_parquet(folder / "users.parquet")
        self._users = IdVocab(users.get_column("user_id").alias("id"))
        # writable: a profile update (PUT /v1/users) moves a trained user to another region
        self._user_region = users.get_column("region_idx").to_numpy(writable=True)
        self._items = IdVocab(
            pl.read_parquet(folder / "items.parquet").get_column("item_id").alias("id")
        )
        self._regions = tuple(manifest["regions"])
        self._train_summary = manifest.get("train", {})
        with np.load(folder / "state.npz", allow_pickle=False) as state:
            self._history = sp.csr_matrix(
                (state["history_data"], state["history_indices"], state["history_indptr"]),
                shape=tuple(state["history_shape"]),
            )
            self._sellable = state["sellable"]
            self._sellable_changes += 1
            # folders written before listing times were kept: every item counts as listed
            self._listed_at = state["listed_at"] if "listed_at" in state else np.zeros(0)
            self._now = float(state["now"][0]) if "now" in state else np.nan
        with np.load(folder / "scorer.npz", allow_pickle=False) as arrays:
            self.scorer.restore(dict(arrays))
        with np.load(folder / "fallback.npz", allow_pickle=False) as arrays:
            self.fallback.restore(dict(arrays))
        return self


def read_manifest(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Open a model folder's manifest, refusing anything that is not a marketrec model."""
    path = Path(folder)
    if not path.is_dir():
        raise ModelError(f"{path}: model folder not found")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise ModelError(
            f"{path}: not a model folder ({MANIFEST} is missing; create one with `marketrec train`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{manifest_path}: not a marketrec model manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(
            f"{manifest_path}: written by a newer marketrec (format {manifest['format_version']})"
        )
    return path, manifest


def _with_live(rows: np.ndarray, ids: pl.Series, live: dict[str, int]) -> np.ndarray:
    """Vocabulary rows (-1: unknown) with the ids first seen live filled in from `live`."""
    if live and (rows < 0).any():
        missing = np.flatnonzero(rows < 0)
        rows[missing] = [live.get(i, -1) for i in ids.gather(missing).to_list()]
    return rows


def _fill(scores: np.ndarray, rows: np.ndarray, scored: np.ndarray) -> None:
    """Write a scorer's (len(rows), n) scores into `scores` rows; columns past n (products
    listed live that this scorer cannot place yet) get -inf."""
    n = scored.shape[1]
    scores[rows, :n] = scored
    scores[rows, n:] = -np.inf


def _epoch_seconds(at: Sequence[datetime | None] | None, n: int) -> np.ndarray | None:
    """Ranking moments as epoch seconds (NaN where None)."""
    if at is None:
        return None
    if len(at) != n:
        raise ConfigError(f"got {len(at)} ranking moments for {n} users")
    return np.array([np.nan if t is None else t.timestamp() for t in at], dtype=np.float64)


def _empty_recs() -> pl.DataFrame:
    return pl.DataFrame(
        schema={"user_id": pl.String, "item_id": pl.String, "rank": pl.Int32, "score": pl.Float64}
    )


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, k) columns and scores of the best k per row, best first; ties go to the lower
    column."""
    n_items = scores.shape[1]
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n_items), (scores.shape[0], 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def _with_reserved(
    scores: np.ndarray, cols: np.ndarray, best: np.ndarray, reserved: np.ndarray, slots: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lists that hold at least `slots` of the `reserved` items (a boolean column mask)
    where that many may be shown: the best-scored reserved items not already in the first
    k - slots places on merit take the last places; places they cannot fill keep the merit
    order. Each item keeps its own score, so such a list is not sorted by score."""
    k = cols.shape[1]
    candidates = np.flatnonzero(reserved)
    slots = min(slots, k, len(candidates))
    if slots == 0:
        return cols, best
    extra, extra_scores = _top_k(scores[:, candidates], slots)
    return _merge_reserved(cols, best, candidates[extra], extra_scores)


def _merge_reserved(
    cols: np.ndarray, best: np.ndarray, extra: np.ndarray, extra_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`_with_reserved` given the best-scored reserved items of each list (`extra`, their
    scores best first, -inf where none may be shown)."""
    k, slots = cols.shape[1], extra.shape[1]
    head = k - slots
    valid = np.isfinite(extra_scores) & ~(extra[:, :, None] == cols[:, None, :head]).any(-1)
    tail_taken = (cols[:, head:, None] == np.where(valid, extra, -1)[:, None, :]).any(-1)
    # order of preference: merit head, valid reserved items, the rest of the merit list
    keys = np.concatenate(
        [
            np.broadcast_to(np.arange(head), (len(cols), head)),
            np.where(valid, head + np.arange(slots), 4 * k),
            np.where(tail_taken, 4 * k, head + slots + np.arange(slots)),
        ],
        axis=1,
    )
    pool = np.concatenate([cols[:, :head], extra, cols[:, head:]], axis=1)
    pool_scores = np.concatenate([best[:, :head], extra_scores, best[:, head:]], axis=1)
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(pool, order, 1), np.take_along_axis(pool_scores, order, 1)


def _user_regions(data: Dataset, users: IdVocab) -> tuple[tuple[str, ...], np.ndarray]:
    """Region names known to the model and each user row's home region index (-1: unknown)."""
    home = home_regions(data)
    names = tuple(sorted(set(home.get_column("region").to_list()) | set(item_regions(data))))
    region_index = pl.DataFrame(
        {"region": list(names), "ridx": np.arange(len(names))},
        schema={"region": pl.String, "ridx": pl.Int64},
    )
    frame = (
        users.frame()
        .join(home.rename({"user_id": "id"}), on="id", how="left")
        .join(region_index, on="region", how="left")
        .sort("idx")
    )
    return names, frame.get_column("ridx").fill_null(-1).to_numpy().astype(np.int64)


def _sellable_matrix(data: Dataset, items: IdVocab, regions: tuple[str, ...]) -> np.ndarray:
    """(n_regions + 1, n_items) bool: may the item be shown in the region (last row: unknown
    region, where only delisted items are hidden)."""
    n_items = len(items)
    sellable = np.ones((len(regions) + 1, n_items), dtype=bool)
    table = data.items
    if "available" in table.columns:
        delisted = table.filter(pl.col("available") == False).get_column("item_id")  # noqa: E712
        sellable[:, items.lookup(delisted)] = False
    if "regions" in table.columns and regions:
        rows = table.select("item_id", "regions").filter(pl.col("regions").is_not_null())
        exploded = rows.explode("regions")
        idx = items.lookup(rows.get_column("item_id"))
        sellable[: len(regions), idx] = False
        region_index = pl.DataFrame({"regions": list(regions), "ridx": np.arange(len(regions))})
        allowed = exploded.join(region_index, on="regions", how="inner")
        sellable[
            allowed.get_column("ridx").to_numpy(), items.lookup(allowed.get_column("item_id"))
        ] = True
    return sellable
