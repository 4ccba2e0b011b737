"""The `Recommender`: retrieve → rank → rules → diversity → exploration, one code path.

Offline evaluation, `marketrec recommend` and the service all call `recommend` (the CONTRACT
§2 columns) or `recommend_detailed` (plus where each item came from and why), so what is
measured is what is served.

1. Retrieve `candidates` items with the retrieval model, which already leaves out items not
   sellable in the user's region and delisted ones; the rules decide which of the user's past
   items are left out (per event type).
2. Rank them (a ranking stage plugs in here; without one, retrieval order).
3. Diversity reorders the top (MMR or a per-category cap).
4. Exploration gives a share of the slots to new items by Thompson sampling.
Every item carries its `source` (retrieval, fallback, exploration) and its top signals.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
import polars as pl
import scipy.sparse as sp

from marketrec.core.errors import ConfigError, ModelError
from marketrec.core.onnx_forward import load_exports, save_exports
from marketrec.data.schema import Dataset, epoch_seconds
from marketrec.models.base import CollaborativeRecommender
from marketrec.models.registry import load_model, unfitted_like
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.diversity import capped_order, mmr_order_by_category
from marketrec.pipeline.exploration import (
    ExplorationPool,
    ExplorationStats,
    ThompsonExplorer,
    exploration_positions,
)
from marketrec.pipeline.ranking_stage import (
    RankingParams,
    RankingStage,
    fine_tune_ranking_stage,
    fit_ranking_stage,
)
from marketrec.pipeline.rules import SeenItems
from marketrec.ranking.features import value_codes

log = logging.getLogger(__name__)

MANIFEST = "pipeline.json"
#: the pipeline folder's subfolder for its networks' ONNX exports (`core.onnx_forward`)
EXPORTS = "onnx"
_CHUNK = 256
#: events that count as a click on an item for exploration's posteriors
ENGAGEMENT = ("click", "add_to_cart", "purchase")
FORMAT = "marketrec-pipeline"
_DETAIL_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "rank": pl.Int32,
    "score": pl.Float64,
    "source": pl.String,
    "signals": pl.String,
}
#: `recommend`'s columns (CONTRACT §2)
_RECS_SCHEMA = {k: v for k, v in _DETAIL_SCHEMA.items() if k not in ("source", "signals")}


class Listed(NamedTuple):
    """One item of `recommend_one`'s list."""

    item_id: str
    score: float
    source: str  # retrieval, fallback or exploration
    #: new to exploration in a list that explores (always False in one that cannot): the
    #: impressions that feed `record_impressions`
    new_listing: bool


class Served(list[Listed]):
    """One user's list from `recommend_many` (its items, best first) and what served it:
    `served_by` "ranker" (retrieval's candidates ordered by the ranker), "retrieval"
    (retrieval order: no active ranker, or it was skipped) or "fallback" (the retrieval
    model's popularity for the user's region: a user it cannot embed, or retrieval failed);
    `degraded`: why the usual path was cut (`ranker_skipped`, `retrieval_failed` → reason),
    None when it was not. A list, so it compares equal to the same items in a plain one."""

    def __init__(
        self, items: Iterable[Listed], served_by: str, degraded: dict[str, str] | None = None
    ) -> None:
        super().__init__(items)
        self.served_by = served_by
        self.degraded = degraded


@dataclass(frozen=True)
class ItemInfo:
    """Per catalogue column of the retrieval model: what diversity and exploration read."""

    category: np.ndarray  # code, 0 = none
    top_category: np.ndarray  # code, 0 = none
    listed_at: np.ndarray  # epoch seconds, NaN = unknown
    train_events: np.ndarray  # events in the training data

    @classmethod
    def build(cls, data: Dataset, item_ids: pl.Series, listed_at: np.ndarray) -> ItemInfo:
        frame = pl.DataFrame({"item_id": item_ids}).join(
            data.items, on="item_id", how="left", maintain_order="left"
        )
        category = (
            frame.get_column("category")
            if "category" in frame.columns
            else pl.repeat(None, frame.height, dtype=pl.String, eager=True)
        )
        top = category.str.split(" > ").list.first()
        counts = (
            pl.DataFrame({"item_id": item_ids})
            .join(
                data.events.group_by("item_id").len(),
                on="item_id",
                how="left",
                maintain_order="left",
            )
            .get_column("len")
            .fill_null(0)
        )
        return cls(
            value_codes(category)[0],
            value_codes(top)[0],
            listed_at.astype(np.float64),
            counts.to_numpy().astype(np.int64),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"item/{k}": v for k, v in self.__dict__.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ItemInfo:
        return cls(**{k: arrays[f"item/{k}"] for k in cls.__dataclass_fields__})


class Recommender:
    """The pipeline around a fitted (or to-be-fitted) retrieval model."""

    def __init__(
        self,
        retrieval: CollaborativeRecommender,
        config: PipelineConfig | None = None,
        ranking: RankingParams | None = None,
    ) -> None:
        """`ranking`: train a re-ranker after retrieval (None: retrieval order)."""
        self.retrieval = retrieval
        self.config = config or PipelineConfig()
        self.ranking_params = ranking
        self.ranking: RankingStage | None = None
        stages = "two-stage" if ranking is not None else "retrieval"
        self.name = f"{stages}({retrieval.name})"
        self._seen: SeenItems | None = None
        self._items: ItemInfo | None = None
        self._reference_ts = float("nan")
        self._clock_moved = False  # live events later than the training data arrived
        self.stats: ExplorationStats | None = None
        #: `_exploration_pool`'s last few pools: (region, moment, versions) → (new-items
        #: mask, statistics, retrieval model they were built from, pool)
        self._pool_cache: dict[tuple[int, float, int, int], tuple[Any, ...]] = {}
        #: Called with (stage, seconds) for each stage of a request: retrieve, rank (also when
        #: skipped: ~0) and finish (rules, diversity, exploration, the list); the
        #: service's per-stage histograms. Not saved with the model.
        self.on_stage: Callable[[str, float], None] | None = None

    # ----------------------------------------------------------------- training
    def fit(self, data: Dataset) -> Self:
        self.retrieval.fit(data)
        self._index(data)
        if self.ranking_params is not None:
            self.ranking = fit_ranking_stage(self.retrieval, data, self.ranking_params)
        return self

    def _index(self, data: Dataset) -> None:
        """What the steps after retrieval need from the training data."""
        item_ids = self.retrieval.item_ids
        users = self.retrieval._users
        assert users is not None
        self._seen = SeenItems.build(data.events, users.ids, item_ids)
        # the retrieval model was just fitted on `data`: its listing times are this catalogue's
        self._items = ItemInfo.build(data, item_ids, self.retrieval.listed_at)
        self.stats = ExplorationStats.empty(item_ids.len())
        if data.events.height:
            self._reference_ts = data.events.get_column("ts").max().timestamp() + 1.0

    # ----------------------------------------------------------------- serving
    def recommend(
        self,
        user_ids: Sequence[str] | pl.Series,
        k: int,
        *,
        include_seen: bool = False,
        regions: Sequence[str | None] | None = None,
        at: Sequence[datetime | None] | None = None,
        config: PipelineConfig | None = None,
    ) -> pl.DataFrame:
        """Top-k per user: user_id, item_id, rank (1 = best), score (CONTRACT §2). The same
        lists as `recommend_detailed`, without computing the explanations it would drop.
        `config`: other settings for this call only (an experiment's variant)."""
        return self._lists(
            user_ids, k, include_seen, regions, at, explain=False, with_signals=False, config=config
        )

    def recommend_detailed(
        self,
        user_ids: Sequence[str] | pl.Series,
        k: int,
        *,
        include_seen: bool = False,
        regions: Sequence[str | None] | None = None,
        at: Sequence[datetime | None] | None = None,
        explain: bool = True,
        config: PipelineConfig | None = None,
    ) -> pl.DataFrame:
        """`recommend` plus `source` (retrieval, fallback, exploration) and `signals` (JSON:
        the scores and counts that put the item there; with `explain`, also the ranker's top
        signal groups, which take a second ranker pass over the shown items).

        `score` is the ranking score, capped by the score above it so the list reads best
        first after diversity and exploration moved items; the raw score is in `signals`.

        Degradation: when the ranking stage fails or the request already spent its
        `rank_budget_ms` before ranking, the lists keep retrieval order (signal
        `ranker_skipped` says why); when retrieval fails, they come from the retrieval
        model's popularity fallback for the user's region, with the same rules (source
        "fallback", signal `retrieval_failed`). Each degradation is logged once per request.
        """
        return self._lists(
            user_ids, k, include_seen, regions, at, explain, with_signals=True, config=config
        )

    def _lists(
        self,
        user_ids: Sequence[str] | pl.Series,
        k: int,
        include_seen: bool,
        regions: Sequence[str | None] | None,
        at: Sequence[datetime | None] | None,
        explain: bool,
        with_signals: bool,
        config: PipelineConfig | None = None,
    ) -> pl.DataFrame:
        self._check_request(k)
        ids = pl.Series("user_id", list(user_ids), dtype=pl.String)
        if ids.len() == 0:
            return pl.DataFrame(schema=_DETAIL_SCHEMA if with_signals else _RECS_SCHEMA)
        moments_all = _moments(at, ids.len(), self._reference_ts)
        frames = []
        # users in chunks: the ranker's features are (users × candidates) rows
        for start in range(0, ids.len(), _CHUNK):
            stop = min(start + _CHUNK, ids.len())
            out = self._chunk_lists(
                ids[start:stop],
                k,
                include_seen,
                None if regions is None else list(regions)[start:stop],
                moments_all[start:stop],
                at is not None,
                explain,
                with_signals,
                config or self.config,
            )
            frames.append(self._frame(out, with_signals))
        return frames[0] if len(frames) == 1 else pl.concat(frames)

    def _check_request(self, k: int) -> None:
        if self._seen is None or self._items is None or self.stats is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        if int(k) != k or k <= 0:
            raise ConfigError(f"k must be a positive integer, got {k}")

    def _item_names(self, out: dict[str, list[Any]]) -> list[str]:
        columns = np.asarray(out["item_idx"], dtype=np.int64)
        return self.retrieval.item_id_array()[columns].tolist()

    def recommend_one(
        self,
        user_id: str,
        k: int,
        *,
        region: str | None = None,
        config: PipelineConfig | None = None,
    ) -> Served:
        """One user's list now, best first (`recommend_many` for one user)."""
        return self.recommend_many([user_id], k, regions=[region], config=config)[0]

    def recommend_many(
        self,
        user_ids: Sequence[str],
        k: int,
        *,
        regions: Sequence[str | None] | None = None,
        config: PipelineConfig | None = None,
        skip_ranking: str | Sequence[str | None] | None = None,
        devices: Sequence[str | None] | None = None,
    ) -> list[Served]:
        """Each user's list now, best first: the lists of `recommend_detailed` without their
        signals and without a data frame around them (the live service's requests, which
        need neither; it passes the requests that queued while a batch ran together, which
        share most of a request's fixed costs), each item marked when exploration counts it
        as a new listing (only in lists that explore: the mask is not computed otherwise),
        each list with what served it (`Served`). `skip_ranking`: keep retrieval order, for
        this reason, or per user (None: rank that user; the service's requests that waited
        their ranking budget, ranked or not in the same pass). `devices`:
        each request's device, read by retrieval models that take one (the two-tower's user
        tower, trained on the device of the event it predicts; None: the user's last
        event's)."""
        if devices is not None and len(devices) != len(user_ids):
            raise ConfigError(f"got {len(devices)} devices for {len(user_ids)} users")
        self._check_request(k)
        if not user_ids:
            return []
        ids = pl.Series("user_id", list(user_ids), dtype=pl.String)
        moments = _moments(None, ids.len(), self._reference_ts)
        cfg = config or self.config
        wanted = None if regions is None else list(regions)
        out = self._chunk_lists(
            ids, k, False, wanted, moments, False, False, False, cfg, skip_ranking, devices
        )
        columns = np.asarray(out["item_idx"], dtype=np.int64)
        new = (
            self._new_items(float(moments[0]))[columns]
            if cfg.exploration_share > 0
            else np.zeros(len(columns), dtype=bool)
        )
        entries = [
            Listed(*entry)
            for entry in zip(
                self._item_names(out), out["score"], out["source"], new.tolist(), strict=True
            )
        ]
        ends = np.cumsum(out["list_length"]).tolist()
        return [
            Served(entries[a:b], served_by, degraded)
            for a, b, served_by, degraded in zip(
                [0, *ends[:-1]], ends, out["served_by"], out["degraded"], strict=True
            )
        ]

    def _frame(self, out: dict[str, list[Any]], with_signals: bool) -> pl.DataFrame:
        """`_chunk_lists` columns as the CONTRACT §2 frame (plus source and signals)."""
        columns = [
            pl.Series("user_id", out["user_id"], dtype=pl.String),
            pl.Series("item_id", self._item_names(out), dtype=pl.String),
            pl.Series("rank", out["rank"], dtype=pl.Int32),
            pl.Series("score", out["score"], dtype=pl.Float64),
        ]
        if with_signals:
            columns.append(pl.Series("source", out["source"], dtype=pl.String))
            columns.append(pl.Series("signals", out["signals"], dtype=pl.String))
        return pl.DataFrame(columns)

    def _chunk_lists(
        self,
        ids: pl.Series,
        k: int,
        include_seen: bool,
        regions: list[str | None] | None,
        moments: np.ndarray,
        timed: bool,
        explain: bool,
        with_signals: bool,
        cfg: PipelineConfig | None,
        skip_ranking: str | Sequence[str | None] | None = None,
        devices: Sequence[str | None] | None = None,
    ) -> dict[str, list[Any]]:
        """The lists of a chunk of users as columns (user_id, item_idx, rank, score, source,
        signals), every step of the pipeline included; per user: `list_length` (its rows),
        `served_by` and `degraded` (`Served`). `skip_ranking`: the reason to keep
        retrieval order, `devices`: each request's (`recommend_many`)."""
        started = time.perf_counter()
        assert self._seen is not None and self.stats is not None
        cfg, retrieval = cfg or self.config, self.retrieval
        rows = retrieval.user_rows(ids)
        n_items = retrieval.n_items
        exclude = (
            sp.csr_matrix((ids.len(), n_items), dtype=np.float32)
            if include_seen
            else self._seen.exclusion(rows, cfg.exclude_events)
        )
        k = min(int(k), n_items)
        region_idx = retrieval.regions_of(rows, regions)
        wanted = max(cfg.candidates, k)
        at = moments if timed or self._clock_moved else None
        notes: dict[str, str] = {}  # degradations: signal name → reason
        try:
            columns, retrieval_scores = retrieval.top_items(
                rows, region_idx, wanted, at, exclude, devices=devices
            )
            cold = self._served_by_fallback(rows)
        except Exception as exc:  # degrade: the popularity of the user's region
            notes["retrieval_failed"] = f"{type(exc).__name__}: {exc}"
            log.warning(
                "retrieval failed for %d user(s) (%s); serving the popularity fallback of "
                "their regions",
                ids.len(),
                notes["retrieval_failed"],
            )
            columns, retrieval_scores = retrieval.fallback_items(
                rows, region_idx, wanted, at, exclude
            )
            cold = np.ones(len(rows), dtype=bool)
        retrieved = time.perf_counter()
        scored = None
        active = self.ranking is not None and self.ranking.active
        # the caller's per-user decisions (requests past their deadline): no warning per
        # list, the service counts them (`served_by`, `degraded` in its metrics)
        skips = _per_user(skip_ranking, len(rows)) if active else [None] * len(rows)
        wanted_rows = np.array([u for u, skip in enumerate(skips) if skip is None], dtype=np.int64)
        #: each user's row in `scored` (-1: not ranked)
        position = np.full(len(rows), -1, dtype=np.int64)
        if self.ranking is not None and not notes and len(wanted_rows):
            spent = (time.perf_counter() - started) * 1000.0
            # a replay at given moments (`at`: offline evaluation) has no deadline
            budget = None if cfg.rank_budget_ms is None or timed else cfg.rank_budget_ms * len(rows)
            if budget is not None and spent > budget:
                notes["ranker_skipped"] = (
                    f"budget: {spent:.1f} ms spent before ranking (budget {budget:g} ms)"
                )
            else:
                # only the users still within their deadline, in the same pass
                some = len(wanted_rows) < len(rows)
                part = wanted_rows if some else slice(None)
                try:
                    scored = self.ranking.score(
                        retrieval,
                        rows[part],
                        region_idx[part],
                        moments[part],
                        columns[part],
                        retrieval_scores[part],
                    )
                    position[wanted_rows] = np.arange(len(wanted_rows))
                except Exception as exc:
                    notes["ranker_skipped"] = f"error: {type(exc).__name__}: {exc}"
            if "ranker_skipped" in notes:
                log.warning(
                    "ranking skipped for %d user(s) (%s); serving retrieval order",
                    ids.len(),
                    notes["ranker_skipped"],
                )
        scores = retrieval_scores.astype(np.float64)
        if scored is not None:
            scores[wanted_rows] = scored.scores
        rank_done = time.perf_counter()
        out: dict[str, list[Any]] = {
            name: []
            for name in (
                *("user_id", "item_idx", "rank", "score", "source", "signals"),
                *("list_length", "served_by", "degraded"),
            )
        }
        for u, user in enumerate(ids.to_list()):
            before = len(out["item_idx"])
            user_notes = notes
            if skips[u] is not None and not notes:
                user_notes = {"ranker_skipped": skips[u]}
            ranked = self.ranking is not None and not user_notes
            seed = (cfg.seed, int(rows[u]) + 1, int(np.nan_to_num(moments[u])))
            explorer = ThompsonExplorer(
                cfg.exploration_prior, self.stats, np.random.default_rng(seed)
            )
            valid = np.flatnonzero(np.isfinite(retrieval_scores[u]))
            self._one_list(
                out,
                user,
                columns[u, valid],
                scores[u, valid],
                retrieval_scores[u, valid],
                valid + 1,
                k,
                explorer,
                partial(self._exploration_pool, int(region_idx[u]), float(moments[u])),
                exclude.indices[exclude.indptr[u] : exclude.indptr[u + 1]],
                moment=moments[u],
                source="fallback" if cold[u] else "retrieval",
                why=None
                if not explain or scored is None or scored.features is None or not ranked
                else partial(self.ranking.explain, scored, int(position[u])),  # type: ignore[union-attr]
                ranked=ranked,
                notes=user_notes if with_signals else None,
                with_signals=with_signals,
                cfg=cfg,
            )
            out["list_length"].append(len(out["item_idx"]) - before)
            # with an active ranker, ordered by it; a scorer's popularity fallback says so
            order = "ranker" if ranked and active else "retrieval"
            out["served_by"].append("fallback" if cold[u] else order)
            out["degraded"].append(dict(user_notes) if user_notes else None)
        if self.on_stage is not None:
            self.on_stage("retrieve", retrieved - started)
            self.on_stage("rank", rank_done - retrieved)
            self.on_stage("finish", time.perf_counter() - rank_done)
        return out

    def _exploration_pool(self, region: int, moment: float) -> ExplorationPool:
        """What exploration may pick in a region at a moment: new items (`_new_items`)
        sellable there. Kept for the last few (region, moment) pairs while the catalogue's
        sellable matrix and the exploration statistics are unchanged (their versions), so a
        request's exploration reads no catalogue-sized array."""
        assert self.stats is not None
        retrieval, stats = self.retrieval, self.stats
        new = self._new_items(moment)
        key = (region, moment, retrieval.sellable_version, stats.version)
        cache = self._pool_cache
        hit = cache.get(key)
        if hit is not None and hit[0] is new and hit[1] is stats and hit[2] is retrieval:
            return hit[3]
        pool = ExplorationPool.build(retrieval.sellable(np.array([region]))[0] & new, stats)
        if len(cache) >= 16:
            cache.pop(next(iter(cache)))
        cache[key] = (new, stats, retrieval, pool)
        return pool

    def _served_by_fallback(self, rows: np.ndarray) -> np.ndarray:
        """Users the retrieval model answers with its popularity fallback (no history, and a
        scorer that cannot embed users without one)."""
        if getattr(self.retrieval.scorer, "handles_cold_users", False):
            return np.zeros(len(rows), dtype=bool)
        history = self.retrieval._history
        assert history is not None
        counts = np.diff(history.indptr)
        return (rows < 0) | (counts[np.maximum(rows, 0)] == 0)

    def _one_list(
        self,
        out: dict[str, list[Any]],
        user: str,
        columns: np.ndarray,
        scores: np.ndarray,
        retrieval_score: np.ndarray,
        retrieval_rank: np.ndarray,
        k: int,
        explorer: ThompsonExplorer,
        pool: Callable[[], ExplorationPool],
        excluded: np.ndarray,
        moment: float,
        source: str,
        why: Callable[[np.ndarray], list[dict[str, float]]] | None = None,
        ranked: bool = True,
        notes: dict[str, str] | None = None,
        with_signals: bool = True,
        cfg: PipelineConfig | None = None,
    ) -> None:
        """One user's list, appended to the `out` columns; `why(positions)` gives the
        ranker's top signal groups of those candidates (None without a ranker);
        `pool()` what exploration may pick in the user's region, less `excluded` (the
        user's excluded columns, ascending) and the list's own items."""
        cfg, info = cfg or self.config, self._items
        assert info is not None
        n_explore = explorer.slots(k, cfg.exploration_share)
        order = self._diversify(columns, scores, k, cfg)
        picked = columns[order]
        reasons = why(order[: k - n_explore]) if why is not None else []
        entries: list[tuple[int, float, str, dict[str, Any] | None]] = []
        for j, (item, raw, p) in enumerate(
            zip(picked.tolist(), scores[order].tolist(), order.tolist(), strict=True)
        ):
            signals = None
            if with_signals:
                signals = {
                    "retrieval_score": round(float(retrieval_score[p]), 6),
                    "retrieval_rank": int(retrieval_rank[p]),
                }
                if self.ranking is not None and ranked:
                    signals["ranker_score"] = round(raw, 6)
                if j < len(reasons):
                    signals["top_signals"] = reasons[j]
                if notes:
                    signals.update(notes)
            entries.append((item, raw, source, signals))
        if n_explore and cfg.exploration_share > 0:
            removed = np.concatenate([excluded, picked[: k - n_explore]])
            pick = explorer.pick_from(pool(), removed, n_explore)
            kept = entries[: k - len(pick.items)]
            for spot, item, draw in zip(
                exploration_positions(len(kept) + len(pick.items), len(pick.items)),
                pick.items,
                pick.draws,
                strict=False,
            ):
                signals = None
                if with_signals:
                    signals = {
                        "thompson_draw": round(float(draw), 6),
                        "impressions": int(self.stats.impressions[item]) if self.stats else 0,
                        "clicks": int(self.stats.clicks[item]) if self.stats else 0,
                        "listed_days_ago": _days(moment - info.listed_at[item]),
                    }
                kept.insert(int(spot), (int(item), float("nan"), "exploration", signals))
            entries = kept
        cap = float("inf")
        for rank, (item, raw, item_source, signals) in enumerate(entries[:k], start=1):
            if np.isfinite(raw):
                cap = min(cap, raw)
            out["user_id"].append(user)
            out["item_idx"].append(item)
            out["rank"].append(rank)
            out["score"].append(cap if np.isfinite(cap) else 0.0)
            out["source"].append(item_source)
            out["signals"].append(json.dumps(signals) if signals is not None else None)

    def _diversify(
        self, columns: np.ndarray, scores: np.ndarray, k: int, cfg: PipelineConfig
    ) -> np.ndarray:
        info = self._items
        assert info is not None
        if cfg.diversity == "mmr" and cfg.diversity_strength > 0:
            return mmr_order_by_category(
                scores,
                info.category[columns],
                info.top_category[columns],
                k,
                cfg.diversity_strength,
            )
        if cfg.diversity == "category-cap":
            return capped_order(scores, info.category[columns], k, cfg.category_cap)
        return np.argsort(-scores, kind="stable")[:k]

    def _new_items(self, moment: float) -> np.ndarray:
        """Items listed within `new_item_days` before the moment, or never interacted with in
        training; never items listed after the moment."""
        info = self._items
        assert info is not None
        # kept for the last few moments (a live service ranks at one "now" for many
        # requests); a new `ItemInfo` (products listed live) or setting starts over
        key = (info, self.config.new_item_days)
        cache = self.__dict__.get("_new_cache")
        if cache is None or cache[0][0] is not info or cache[0][1] != key[1]:
            cache = (key, {})
            self.__dict__["_new_cache"] = cache
        masks: dict[float, np.ndarray] = cache[1]
        mask = masks.get(moment)
        if mask is None:
            listed = info.listed_at
            age = moment - listed
            days = self.config.new_item_days * 86_400.0
            recent = np.isfinite(age) & (age >= 0) & (age <= days)
            not_yet = np.isfinite(age) & (age < 0)
            mask = (recent | (info.train_events == 0)) & ~not_yet
            mask.flags.writeable = False
            if len(masks) >= 4:
                masks.pop(next(iter(masks)))
            masks[float(moment)] = mask
        return mask

    # ----------------------------------------------------------------- live updates
    def absorb(self, events: pl.DataFrame) -> None:
        """Events that arrived after training (canonical columns), taken in without
        retraining: retrieval reads the new histories (`CollaborativeRecommender.absorb`), the
        rules leave out what each user just touched, the ranker's user counters, affinities
        and item trends count the events, and clicks on items feed exploration. Lists are
        ranked from then on at the latest event's moment (the service's clock)."""
        if self._seen is None or self.stats is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        if events.height == 0:
            return
        rows = self.retrieval.absorb(events)
        cols = self.retrieval.item_columns(events.get_column("item_id"))
        kind = events.get_column("event")
        on_item = (cols >= 0) & (kind != "search").to_numpy()
        n_users = self.retrieval.n_users
        self._seen = self._seen.with_events(
            rows[on_item], cols[on_item], kind.filter(pl.Series(on_item)).to_list(), n_users
        )
        ts = epoch_seconds(events.get_column("ts"))
        if self.ranking is not None:
            value = (
                events.get_column("value").cast(pl.Float64).fill_null(0.0).to_numpy()
                if "value" in events.columns
                else np.zeros(events.height)
            )
            self.ranking.state = self.ranking.state.absorb(
                rows[on_item],
                cols[on_item],
                ts[on_item],
                kind.to_numpy()[on_item],
                value[on_item],
                n_users,
            )
        engaged = on_item & kind.is_in(list(ENGAGEMENT)).to_numpy()
        self.stats.record(np.zeros(0, dtype=np.int64), cols[engaged])
        self._follow_clock()

    def record_impressions(
        self, shown: Mapping[str, int], clicked: Mapping[str, int] | None = None
    ) -> None:
        """Items shown to users and items clicked (id → times), for exploration's posterior:
        an explored item shown often without a click draws lower (unknown ids are ignored).
        `absorb` counts the clicks of live events itself; `clicked` is for a model that
        starts from a log's counts (`online.retrain.carry_exploration`)."""
        if self.stats is None:
            return

        def known(counts: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
            if not counts:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            cols = self.retrieval.item_columns(pl.Series(list(counts), dtype=pl.String))
            times = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
            return cols[cols >= 0], times[cols >= 0]

        self.stats.add(*known(shown), *known(clicked or {}))

    def _follow_clock(self) -> None:
        """Rank at the retrieval model's clock once live events or listings moved it past
        the training data (a product listed "now" exists only from now on)."""
        clock = self.retrieval.clock
        if np.isfinite(clock) and not clock <= self._reference_ts:
            self._reference_ts = clock
            self._clock_moved = True

    def delist(self, item_ids: Sequence[str]) -> None:
        """Never recommend these items again (retrieval leaves them out, so no later step
        can bring them back; exploration draws only from sellable items)."""
        self.retrieval.delist(item_ids)

    def upsert_items(self, items: pl.DataFrame) -> list[str]:
        """Create or replace products (see `CollaborativeRecommender.upsert_items`): a new
        product gets a column in every step after retrieval too, and counts as new for
        exploration. Returns the ids this call created."""
        assert self._seen is not None and self._items is not None and self.stats is not None
        created = self.retrieval.upsert_items(items)
        self._follow_clock()
        if not created:
            return created
        n_items = self.retrieval.n_items
        added = n_items - len(self.stats.impressions)
        self._seen = self._seen.grown(self.retrieval.n_users, n_items)
        listed = self.retrieval.listed_at[-added:]
        info = self._items
        # category codes are those of training; a product listed live has code 0 (none)
        self._items = ItemInfo(
            np.r_[info.category, np.zeros(added, np.int64)],
            np.r_[info.top_category, np.zeros(added, np.int64)],
            np.r_[info.listed_at, listed],
            np.r_[info.train_events, np.zeros(added, np.int64)],
        )
        self.stats = ExplorationStats(
            np.r_[self.stats.impressions, np.zeros(added, np.int64)],
            np.r_[self.stats.clicks, np.zeros(added, np.int64)],
        )
        if self.ranking is not None:
            fresh = items.filter(pl.col("item_id").is_in(created)).unique(
                "item_id", keep="last", maintain_order=True
            )
            self.ranking.state = self.ranking.state.with_items(fresh, listed)
        return created

    def upsert_users(self, users: pl.DataFrame) -> None:
        """Profile updates: new users get a row everywhere, a region becomes the home region
        of retrieval and of the ranker's features."""
        rows = self.retrieval.upsert_users(users)
        assert self._seen is not None
        n_users = self.retrieval.n_users
        self._seen = self._seen.grown(n_users, self.retrieval.n_items)
        if self.ranking is not None:
            state = self.ranking.state.with_users(n_users)
            if "region" in users.columns:
                region = self.retrieval.regions_of(rows)
                known = region < len(self.retrieval.region_names)
                state = state.with_user_regions(rows, np.where(known, region, -1))
            self.ranking.state = state

    def networks(self) -> dict[str, Any]:
        """The networks a request runs, by name: the retrieval scorer's (a two-tower's user
        tower) and the ranker."""
        get = getattr(self.retrieval.scorer, "serving_networks", None)
        found = dict(get()) if get is not None else {}
        if self.ranking is not None:
            found["ranker"] = self.ranking.model
        return found

    def warm_up(self) -> None:
        """Answer a list for one user and one pass over a known and a new user, and throw
        them away: a model's first requests build its lazy caches (the new items' vectors,
        masks, search keys) and export its networks to ONNX, one variant per kind of pass
        (one user's candidates share a history; a batch of users' do not), which cost 18 ms
        against 3 at 100k items for the caches and seconds for the exports. Done before a
        model serves (`online.live`), and before a version is saved for serving, so its
        folder carries the exports (`save`)."""
        users = self.retrieval.user_ids
        known = [users[0]] if len(users) else []
        new = f"warm-up-{uuid.uuid4().hex}"
        self.recommend_one([*known, new][0], 10)
        self.recommend_many([*known, new], 10)

    def save(self, folder: str | Path) -> Path:
        """Write the model to `folder`, with the ONNX exports of its networks made so far
        (`warm_up` makes them): a worker that loads the folder then exports nothing."""
        if self._seen is None or self._items is None or self.stats is None:
            raise ModelError(f"model '{self.name}' is not fitted")
        out = Path(folder)
        self.retrieval.save(out / "retrieval")
        manifest = {
            "format": FORMAT,
            "config": self.config.model_dump(mode="json"),
            "reference_ts": self._reference_ts,
            "created_at": datetime.now(UTC).isoformat(),
        }
        if self.ranking is not None:
            self.ranking.save(out / "ranking")
            manifest["ranking"] = (
                self.ranking_params.model_dump(mode="json") if self.ranking_params else {}
            )
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        np.savez(
            out / "pipeline.npz",
            **{f"seen/{k}": v for k, v in self._seen.arrays().items()},
            **self._items.arrays(),
            impressions=self.stats.impressions,
            clicks=self.stats.clicks,
        )
        save_exports(self.networks(), out / EXPORTS)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> Recommender:
        path = Path(folder)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: not a pipeline model folder ({exc})") from exc
        if manifest.get("format") != FORMAT:
            raise ModelError(f"{path / MANIFEST}: not a marketrec pipeline manifest")
        ranking = manifest.get("ranking")
        model = cls(
            load_model(path / "retrieval"),
            PipelineConfig(**manifest["config"]),
            None if ranking is None else RankingParams(**ranking),
        )
        if ranking is not None:
            model.ranking = RankingStage.load(path / "ranking")
        with np.load(path / "pipeline.npz", allow_pickle=False) as arrays:
            a = dict(arrays)
        model._seen = SeenItems.from_arrays(
            {k.removeprefix("seen/"): v for k, v in a.items() if k.startswith("seen/")}
        )
        model._items = ItemInfo.from_arrays(a)
        model.stats = ExplorationStats(a["impressions"], a["clicks"])
        model._reference_ts = float(manifest["reference_ts"])
        load_exports(model.networks(), path / EXPORTS)
        return model


def _per_user(reason: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    """`skip_ranking` as one reason (or None) per user."""
    if reason is None or isinstance(reason, str):
        return [reason] * n
    if len(reason) != n:
        raise ConfigError(f"got {len(reason)} ranking skips for {n} users")
    return list(reason)


def _moments(at: Sequence[datetime | None] | None, n: int, reference: float) -> np.ndarray:
    if at is None:
        return np.full(n, reference)
    return np.array([reference if t is None else t.timestamp() for t in at], dtype=np.float64)


def _days(seconds: float) -> float | None:
    return round(seconds / 86_400.0, 2) if np.isfinite(seconds) else None


def load_recommender(folder: str | Path) -> Recommender | CollaborativeRecommender:
    """Any model folder: a pipeline (two-stage) or a single model."""
    path = Path(folder)
    if (path / MANIFEST).exists():
        return Recommender.load(path)
    return load_model(path)


def fine_tuned(
    previous: Recommender | CollaborativeRecommender,
    data: Dataset,
    since_ts: float,
    epochs: int = 1,
    learning_rate_scale: float = 0.1,
) -> Recommender | CollaborativeRecommender:
    """A new model of `previous`'s kind fitted on `data` by fine-tuning `previous` on the
    events at or after `since_ts` (the ones it has not seen): the towers start from its
    weights, the ranker from its ranker, trained on the lists `previous` would have served
    at the window's start. Much cheaper than `fit`, and id embeddings follow the stream.
    `previous` must be as loaded from its folder (not grown by live updates)."""
    if isinstance(previous, CollaborativeRecommender):
        model = unfitted_like(previous)
        model.fine_tune_from(previous, since_ts, epochs, learning_rate_scale)
        return model.fit(data)
    retrieval = unfitted_like(previous.retrieval)
    retrieval.fine_tune_from(previous.retrieval, since_ts, epochs, learning_rate_scale)
    retrieval.fit(data)
    tuned = Recommender(retrieval, previous.config, previous.ranking_params)
    tuned._index(data)
    if previous.ranking is not None and previous.ranking_params is not None:
        tuned.ranking = fine_tune_ranking_stage(
            previous.ranking,
            previous.retrieval,
            retrieval,
            data,
            since_ts,
            previous.ranking_params,
            epochs,
            learning_rate_scale,
        )
    return tuned
