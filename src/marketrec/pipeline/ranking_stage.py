"""The ranking stage inside the pipeline: how the re-ranker is trained and applied.

Training follows how it will be used. The training data is cut in time: a retrieval model of
the same kind learns from the events before the cut, retrieves candidates for the users active
after it, and the re-ranker learns which of those candidates (plus random items) the users
then interacted with, from features computed as of the cut. A ranker trained on candidates of
a retrieval model that had already seen those interactions would learn to trust retrieval
scores that are too good to be true.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from marketrec.core.errors import ModelError
from marketrec.data.schema import Dataset
from marketrec.data.split import split_global, split_leave_one_out, split_per_user
from marketrec.features.interactions import DEFAULT_EVENT_WEIGHTS
from marketrec.models.base import CollaborativeRecommender
from marketrec.models.registry import create, make_params, unfitted_like
from marketrec.ranking.companion import Companion
from marketrec.ranking.features import (
    Cooccurrence,
    Features,
    RankingState,
    Rows,
    compute_features,
)
from marketrec.ranking.model import Ranker
from marketrec.ranking.training import (
    RankerConfig,
    RankerReport,
    explain,
    predict,
    ranker_for,
    train_ranker,
)

log = logging.getLogger(__name__)


class RankingParams(BaseModel):
    """How the ranking stage is trained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: float = Field(default=0.2, gt=0, lt=1)
    """Share of the events the re-ranker learns from: each user's latest (`per-user`) or the
    whole marketplace's latest (`global`)."""
    window_mode: Literal["per-user", "global", "leave-one-out"] = "per-user"
    """per-user: every user with enough events gives a list (many lists even where each user
    is active only briefly, as in MovieLens); global: one cut in time for everybody (the
    window then holds new users too, so the ranker learns cold starts); leave-one-out: each
    user's last event (sequence data)."""
    candidates: int = Field(default=300, gt=0)
    """Retrieved candidates per user in the ranker's training lists."""
    random_negatives: int = Field(default=10, ge=0)
    max_users: int = Field(default=10_000, gt=0)
    min_rating: float = 4.0
    """Ratings below this are not positives (as in the offline targets)."""
    epochs: int = Field(default=20, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    dropout: float = Field(default=0.3, ge=0, lt=1)
    embedding_dropout: float = Field(default=0.5, ge=0, lt=1)
    """Share of the embeddings (item, category, brand, context, pooled history) blanked per
    training row. On ml-100k the tables memorised the window's items: the ranker's mean
    validation gain over the two-tower's order was +0.002 with them as they were, +0.013
    with every embedding blanked, and +0.012 with this dropout (four draws of the held-out
    lists each)."""
    weight_decay: float = Field(default=1e-3, ge=0)
    time_features: bool = True
    """False for data whose event times are only each user's order (sequence datasets): the
    features that read the clock (activity windows, recency, age, hour, weekday) are then
    left out instead of read from an invented clock, as the two-tower's `time_features`."""
    companion: Literal["auto", "ease", "itemknn", "none"] = "auto"
    """A second retrieval model whose score of each candidate the ranker reads (see
    `marketrec.ranking.companion`): auto = EASE up to 15,000 items, none above (EASE's
    inverse grows with the cube of the catalogue, item-kNN's fit with its square, minutes
    at 100k items, and the co-occurrence features already give the ranker item-to-item
    similarity there)."""
    companion_params: dict[str, Any] = Field(default_factory=dict)
    """Its hyper-parameters (the model's defaults where empty)."""
    folds: int = Field(default=4, ge=1)
    """Windows with at most `folds_max_lists` lists measure the ranker's gain over retrieval
    order out of fold over every list (`train_ranker`); larger ones on one held-out quarter,
    which is then enough lists (and the folds would cost `folds` + 1 fits)."""
    folds_max_lists: int = Field(default=5_000, ge=0)

    @model_validator(mode="after")
    def _companion_params_fit_the_companion(self) -> RankingParams:
        """Wrong companion settings fail here, with their names, not after retrieval trained."""
        if self.companion != "none" and self.companion_params:
            make_params(
                "ease" if self.companion == "auto" else self.companion, self.companion_params
            )
        return self

    keep_t: float = 1.645
    """The ranker is kept when its per-list validation gain over retrieval order has at least
    this t statistic (1.645: one-sided 95%); -inf keeps it always."""
    seed: int = 0


@dataclass(frozen=True)
class Scored:
    """Ranker scores of candidates, and the features behind them (for explanations)."""

    scores: np.ndarray  # (B, N)
    features: Features | None
    row_of: np.ndarray | None  # (B, N) row in `features`, -1 = none


class RankingStage:
    """A trained re-ranker and the state its features read."""

    def __init__(
        self,
        model: Ranker,
        state: RankingState,
        config: RankerConfig,
        active: bool = True,
        time_features: bool = True,
    ) -> None:
        self.model = model
        self.state = state
        self.config = config
        self.time_features = time_features
        self.report = RankerReport()
        self.active = active
        """False when the ranker did not order its validation lists better than retrieval
        did: the stage then keeps retrieval order rather than ship a ranker that hurts."""

    def score(
        self,
        retrieval: CollaborativeRecommender,
        rows: np.ndarray,
        region_idx: np.ndarray,
        moments: np.ndarray,
        columns: np.ndarray,
        scores: np.ndarray,
    ) -> Scored:
        """Ranker scores (B, N) for each user's retrieved candidates: `columns`/`scores`
        (B, N) from `CollaborativeRecommender.top_items` (-inf = no candidate, kept -inf);
        without an active ranker, the retrieval scores."""
        valid = np.isfinite(scores)
        if not self.active or not valid.any():
            return Scored(scores.astype(np.float64), None, None)
        user_pos, cand_pos = np.nonzero(valid)
        n_regions = len(retrieval.region_names)
        region_code = np.where(region_idx < n_regions, region_idx + 1, 0)
        features = compute_features(
            self.state,
            Rows(
                user=rows[user_pos],
                item=columns[user_pos, cand_pos],
                at=moments[user_pos],
                region=region_code[user_pos].astype(np.int64),
                device=np.zeros(len(user_pos), dtype=np.int64),
                retrieval_score=scores[user_pos, cand_pos].astype(np.float64),
                retrieval_rank=(cand_pos + 1).astype(np.float64),
                sellable=retrieval.sellable_pairs(
                    region_idx[user_pos], columns[user_pos, cand_pos]
                ),
                group=user_pos,
            ),
            timed=self.time_features,
        )
        out = np.full(scores.shape, -np.inf, dtype=np.float64)
        out[user_pos, cand_pos] = predict(self.model, features, fast=True)
        row_of = np.full(scores.shape, -1, dtype=np.int64)
        row_of[user_pos, cand_pos] = np.arange(len(user_pos))
        return Scored(out, features, row_of)

    def explain(self, scored: Scored, user: int, candidates: np.ndarray) -> list[dict[str, float]]:
        """The top signal groups behind each of a user's chosen candidates (positions)."""
        if scored.features is None or scored.row_of is None or len(candidates) == 0:
            return [{} for _ in candidates]
        return explain(self.model, scored.features.take(scored.row_of[user, candidates]))

    # ----------------------------------------------------------------- persistence
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / "ranker.pt")
        arrays = {k: v for k, v in self.state.__dict__.items() if isinstance(v, np.ndarray)}
        arrays["counter_codes"] = self.state.item_counter.codes
        arrays["counter_times"] = self.state.item_counter.times
        if self.state.cooccurrence is not None:
            for name, values in self.state.cooccurrence.to_arrays().items():
                arrays[f"cooc_{name}"] = values
        if self.state.companion is not None:
            for name, values in self.state.companion.to_arrays().items():
                arrays[f"companion_{name}"] = values
        np.savez(folder / "ranking_state.npz", **arrays)
        meta = {
            "config": self.config.__dict__,
            "cardinality": self.state.cardinality,
            "active": self.active,
            "time_features": self.time_features,
            "report": stage_summary(self),
        }
        (folder / "ranker.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> RankingStage:
        from marketrec.features.activity import ActivityCounter

        meta = json.loads((folder / "ranker.json").read_text())
        config = RankerConfig(**meta["config"])
        with np.load(folder / "ranking_state.npz", allow_pickle=False) as arrays:
            a = dict(arrays)
        counter = ActivityCounter(a.pop("counter_codes"), a.pop("counter_times"))
        cooc = _prefixed(a, "cooc_")
        companion = _prefixed(a, "companion_")
        state = RankingState(
            **a,
            item_counter=counter,
            cardinality=meta["cardinality"],
            cooccurrence=Cooccurrence.from_arrays(cooc) if cooc else None,
            companion=Companion.from_arrays(companion) if companion else None,
        )
        model = ranker_for(config, state.cardinality)
        weights = torch.load(folder / "ranker.pt", weights_only=True)
        saved = weights.get("mean")
        if saved is not None and saved.shape != model.mean.shape:
            # the feature set grew since (co-occurrence features: 27 numeric, before 24;
            # the companion's: 29)
            raise ModelError(
                f"the ranker in {folder} was trained on {saved.shape[0]} numeric features, "
                f"this version computes {model.mean.shape[0]}: retrain the model "
                "(marketrec train ... --model two-stage)"
            )
        model.load_state_dict(weights)
        model.eval()
        return cls(
            model,
            state,
            config,
            bool(meta.get("active", True)),
            bool(meta.get("time_features", True)),
        )


def _prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Pops the arrays saved under `prefix`, without it."""
    names = [k for k in arrays if k.startswith(prefix)]
    return {k.removeprefix(prefix): arrays.pop(k) for k in names}


def companion_kind(kind: str, n_items: int) -> str | None:
    """The model a `RankingParams.companion` names for a catalogue of `n_items` (None: none)."""
    if kind == "none":
        return None
    if kind == "auto":
        return "ease" if n_items <= EASE_MAX_ITEMS else None
    return kind


#: "auto" picks EASE up to this many items (its items × items inverse takes seconds to a minute
#: there, and grows with the cube of the catalogue)
EASE_MAX_ITEMS = 15_000


def fit_companion(params: RankingParams, data: Dataset, item_ids: pl.Series) -> Companion | None:
    """The companion of `params` fitted on `data`, its weights moved to `item_ids` (the
    retrieval model's columns; items it never saw get no weights)."""
    kind = companion_kind(params.companion, item_ids.len())
    if kind is None:
        return None
    model = create(kind, params.companion_params).fit(data)
    scorer: Any = model.scorer  # EASEScorer or ItemKNNScorer
    weights = scorer.item_to_item()
    own = model.item_columns(item_ids)
    ok = own >= 0
    cols = np.flatnonzero(ok)
    if sp.issparse(weights):
        move = sp.csr_matrix(
            (np.ones(len(cols), np.float32), (own[ok], cols)),
            shape=(weights.shape[0], item_ids.len()),
        )
        aligned = (move.T @ weights @ move).tocsr().astype(np.float32)
        aligned.sort_indices()
        return Companion(kind, aligned)
    dense = np.zeros((item_ids.len(), item_ids.len()), dtype=np.float32)
    dense[np.ix_(cols, cols)] = weights[np.ix_(own[ok], own[ok])]
    return Companion(kind, dense)


def _rows_for(
    retrieval: CollaborativeRecommender,
    candidates: pl.DataFrame,
    user_ids: pl.Series,
    moments: np.ndarray,
) -> Rows:
    """Feature rows of training lists: candidates of `user_ids` (home regions, a moment per
    user); each user's rows form one list."""
    position = pl.DataFrame({"user_id": user_ids}).with_row_index("p").unique("user_id")
    per_row = candidates.join(position, on="user_id", how="left", maintain_order="left")
    p = per_row.get_column("p").to_numpy().astype(np.int64)
    region_idx = retrieval.region_index(user_ids)
    n_regions = len(retrieval.region_names)
    region_code = np.where(region_idx < n_regions, region_idx + 1, 0)[p]
    items = retrieval.item_columns(candidates.get_column("item_id"))
    sellable = retrieval.sellable_pairs(region_idx[p], items)
    score = candidates.get_column("score").to_numpy().astype(np.float64)
    rank = candidates.get_column("rank").to_numpy().astype(np.float64)
    return Rows(
        user=retrieval.user_rows(user_ids)[p],
        item=items,
        at=moments[p],
        region=region_code.astype(np.int64),
        device=np.zeros(len(p), dtype=np.int64),
        retrieval_score=np.where(rank > 0, score, np.nan),
        retrieval_rank=rank,
        sellable=sellable,
        group=p,
    )


def fit_ranking_stage(
    retrieval: CollaborativeRecommender, data: Dataset, params: RankingParams
) -> RankingStage:
    """Train the re-ranker for a fitted `retrieval` model (see the module docstring)."""
    if params.window_mode == "global":
        split = split_global(data, quantile=1.0 - params.window)
    elif params.window_mode == "leave-one-out":
        split = split_leave_one_out(data)
    else:
        split = split_per_user(data, test_fraction=params.window)
    early, late = split.train, split.test.events.filter(pl.col("item_id").is_not_null())
    log.info("ranking stage: retrieval for the ranker's window (%s)", split.description)
    early_model = unfitted_like(retrieval).fit(early)
    return _train_stage(
        retrieval,
        early_model,
        early,
        late,
        data,
        params,
        params.window_mode,
        early_companion=fit_companion(params, early, retrieval.item_ids),
    )


def fine_tune_ranking_stage(
    previous: RankingStage,
    previous_retrieval: CollaborativeRecommender,
    retrieval: CollaborativeRecommender,
    data: Dataset,
    since_ts: float,
    params: RankingParams,
    epochs: int = 1,
    learning_rate_scale: float = 0.1,
) -> RankingStage:
    """Fine-tune `previous`'s ranker on what happened at or after `since_ts`.

    The retrieval model that was serving then (`previous_retrieval`, trained on the events
    before `since_ts`) is exactly the "earlier" model the ranker must learn to re-rank, so
    no second retrieval model is trained: its candidates at the window's start, labelled by
    the window's events, are the new lists; features read the events before the window.
    `retrieval` is the fine-tuned model the stage will serve behind. Whether the ranker
    serves (rather than retrieval order) stays `previous`'s decision, made on the full
    training window: a micro-batch's few lists are too noisy to overturn it."""
    cut = datetime.fromtimestamp(since_ts, UTC)
    early = dataclasses.replace(data, events=data.events.filter(pl.col("ts") < cut))
    late = data.events.filter((pl.col("ts") >= cut) & pl.col("item_id").is_not_null())
    tuned = params.model_copy(
        update={"epochs": epochs, "learning_rate": params.learning_rate * learning_rate_scale}
    )
    return _train_stage(
        retrieval,
        previous_retrieval,
        early,
        late,
        data,
        tuned,
        "global",
        previous.model,
        previous.active,
        early_companion=previous.state.companion,
    )


def _train_stage(
    retrieval: CollaborativeRecommender,
    early_model: CollaborativeRecommender,
    early: Dataset,
    late: pl.DataFrame,
    data: Dataset,
    params: RankingParams,
    window_mode: str,
    init: Ranker | None = None,
    init_active: bool | None = None,
    early_companion: Companion | None = None,
) -> RankingStage:
    """The ranker's lists (early_model's candidates for the window's users plus random
    items, labelled by `late`), trained from scratch or from `init`; `early_companion`: the
    companion fitted on `early` (the training lists read it; serving gets one fitted on
    `data`)."""
    positives = _positives(late, early, params)
    users = positives.get_column("user_id").unique().sort()
    rng = np.random.default_rng(params.seed)
    if users.len() > params.max_users:
        users = users.gather(np.sort(rng.choice(users.len(), params.max_users, replace=False)))
    moment = _moments(early, users, window_mode)
    retrieved = early_model.recommend(
        users, params.candidates, at=[datetime.fromtimestamp(t, UTC) for t in moment]
    )
    n_items = retrieval.item_ids.len()
    randoms = pl.DataFrame(
        {
            "user_id": users.to_list() * params.random_negatives,
            "item_id": retrieval.item_ids.gather(
                rng.integers(0, n_items, users.len() * params.random_negatives)
            ),
            "rank": 0,
            "score": float("nan"),
        },
        schema=retrieved.schema,
    )
    lists = (
        pl.concat([retrieved, randoms])
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
        .join(positives, on=["user_id", "item_id"], how="left")
        .with_columns(pl.col("weight").fill_null(0.0))
        .sort("user_id", maintain_order=True)
    )
    # features of the ranker's lists read the events the early retrieval model saw, point in
    # time: with per-user windows that hides every user's window, exactly as a per-user
    # holdout hides every user's test events from serving. Built from all events instead,
    # item activity at a list's moment included other users' window events, which serving
    # under that protocol never sees: validation NDCG@10 rose (t 5.3) while test NDCG@10
    # fell (ml-100k P1u 0.157 vs retrieval 0.177). With a global window both are the same.
    state = RankingState.build(
        early, retrieval.user_ids, retrieval.item_ids, retrieval.region_names, early_companion
    )
    rows = _rows_for(retrieval, lists, users, moment)
    features = compute_features(state, rows, timed=params.time_features)
    labels = (lists.get_column("weight").to_numpy() > 0).astype(np.float32)
    weights = np.where(labels > 0, lists.get_column("weight").to_numpy(), 1.0)
    groups = rows.user
    log.info(
        "ranking stage: %s lists, %s rows, %.1f%% positive",
        f"{users.len():,}",
        f"{lists.height:,}",
        100 * labels.mean() if len(labels) else 0.0,
    )
    config = RankerConfig(
        epochs=params.epochs,
        learning_rate=params.learning_rate,
        dropout=params.dropout,
        embedding_dropout=params.embedding_dropout,
        weight_decay=params.weight_decay,
        folds=params.folds if users.len() <= params.folds_max_lists else 1,
        seed=params.seed,
    )
    rank = rows.retrieval_rank
    input_order = np.where(rank > 0, -rank, -1e9)
    model, report = train_ranker(
        features, labels, weights, groups, state.cardinality, config, input_order, init
    )
    # kept only when it beats retrieval order by more than the noise of the validation lists
    # (one-sided, lists as the unit): on small data a ranker's validation gain is often luck
    active = math.isnan(report.gain_t) or report.gain_t >= params.keep_t
    if init_active is not None:
        active = init_active
    elif not active:
        log.warning(
            "ranking stage: the ranker's validation NDCG@10 %.4f vs retrieval order %.4f "
            "(gain t = %.2f < %.2f); serving keeps retrieval order",
            report.best_ndcg,
            report.input_order_ndcg,
            report.gain_t,
            params.keep_t,
        )
    serving = RankingState.build(
        data,
        retrieval.user_ids,
        retrieval.item_ids,
        retrieval.region_names,
        # the features the ranker learnt from: no companion in training, none at serving
        None if early_companion is None else fit_companion(params, data, retrieval.item_ids),
    )
    stage = RankingStage(model, serving, config, active, params.time_features)
    stage.report = report
    return stage


def _moments(early: Dataset, users: pl.Series, mode: str) -> np.ndarray:
    """Each list's moment, epoch seconds: one second after the user's last event before the
    window (per-user) or after the last event before the cut (global)."""
    ts = early.events.select("user_id", t=pl.col("ts").dt.epoch("us").cast(pl.Float64) / 1e6)
    if mode == "global" or ts.height == 0:
        last = float(ts.get_column("t").max() or 0.0)
        return np.full(users.len(), last + 1.0)
    per_user = ts.group_by("user_id").agg(pl.col("t").max())
    joined = pl.DataFrame({"user_id": users}).join(
        per_user, on="user_id", how="left", maintain_order="left"
    )
    fallback = float(ts.get_column("t").max())
    return joined.get_column("t").fill_null(fallback).to_numpy() + 1.0


def _positives(late: pl.DataFrame, early: Dataset, params: RankingParams) -> pl.DataFrame:
    """(user_id, item_id, weight): what each user did in the window to items new to them,
    weighted by the strongest event (ratings below `min_rating` are not interest)."""
    weights = pl.DataFrame(
        {"event": list(DEFAULT_EVENT_WEIGHTS), "weight": list(DEFAULT_EVENT_WEIGHTS.values())}
    )
    interest = late
    if "value" in late.columns:
        interest = late.filter(
            (pl.col("event") != "rating") | (pl.col("value").fill_null(0) >= params.min_rating)
        )
    before = early.events.select("user_id", "item_id").unique()
    return (
        interest.join(weights, on="event", how="left")
        .with_columns(pl.col("weight").fill_null(1.0))
        .join(before, on=["user_id", "item_id"], how="anti")
        .group_by("user_id", "item_id")
        .agg(pl.col("weight").max())
    )


def stage_summary(stage: RankingStage) -> dict[str, Any]:
    r = stage.report
    return {
        "epochs_run": r.epochs_run,
        "best_epoch": r.best_epoch,
        "validation_ndcg@10": r.best_ndcg,
        "validation_ndcg@10_retrieval_order": r.input_order_ndcg,
        "validation_gain": r.gain,
        "validation_gain_t": r.gain_t,
    }
