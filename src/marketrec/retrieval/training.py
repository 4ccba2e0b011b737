"""Training the two towers on point-in-time examples, and computing vectors for serving.

One epoch visits every item event once as a target (seeded). Small catalogues (up to
`full_softmax_max_items`) train with the exact softmax: batches of examples close in time,
each scored against the whole catalogue as of its earliest example, leaving out of each row
what its user already touched, what was not listed yet and items no example ever chose.
Larger ones shuffle freely and score each batch's users against the batch's positives
(in-batch negatives), `random_negatives` items drawn uniformly from the catalogue and
optionally `hard_negatives` items from the positives' categories, with logQ correction and
accidental-hit masking. Ids are dropped at random
(`id_dropout`) so content and profile carry weight, and whole histories (`history_dropout`) so
the no-history path a new user takes is trained on every kind of target. Early stopping
watches Recall@100 of held-out last events of sampled users (leave-one-out); with `refit` the
model is then retrained on every example for the best number of epochs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Literal

import numpy as np
import torch

from marketrec.core.memory import keep_freed_memory
from marketrec.core.onnx_forward import onnx_forward
from marketrec.features.activity import ActivityCounter
from marketrec.retrieval.examples import (
    Sequences,
    history_window,
    query_window,
    training_targets,
)
from marketrec.retrieval.inputs import (
    SHARE_WINDOWS_DAYS,
    ItemInputs,
    UserInputs,
    age_bucket,
    share_bucket,
    share_level,
    trend_bucket,
)
from marketrec.retrieval.losses import full_softmax_loss, mixed_log_q, sampled_softmax_loss
from marketrec.retrieval.towers import (
    USER_INPUTS,
    TowerSizes,
    TwoTower,
    UserTower,
    UserTowerInference,
    dropout_mask,
    item_scores,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    dim: int = 64
    history: int = 20
    long_history: int = 200
    target_horizon: int = 0
    queries: int = 5
    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float = 3e-3
    id_learning_rate: float | None = None
    weight_decay: float = 1e-5
    dropout: float = 0.1
    temperature: float = 0.1
    random_negatives: int = 256
    hard_negatives: int = 0
    logq: bool = True
    full_softmax_max_items: int = 10_000
    batch_window_days: float = 30.0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    id_dropout: float = 0.6
    history_dropout: float = 0.1
    context_dropout: float = 0.5
    recency_half_life_days: float | None = None
    patience: int = 3
    weight_averaging: float = 1.0
    validation_fraction: float = 0.1
    validation_examples: int = 5000
    refit: bool = False
    max_minutes: float | None = None
    seed: int = 0


@dataclass(frozen=True)
class WarmStart:
    """Fine-tuning instead of training from scratch: start from a trained model's weights
    (same vocabularies, so the same shapes) and learn only from the targets at or after
    `since_ts` (the events the model has not seen), for `epochs` passes. Histories still
    read everything before each target, as in full training."""

    state: dict[str, torch.Tensor]
    since_ts: float
    epochs: int = 1
    #: the step size relative to training's: a fresh Adam's first steps move every weight
    #: by about the learning rate whatever its gradient's size (no moment estimates yet),
    #: a large jolt to weights that were already trained
    learning_rate_scale: float = 0.1
    #: False: the item tower's shared layers (everything but the item id table) and its
    #: untrained-item shift stay as they were, so an item's vector changes only when its id
    #: row, its inputs (trend, age, catalogue fields) or its trained flag do, and a new
    #: version re-embeds those items alone (`retrieval.reembedding`)
    item_layers: bool = True


@dataclass(frozen=True)
class TwoTowerData:
    """Everything the towers read, as arrays aligned with the model's vocabularies."""

    seq: Sequences
    items: ItemInputs
    users: UserInputs
    query_vectors: np.ndarray  # (n_queries + 1, text_dim); row 0 = no query
    item_trained: np.ndarray  # (n_items,) bool: item was a training target
    item_category: np.ndarray  # (n_items,) category code (for hard negatives)
    sizes: TowerSizes
    #: False when the event times carry no meaning across users (sequence datasets whose
    #: `ts` is only each user's order): trends, ages, hour and weekday are then left out
    #: instead of read from invented clocks
    timed: bool = True

    @cached_property
    def _activity(self) -> ActivityCounter:
        """Every item event by (item, second), for point-in-time counts."""
        return ActivityCounter.build(self.seq.item, self.seq.ts)

    def recent_activity(self, items: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Events on each item, and on all items, in each of `SHARE_WINDOWS_DAYS` before `at`:
        two (B, windows) arrays, counted once for the trend buckets and the shares."""
        counts = np.empty((len(items), len(SHARE_WINDOWS_DAYS)), dtype=np.int64)
        totals = np.empty_like(counts)
        for j, days in enumerate(SHARE_WINDOWS_DAYS):
            counts[:, j] = self.recent_counts(items, at, days)
            totals[:, j] = self._activity.total(at, days * 86_400.0)
        return counts, totals

    def recent_shares(self, items: np.ndarray, at: np.ndarray) -> np.ndarray:
        """(B, len(SHARE_WINDOWS_DAYS)) codes of each item's share of all events in the day,
        week and month before `at`: the fine-grained popularity a time-decayed popularity
        ranking uses, which log2 count buckets blur (a day's top items often share one)."""
        return share_bucket(*self.recent_activity(items, at))

    def recent_counts(self, items: np.ndarray, at: np.ndarray, window_days: float) -> np.ndarray:
        """Events on each item in the `window_days` before `at` (strictly before its second):
        how much the item is trending at that moment, with no look into the future."""
        return self._activity.count(items, at, window_days * 86_400.0)


@dataclass
class TrainingReport:
    epochs_run: int = 0
    best_epoch: int = 0
    best_recall: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- features
def item_features(data: TwoTowerData, items: np.ndarray, at: np.ndarray) -> dict[str, torch.Tensor]:
    """Tensors for items (indices) observed at times `at` (epoch seconds)."""
    it = data.items
    if data.timed:
        # an item listed after `at` is scored as just listed: serving only ever sees it once
        # it is live, and an offline snapshot that already holds it stands for that moment
        age = age_bucket(np.maximum(at - it.listed_at[items], 0.0))
        counts, totals = data.recent_activity(items, at)
        day = trend_bucket(counts[:, SHARE_WINDOWS_DAYS.index(1.0)])
        week = trend_bucket(counts[:, SHARE_WINDOWS_DAYS.index(7.0)])
        shares, levels = share_bucket(counts, totals), share_level(counts, totals)
    else:
        age = day = week = np.zeros(len(items), dtype=np.int64)
        shares = np.zeros((len(items), len(SHARE_WINDOWS_DAYS)), dtype=np.int64)
        levels = np.zeros(shares.shape, dtype=np.float32)
    return {
        "trend_day": torch.from_numpy(day),
        "trend_week": torch.from_numpy(week),
        "trend_share": torch.from_numpy(shares),
        "trend_level": torch.from_numpy(levels),
        "id_bucket": torch.from_numpy(it.id_bucket[items]),
        "category": torch.from_numpy(it.category[items]),
        "top_category": torch.from_numpy(it.top_category[items]),
        "brand": torch.from_numpy(it.brand[items]),
        "tags": torch.from_numpy(it.tags[items]),
        "price": torch.from_numpy(it.price[items]),
        "age": torch.from_numpy(age),
        "text": torch.from_numpy(it.text[items]),
    }


def user_features(
    data: TwoTowerData,
    rows: np.ndarray,
    now: np.ndarray,
    history_end: np.ndarray,
    device: np.ndarray,
    config: TrainingConfig,
    rng: np.random.Generator | None = None,
    region: np.ndarray | None = None,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """User/context tensors and the history positions (B, N) for users `rows` (-1 = unknown)
    at time `now`, with history ending before position `history_end`. With `rng` (training),
    ids and context are randomly dropped so the towers also learn to do without them."""
    seq, users = data.seq, data.users
    known = rows >= 0
    safe = np.where(known, rows, 0)
    hist = np.full((len(rows), config.history), -1, dtype=np.int64)
    if known.any():
        hist[known] = history_window(seq, safe[known], history_end[known], config.history)
    queries = np.zeros((len(rows), config.queries), dtype=np.int64)
    if known.any() and config.queries:
        queries[known] = query_window(seq, safe[known], now[known], config.queries)
    id_bucket = np.where(known, users.id_bucket[safe], 0)
    # bucket 0: a user first seen live, whose id was never trained (no id embedding)
    id_mask = (id_bucket > 0).astype(np.float32)
    hour = (np.floor(now / 3600.0) % 24).astype(np.int64) + 1
    weekday = ((np.floor(now / 86400.0) + 3) % 7).astype(np.int64) + 1  # 1970-01-01: Thursday
    if not data.timed:
        hour, weekday = np.zeros_like(hour), np.zeros_like(weekday)
    if rng is not None:
        id_mask = id_mask * (rng.random(len(rows)) >= config.id_dropout)
        drop = rng.random(len(rows)) < config.context_dropout
        device = np.where(drop, 0, device)
        hour, weekday = np.where(drop, 0, hour), np.where(drop, 0, weekday)
    hist_safe = np.maximum(hist, 0)
    f = {
        "id_bucket": torch.from_numpy(id_bucket),
        "id_mask": torch.from_numpy(id_mask.astype(np.float32)),
        "region": torch.from_numpy(
            region if region is not None else np.where(known, users.region[safe], 0)
        ),
        "attributes": torch.from_numpy(np.where(known[:, None], users.attributes[safe], 0)),
        "numeric": torch.from_numpy(
            np.where(known[:, None], users.numeric[safe], 0.0).astype(np.float32)
        ),
        "device": torch.from_numpy(device.astype(np.int64)),
        "hour": torch.from_numpy(hour),
        "weekday": torch.from_numpy(weekday),
        "hist_event": torch.from_numpy(np.where(hist >= 0, seq.event[hist_safe], 0)),
        "hist_age": torch.from_numpy(
            np.where((hist >= 0) & data.timed, age_bucket(now[:, None] - seq.ts[hist_safe]), 0)
        ),
        "hist_mask": torch.from_numpy(hist < 0),
        "queries": torch.from_numpy(_mean_query_vectors(data.query_vectors, queries)),
    }
    f["bag_items"], f["bag_offsets"] = _bag(data, safe, known, history_end, config.long_history)
    return f, hist


def _mean_query_vectors(vectors: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(B, text_dim) mean text vector of each row's recent queries (`codes` (B, M), 0 = none;
    zeros without any), gathered only for the rows that searched: most rows have no query,
    and a (B, M, text_dim) gather per batch was a tenth of a training step."""
    out = np.zeros((len(codes), vectors.shape[1]), dtype=np.float32)
    present = codes > 0
    rows = np.flatnonzero(present.any(axis=1))
    if len(rows):
        sums = vectors[codes[rows]].sum(axis=1)  # row 0 of `vectors` is zeros
        out[rows] = sums / present[rows].sum(axis=1, keepdims=True)
    return out


def _bag(
    data: TwoTowerData, users: np.ndarray, known: np.ndarray, ends: np.ndarray, cap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened id buckets of each user's last `cap` items before `ends`, with offsets
    (an empty bag embeds to zeros)."""
    seq = data.seq
    starts = np.where(known, np.maximum(seq.user_start[users], ends - cap), 0)
    lengths = np.where(known, np.maximum(ends - starts, 0), 0).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    within = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths)
    positions = np.repeat(starts, lengths) + within
    items = data.items.id_bucket[seq.item[positions]] if len(positions) else np.zeros(0, int)
    return torch.from_numpy(items.astype(np.int64)), torch.from_numpy(offsets)


def embed_users(
    model: TwoTower,
    data: TwoTowerData,
    f: dict[str, torch.Tensor],
    hist: np.ndarray,
    now: np.ndarray,
    item_mask_dropout: bool = False,
    catalogue: np.ndarray | torch.Tensor | None = None,
    fast: bool = False,
) -> torch.Tensor:
    """User vectors; history items go through the item tower (deduplicated), or are read
    from `catalogue` (item vectors already computed for this moment, a tensor in training)
    when given. `fast`: the user tower through ONNX Runtime where it can (`_users_onnx`),
    for a fitted model's repeated calls; never between epochs, whose every call would
    export the tower again."""
    seq = data.seq
    hist_items = np.where(hist >= 0, seq.item[np.maximum(hist, 0)], 0)
    if isinstance(catalogue, torch.Tensor):
        # one gather straight from the catalogue: its backward is an index_add, where a
        # gather of the unique items and then of the history (advanced indexing twice) had
        # two accumulating index_puts, a twentieth of a training step
        flat = torch.from_numpy(hist_items.reshape(-1))
        history = catalogue.index_select(0, flat)[:, :-1].reshape(*hist.shape, -1)
        return model.users(f, history, f["queries"])
    unique, inverse = np.unique(hist_items, return_inverse=True)
    if catalogue is not None:
        vectors = torch.from_numpy(catalogue[unique])
    else:
        at = np.full(len(unique), float(np.median(now)) if len(now) else 0.0)
        vectors = model.items(
            item_features(data, unique, at),
            torch.from_numpy(data.item_trained[unique].astype(np.float32)),
        )
    history = vectors[:, :-1][torch.from_numpy(inverse.reshape(hist.shape))]
    if fast:
        out = _users_onnx(model.users, f, history)
        if out is not None:
            return out
    return model.users(f, history, f["queries"])


def _users_onnx(
    tower: UserTower, f: dict[str, torch.Tensor], history: torch.Tensor
) -> torch.Tensor | None:
    """The user tower's eval pass through ONNX Runtime (None: run it in torch); its
    long-term bag is computed here, in SciPy, as the torch pass does."""
    if tower.training:
        return None

    def long_term() -> torch.Tensor:
        with torch.no_grad():
            return tower._long_term(f["bag_items"], f["bag_offsets"])

    def export() -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, dict[int, str]]]:
        example = {"long_term": long_term(), "history": history, "queries": f["queries"]}
        example.update({name: f[name] for name in USER_INPUTS})
        dynamic = {name: {0: "users"} for name in example}
        for name in ("history", "hist_event", "hist_age", "hist_mask"):
            dynamic[name][1] = "history"
        return UserTowerInference(tower), example, dynamic

    engine = onnx_forward(tower, "eval", export)
    if engine is None:
        return None  # the bag not computed: the torch pass computes it
    arrays = {name: f[name].numpy() for name in USER_INPUTS}
    return torch.from_numpy(
        engine.run(
            long_term=long_term().numpy(),
            history=history.detach().numpy(),
            queries=f["queries"].numpy(),
            **arrays,
        )
    )


def item_vectors(
    model: TwoTower,
    data: TwoTowerData,
    at: float,
    batch: int = 8192,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(n_items, D + 1) vectors and biases of the whole catalogue (or of the item `rows`) as
    of time `at`; items never trained on are placed by content alone."""
    model.eval()
    wanted = np.arange(len(data.items.id_bucket)) if rows is None else np.asarray(rows)
    n = len(wanted)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch):
            idx = wanted[start : min(start + batch, n)]
            trained = data.item_trained[idx]
            vectors = model.items(
                item_features(data, idx, np.full(len(idx), at)),
                torch.from_numpy(trained.astype(np.float32)),
            )
            vectors[torch.from_numpy(~trained), -1] += model.items.untrained_shift
            out.append(vectors)
    return (
        torch.cat(out).numpy()
        if out
        else np.zeros((0, model.items.id.embedding_dim), dtype=np.float32)
    )


def user_vectors(
    model: TwoTower,
    data: TwoTowerData,
    rows: np.ndarray,
    region: np.ndarray,
    at: float | np.ndarray,
    config: TrainingConfig,
    batch: int = 2048,
    catalogue: np.ndarray | None = None,
    fast: bool = False,
    devices: np.ndarray | None = None,
) -> np.ndarray:
    """(len(rows), D) vectors of users (-1 = unknown) from their whole stored history, as of
    time `at` (one time, or one per user: the ranking moment); `region` = region code per
    user (0 = unknown); `catalogue`: the item vectors as of `at`, when already computed;
    `fast`: see `embed_users`. `devices`: the request's device code per user (0 = one the
    model does not know; -1 = none given: the device of the user's last event). Training
    gives the tower the device of the event it predicts, so a request's own is the input
    it was trained for; the last event's stands in when a request names none."""
    if model.training:  # eval() walks every module: a measurable part of a one-user request
        model.eval()
    seq = data.seq
    out = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            r = rows[start : start + batch]
            safe = np.maximum(r, 0)
            ends = np.where(r >= 0, seq.user_end[safe], 0)
            last = np.maximum(ends - 1, 0)
            device = np.where(
                (r >= 0) & (ends > seq.user_start[safe]),
                seq.device[np.minimum(last, max(len(seq.device) - 1, 0))] if len(seq.device) else 0,
                0,
            )
            if devices is not None:
                asked = devices[start : start + batch]
                device = np.where(asked >= 0, asked, device)
            now = np.broadcast_to(np.asarray(at, dtype=np.float64), rows.shape)[
                start : start + batch
            ].copy()
            f, hist = user_features(
                data, r, now, ends, device, config, region=region[start : start + batch]
            )
            out.append(embed_users(model, data, f, hist, now, catalogue=catalogue, fast=fast))
    return torch.cat(out).numpy() if out else np.zeros((0, config.dim), dtype=np.float32)


# --------------------------------------------------------------------------- training
def train_two_tower(
    data: TwoTowerData,
    config: TrainingConfig,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    warm: WarmStart | None = None,
) -> tuple[TwoTower, TrainingReport]:
    """Early-stopped training, then (with `refit`) a retrain on every example; with `warm`,
    fine-tuning of its weights on the new targets only (no refit)."""
    started = time.perf_counter()
    keep_freed_memory()  # every step reuses the last one's temporaries (see core/memory.py)
    seq = data.seq
    targets = training_targets(seq)
    model, best_state = _fresh_model(data, config), None
    frozen: list[torch.nn.Parameter] = []
    if warm is not None:
        model.load_state_dict(warm.state)
        if not warm.item_layers:
            frozen = [p for name, p in model.items.named_parameters() if not name.startswith("id.")]
        targets = targets[seq.ts[targets] >= warm.since_ts]
        scale = warm.learning_rate_scale
        config = dataclasses.replace(
            config,
            epochs=warm.epochs,
            refit=False,
            learning_rate=config.learning_rate * scale,
            id_learning_rate=(config.id_learning_rate or config.learning_rate) * scale,
        )
        log.info("two-tower: fine-tuning on %s new targets", f"{len(targets):,}")
    val_pos = _validation_positions(seq, targets, config)
    fit_pos = np.setdiff1d(targets, val_pos, assume_unique=True)
    n_val = len(val_pos)
    report = TrainingReport()
    if not len(fit_pos):  # nothing new to learn from: the starting weights as they are
        model.eval()
        report.seconds = time.perf_counter() - started
        return model, report
    for parameter in frozen:  # no gradient: neither the optimizer nor the average moves them
        parameter.requires_grad_(False)
    # the shift calibrates content-only items against trained ones under the item layers;
    # with those frozen it stays as it was (recalibrating would move every untrained item)
    calibrate = _full_softmax(data, config) and not frozen
    optimizer = _Optimizer(model, config)
    averaged = _WeightAverage(model, config.weight_averaging > 0)
    rng, dropout_rng = _generators(config)
    deadline = None if config.max_minutes is None else started + 60 * config.max_minutes
    stale = 0
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        loss = _epoch(
            model, optimizer, data, fit_pos, config, (rng, dropout_rng), epoch - 1, averaged
        )
        served = averaged.model
        if calibrate:
            calibrate_untrained(served, data, val_pos if n_val else fit_pos, config)
        recall = _validation_recall(served, data, val_pos, config) if n_val else math.nan
        row = {"epoch": float(epoch), "loss": loss, "val_recall@100": recall}
        report.history.append(row)
        report.epochs_run = epoch
        log.info("two-tower epoch %d: loss %.4f, validation Recall@100 %.4f", epoch, loss, recall)
        if on_epoch:
            on_epoch(row)
        if not n_val or recall > report.best_recall:
            report.best_recall, report.best_epoch, stale = (0.0 if not n_val else recall), epoch, 0
            best_state = {k: v.detach().clone() for k, v in served.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
        now = time.perf_counter()
        if deadline is not None and now + (now - epoch_started) > deadline:
            # another epoch of the same length would overrun the budget
            log.info("two-tower: time budget reached after epoch %d", epoch)
            break
    if config.refit and n_val:
        model = _fresh_model(data, config)
        optimizer = _Optimizer(model, config)
        averaged = _WeightAverage(model, config.weight_averaging > 0)
        rng, dropout_rng = _generators(config)
        all_pos = targets
        for epoch in range(1, report.best_epoch + 1):
            loss = _epoch(
                model, optimizer, data, all_pos, config, (rng, dropout_rng), epoch - 1, averaged
            )
            log.info("two-tower refit epoch %d/%d: loss %.4f", epoch, report.best_epoch, loss)
        model = averaged.model
        if calibrate:
            calibrate_untrained(model, data, all_pos, config)
    elif best_state is not None:
        model.load_state_dict(best_state)
    for parameter in model.items.parameters():
        parameter.requires_grad_(True)
    model.eval()
    report.seconds = time.perf_counter() - started
    return model, report


def _validation_positions(
    seq: Sequences, targets: np.ndarray, config: TrainingConfig
) -> np.ndarray:
    """Each sampled user's last target: held out from training, used for early stopping.

    Holding out one event of some users (leave-one-out) keeps almost every example for
    training, so no second fit on all data is needed, unlike holding out the last weeks.
    """
    if config.validation_fraction <= 0 or len(targets) == 0:
        return np.zeros(0, dtype=np.int64)
    users = seq.user[targets]
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])  # targets sorted by user
    candidates = targets[last]
    candidates = candidates[seq.run_start[candidates] > seq.user_start[seq.user[candidates]]]
    wanted = min(
        len(candidates),
        config.validation_examples,
        max(1, int(len(targets) * config.validation_fraction)),
    )
    rng = np.random.default_rng(config.seed + 7)
    return np.sort(rng.choice(candidates, wanted, replace=False)) if wanted else candidates[:0]


def _id_tables(model: TwoTower) -> list[torch.nn.Embedding | torch.nn.EmbeddingBag]:
    return [model.items.id, model.users.id, model.users.long_term]


def _fresh_model(data: TwoTowerData, config: TrainingConfig) -> TwoTower:
    torch.manual_seed(config.seed)
    return TwoTower(data.sizes, config.dim, config.dropout)


class _Optimizer:
    """AdamW for the dense weights and Adam without weight decay for the id tables: lazy
    (sparse) Adam when the tables are large.

    The id tables grow with the catalogue and the user base (a million users: tens of millions
    of weights); a dense Adam step rewrites all of them every batch, which made the optimizer
    64% of training time at 1M events (profiled). Sparse gradients update only the rows a
    batch touched. Small tables (ml-100k) stay dense: there, coalescing a batch's sparse
    gradients cost more than the whole dense step.
    """

    def __init__(self, model: TwoTower, config: TrainingConfig) -> None:
        tables = _id_tables(model)
        sparse = [t.weight for t in tables if t.sparse]
        dense_ids = [t.weight for t in tables if not t.sparse]
        ids = {id(t.weight) for t in tables}
        dense = [p for p in model.parameters() if id(p) not in ids]
        id_lr = config.id_learning_rate or config.learning_rate
        groups = [{"params": dense, "weight_decay": config.weight_decay}]
        if dense_ids:
            groups.append({"params": dense_ids, "weight_decay": 0.0, "lr": id_lr})
        # the fused kernel updates every dense tensor in one pass instead of a Python loop
        # of small ops per tensor: ml-100k training steps 7-10 % faster, measured side by side
        self._dense = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)
        self._sparse = torch.optim.SparseAdam(sparse, lr=id_lr) if sparse else None

    def decay(self, progress: float, config: TrainingConfig) -> None:
        """Set every group's learning rate for `progress` (0 → 1) through the planned epochs:
        unchanged ("constant") or along a half cosine to zero ("cosine"), which settles the
        weights in fewer epochs than a constant rate that early stopping cuts off."""
        if config.lr_schedule != "cosine":
            return
        factor = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        for optimizer in (self._dense, self._sparse):
            if optimizer is None:
                continue
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * factor

    def zero_grad(self) -> None:
        self._dense.zero_grad()
        if self._sparse is not None:
            self._sparse.zero_grad()

    def step(self) -> None:
        self._dense.step()
        if self._sparse is not None:
            self._sparse.step()


class _WeightAverage:
    """An exponential moving average of the weights, validated and kept instead of the last
    step's weights (off: `model` is the live model itself).

    Small slices such as ml-100k's 192 new users moved by ±0.015 NDCG@10 between runs that
    differed only in float rounding: single steps' noise. An average over the last epoch's
    steps is a smoother point of the same run (two seeds: 0.3449 and 0.3388 with it, 0.3499
    and 0.3198 without).
    """

    def __init__(self, model: TwoTower, enabled: bool) -> None:
        self.model = copy.deepcopy(model) if enabled else model  # never in a backward graph
        pairs = zip(self.model.state_dict().values(), model.state_dict().values(), strict=True)
        # the floating-point tensors, paired once (empty when off: `update` does nothing)
        floats = [(a, w) for a, w in pairs if enabled and a.is_floating_point()]
        self._averages = [a for a, _ in floats]
        self._weights = [w for _, w in floats]

    def update(self, decay: float) -> None:
        """One step: average ← decay · average + (1 − decay) · weights."""
        if self._averages:
            with torch.no_grad():
                torch._foreach_lerp_(self._averages, self._weights, 1.0 - decay)


def _example_weights(data: TwoTowerData, pos: np.ndarray, config: TrainingConfig) -> np.ndarray:
    seq = data.seq
    weight = seq.pair_weight[pos].astype(np.float64)
    if config.recency_half_life_days is not None and len(seq.ts):
        age_days = (seq.ts.max() - seq.ts[pos]) / 86_400.0
        weight = weight * np.exp2(-age_days / config.recency_half_life_days)
    return weight.astype(np.float32)


def _generators(config: TrainingConfig) -> tuple[np.random.Generator, np.random.Generator]:
    """The seeded streams of a fit: one for the batches (order, history and id dropout,
    which rows go blind) and one for the dropout masks, so that changing the one (a
    dropout rate, the network's width) leaves what the other draws as it was."""
    return np.random.default_rng(config.seed), np.random.default_rng((config.seed, 1))


def _epoch(
    model: TwoTower,
    optimizer: _Optimizer,
    data: TwoTowerData,
    positions: np.ndarray,
    config: TrainingConfig,
    generators: tuple[np.random.Generator, np.random.Generator],
    epoch: int = 0,
    averaged: _WeightAverage | None = None,
) -> float:
    """One pass over `positions`; `epoch` (0-based) places it in the learning-rate plan;
    `averaged` follows the weights after every step.

    Each batch's inputs (NumPy features, masks and every random draw) are built on a
    background thread while the previous batch trains: a step's torch work leaves the second
    core idle much of the time (small serial ops, the autograd engine), and building a
    batch was a sixth of a step. Only that thread draws from `rng`, batch after batch in
    plan order, so a seed gives the same batches as building them in line would.
    `generators`: the batches' and the dropout masks' (see `_generators`)."""
    rng, dropout_rng = generators
    model.train()
    if _full_softmax(data, config):
        prepare, batches = _prepare_full_softmax, _time_local_batches
    else:
        # logQ needs how often in-batch sampling draws each item this epoch
        probability = _target_probability(data, positions)
        prepare = partial(_prepare_sampled_softmax, probability=probability)
        batches = _shuffled_batches
    total, count = 0.0, 0
    plan = batches(data.seq, positions, config, rng)
    # an average over about `weight_averaging` epochs, whatever an epoch's number of steps
    decay = 1.0 - 1.0 / max(config.weight_averaging * len(plan), 1.0)
    steps = [(j, pos) for j, pos in enumerate(plan) if len(pos) >= 2]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="two-tower-batches") as ahead:
        pending = (
            ahead.submit(prepare, data, steps[0][1], config, rng, dropout_rng) if steps else None
        )
        for k, (j, _) in enumerate(steps):
            assert pending is not None
            batch = pending.result()
            if k + 1 < len(steps):
                pending = ahead.submit(prepare, data, steps[k + 1][1], config, rng, dropout_rng)
            optimizer.decay((epoch + j / max(len(plan), 1)) / config.epochs, config)
            loss = batch.loss(model, data, config)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if averaged is not None:
                averaged.update(decay)
            total += float(loss.detach())
            count += 1
    return total / max(count, 1)


def _full_softmax(data: TwoTowerData, config: TrainingConfig) -> bool:
    """Small catalogues train with the exact softmax, large ones with the sampled one."""
    return len(data.items.id_bucket) <= config.full_softmax_max_items


def _target_probability(data: TwoTowerData, positions: np.ndarray) -> torch.Tensor:
    """Each item's share of the epoch's targets: how often in-batch sampling draws it."""
    n_items = len(data.items.id_bucket)
    counts = np.bincount(data.seq.item[positions], minlength=n_items).astype(np.float64)
    return torch.from_numpy(counts / max(counts.sum(), 1.0))


def _shuffled_batches(
    seq: Sequences, positions: np.ndarray, config: TrainingConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    return _chunks(rng.permutation(positions), config.batch_size)


def _chunks(ordered: np.ndarray, size: int) -> list[np.ndarray]:
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def _time_local_batches(
    seq: Sequences, positions: np.ndarray, config: TrainingConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Batches of examples close in time, in random order: examples sorted by their time
    plus a random jitter of up to `batch_window_days` (so batches differ every epoch and mix
    users active in the same weeks), cut into batches, the batches shuffled.

    A full-softmax batch scores the whole catalogue as it was at its earliest example's
    moment (trends and ages counted strictly before it: nothing later leaks into any row);
    the closer its examples are in time, the fresher that catalogue is for each of them.
    """
    jitter = rng.random(len(positions)) * config.batch_window_days * 86_400.0
    ordered = positions[np.argsort(seq.ts[positions] + jitter, kind="stable")]
    batches = _chunks(ordered, config.batch_size)
    return [batches[j] for j in rng.permutation(len(batches))]


def _batch_users(
    data: TwoTowerData, pos: np.ndarray, config: TrainingConfig, rng: np.random.Generator
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """User features and history positions of a batch's examples, with training dropout.
    Some examples lose their whole history: the towers learn what a user with no past (a new
    user) wants from profile and context, on every target, not only first ones."""
    seq = data.seq
    users = seq.user[pos]
    ends = _history_cut(seq, pos, config, rng)
    forget = rng.random(len(pos)) < config.history_dropout
    ends = np.where(forget, seq.user_start[users], ends)
    return user_features(data, users, seq.ts[pos], ends, seq.device[pos], config, rng)


@dataclass(frozen=True)
class _SampledSoftmaxBatch:
    """A large-catalogue batch: its users against its positives, random and hard negatives."""

    users: dict[str, torch.Tensor]
    hist: np.ndarray
    now: np.ndarray
    candidates: dict[str, torch.Tensor]  # item features of the candidates
    candidate_ids: torch.Tensor  # (C,) 1 where a candidate keeps its id (random dropout)
    targets: torch.Tensor  # (B,) item index per row
    candidate_items: torch.Tensor  # (C,) item index per column
    log_q: torch.Tensor | None
    weights: torch.Tensor
    unavailable: torch.Tensor  # (B, C) candidates not listed yet at the row's moment
    item_dropout: torch.Tensor  # the item MLP's dropout mask

    def loss(self, model: TwoTower, data: TwoTowerData, config: TrainingConfig) -> torch.Tensor:
        u = embed_users(model, data, self.users, self.hist, self.now)
        v = model.items.forward_masks(self.candidates, [self.candidate_ids], [self.item_dropout])[0]
        return sampled_softmax_loss(
            u,
            v,
            self.targets,
            self.candidate_items,
            self.log_q,
            config.temperature,
            self.weights,
            self.unavailable,
        )


def _prepare_sampled_softmax(
    data: TwoTowerData,
    pos: np.ndarray,
    config: TrainingConfig,
    rng: np.random.Generator,
    dropout_rng: np.random.Generator,
    probability: torch.Tensor,
) -> _SampledSoftmaxBatch:
    """Inputs of one batch against its in-batch, random and hard negatives (large
    catalogues); `probability`: each item's share of the epoch's targets, for logQ."""
    seq = data.seq
    n_items = len(data.items.id_bucket)
    items, now = seq.item[pos], seq.ts[pos]
    f, hist = _batch_users(data, pos, config, rng)
    randoms = rng.integers(0, n_items, config.random_negatives)
    hard = _hard_negatives(data, items, config.hard_negatives, rng)
    candidates = np.concatenate([items, randoms, hard])
    at = np.concatenate([now, np.full(len(randoms) + len(hard), float(np.median(now)))])
    trained = data.item_trained[candidates].astype(np.float32)
    trained = trained * (rng.random(len(candidates)) >= config.id_dropout)
    f["dropout"] = dropout_mask(dropout_rng, (len(pos), 2 * config.dim), config.dropout)
    log_q = None
    if config.logq:
        log_q = torch.cat(
            [
                mixed_log_q(
                    torch.from_numpy(items), torch.from_numpy(randoms), probability, n_items
                ),
                torch.zeros(len(hard), dtype=torch.float64),
            ]
        ).float()
    return _SampledSoftmaxBatch(
        users=f,
        hist=hist,
        now=now,
        candidates=item_features(data, candidates, at),
        candidate_ids=torch.from_numpy(trained),
        targets=torch.from_numpy(items),
        candidate_items=torch.from_numpy(candidates),
        log_q=log_q,
        weights=torch.from_numpy(_example_weights(data, pos, config)),
        unavailable=_not_yet_listed(data, candidates, now),
        item_dropout=dropout_mask(dropout_rng, (len(candidates), 2 * config.dim), config.dropout),
    )


@dataclass(frozen=True)
class _FullSoftmaxBatch:
    """A small-catalogue batch: its users against the whole catalogue as of its earliest
    moment."""

    users: dict[str, torch.Tensor]
    hist: np.ndarray
    now: np.ndarray
    catalogue: dict[str, torch.Tensor]  # item features of every item at the batch's moment
    dropped_ids: torch.Tensor  # (N,) 1 where an item keeps its id under random dropout
    trained_ids: torch.Tensor  # (N,) 1 where an item was ever a training target
    masked: torch.Tensor  # (B, N) left out of a row's softmax
    blind: torch.Tensor  # rows scored against the catalogue with dropped ids
    sighted: torch.Tensor  # the other rows: against every trained id
    targets: torch.Tensor
    weights: torch.Tensor
    item_dropout: tuple[torch.Tensor, torch.Tensor]  # the item MLP's, per id mask

    def loss(self, model: TwoTower, data: TwoTowerData, config: TrainingConfig) -> torch.Tensor:
        # one pass: the catalogue with random id dropout, and with its trained ids (the
        # history tokens, and the candidates of rows that keep ids)
        v, history_items = model.items.forward_masks(
            self.catalogue, [self.dropped_ids, self.trained_ids], self.item_dropout
        )
        u = embed_users(model, data, self.users, self.hist, self.now, catalogue=history_items)
        total = self.weights.sum().clamp(min=1e-12)
        loss = torch.zeros(())
        for rows, catalogue in ((self.blind, v), (self.sighted, history_items)):
            if len(rows):
                # index_select, not boolean indexing: its backward is an index_add, not an
                # accumulating index_put
                weights = self.weights[rows]
                part = full_softmax_loss(
                    u.index_select(0, rows),
                    catalogue,
                    self.targets[rows],
                    config.temperature,
                    weights,
                    self.masked.index_select(0, rows),
                )
                loss = loss + part * weights.sum() / total
        return loss


def _prepare_full_softmax(
    data: TwoTowerData,
    pos: np.ndarray,
    config: TrainingConfig,
    rng: np.random.Generator,
    dropout_rng: np.random.Generator,
) -> _FullSoftmaxBatch:
    """Inputs of one batch against the whole catalogue as of the batch's earliest moment
    (small catalogues: exact softmax, no sampling bias to correct). Items the user touched
    before the target and items not yet listed at its moment are left out of its row."""
    seq = data.seq
    n_items = len(data.items.id_bucket)
    items, now = seq.item[pos], seq.ts[pos]
    f, hist = _batch_users(data, pos, config, rng)
    moment = float(now.min())
    everything = np.arange(n_items)
    trained = data.item_trained.astype(np.float32)
    dropped = trained * (rng.random(n_items) >= config.id_dropout)
    # items never trained on are no one's target: as negatives in every row they would teach
    # the towers that content without a following means "never chosen", and new products
    # would sink (ml-100k P1g, cold items' Recall@100: 0.38 with sampled negatives, 0.01)
    masked = _not_yet_listed(data, everything, now).numpy() | ~data.item_trained[None, :]
    rows, touched = _touched_before(seq, pos)
    masked[rows, touched] = True
    # a share `id_dropout` of the rows score against the catalogue with dropped ids (content
    # must place items), the others against every trained id: dropping ids per item for the
    # whole batch left whole batches unable to tell most items apart
    blind = rng.random(len(pos)) < config.id_dropout
    hidden = (n_items, 2 * config.dim)
    f["dropout"] = dropout_mask(dropout_rng, (len(pos), 2 * config.dim), config.dropout)
    return _FullSoftmaxBatch(
        users=f,
        hist=hist,
        now=now,
        catalogue=item_features(data, everything, np.full(n_items, moment)),
        dropped_ids=torch.from_numpy(dropped),
        trained_ids=torch.from_numpy(trained),
        masked=torch.from_numpy(masked),
        blind=torch.from_numpy(np.flatnonzero(blind)),
        sighted=torch.from_numpy(np.flatnonzero(~blind)),
        targets=torch.from_numpy(items),
        weights=torch.from_numpy(_example_weights(data, pos, config)),
        item_dropout=(
            dropout_mask(dropout_rng, hidden, config.dropout),
            dropout_mask(dropout_rng, hidden, config.dropout),
        ),
    )


def _touched_before(seq: Sequences, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) pairs of every item each example's user touched strictly before it."""
    starts = seq.user_start[seq.user[pos]]
    lengths = seq.run_start[pos] - starts
    rows = np.repeat(np.arange(len(pos)), lengths)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - offsets
    return rows, seq.item[positions]


def _not_yet_listed(data: TwoTowerData, items: np.ndarray, now: np.ndarray) -> torch.Tensor:
    """(len(now), len(items)) true where an item was listed after the moment (NaN listing
    times count as always listed)."""
    listed = data.items.listed_at[items]
    return torch.from_numpy(listed[None, :] > now[:, None])


def _history_cut(
    seq: Sequences, pos: np.ndarray, config: TrainingConfig, rng: np.random.Generator
) -> np.ndarray:
    """Where each example's history ends: right before the target, or with `target_horizon`
    up to that many events earlier, so the towers learn what a user will want soon, not only
    next (recommendations are read over a while, and the next click is often the funnel's)."""
    end = seq.run_start[pos]
    if config.target_horizon <= 0:
        return end
    back = rng.integers(0, config.target_horizon + 1, len(pos))
    return np.maximum(end - back, seq.user_start[seq.user[pos]])


def _hard_negatives(
    data: TwoTowerData, items: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """`count` items per batch drawn from the categories of the batch's positives."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    categories = data.item_category[rng.choice(items, count)]
    pool_order = np.argsort(data.item_category, kind="stable")
    sorted_cats = data.item_category[pool_order]
    lo = np.searchsorted(sorted_cats, categories, "left")
    hi = np.searchsorted(sorted_cats, categories, "right")
    pick = lo + np.floor(rng.random(count) * np.maximum(hi - lo, 1)).astype(np.int64)
    return pool_order[np.minimum(pick, len(pool_order) - 1)]


def calibrate_untrained(
    model: TwoTower,
    data: TwoTowerData,
    positions: np.ndarray,
    config: TrainingConfig,
    rows: int = 512,
) -> float:
    """Set the score shift of items never trained on (`ItemTower.untrained_shift`): the mean,
    over the users of up to `rows` examples and the trained items listed at their moment, of
    how much an item's id and trend add to its score (its full score minus its content-only
    score). An untrained item is then scored as a trained item with its content would be
    on average.

    Why: the exact softmax leaves never-trained items out (as negatives everywhere they sink
    every cold product), so nothing places content-only vectors against id vectors but the
    rows with id dropout, and that placement drifts from epoch to epoch: some epochs ranked
    every trained item below the untrained ones (validation Recall@100 0.00 between epochs
    at 0.55), others the reverse. The sampled softmax has untrained items among its random
    negatives and needs no shift.
    """
    model.items.untrained_shift.zero_()
    if len(positions) == 0 or not data.item_trained.any():
        return 0.0
    rng = np.random.default_rng(config.seed + 2)
    if len(positions) > rows:
        positions = np.sort(rng.choice(positions, rows, replace=False))
    seq = data.seq
    now = seq.ts[positions]
    moment = float(np.median(now))
    trained = np.flatnonzero(data.item_trained & ~(data.items.listed_at > moment))
    if not len(trained):
        return 0.0
    model.eval()
    with torch.no_grad():
        full, content = model.items.forward_masks(
            item_features(data, trained, np.full(len(trained), moment)),
            [torch.ones(len(trained)), torch.zeros(len(trained))],
        )
        f, hist = user_features(
            data, seq.user[positions], now, seq.run_start[positions], seq.device[positions], config
        )
        users = embed_users(model, data, f, hist, now)
        gain = item_scores(users, full, config.temperature) - item_scores(
            users, content, config.temperature
        )
        shift = float(gain.mean())
    model.items.untrained_shift.fill_(shift)
    return shift


def _validation_recall(
    model: TwoTower, data: TwoTowerData, positions: np.ndarray, config: TrainingConfig, k: int = 100
) -> float:
    """Share of validation targets in the top k of all items (history items excluded)."""
    if len(positions) == 0:
        return math.nan
    rng = np.random.default_rng(config.seed + 1)
    if len(positions) > config.validation_examples:
        positions = rng.choice(positions, config.validation_examples, replace=False)
    seq = data.seq
    model.eval()
    hits = 0
    # the catalogue (trends, ages) as it was before each example: examples grouped in
    # windows of `batch_window_days` (the staleness a training batch's catalogue has too),
    # each group scored against item vectors at its earliest moment (nothing later leaks).
    # The catalogue passes are most of the validation time, for a number that only picks the
    # best epoch: a group per day took ~3 s an epoch on ml-100k, per week 0.62 s (20 epochs:
    # 12.5 s of a fit), per 30 days 0.26 s (5.2 s)
    window = max(config.batch_window_days, 1.0) * 86_400.0
    windows = np.floor(seq.ts[positions] / window)
    with torch.no_grad():
        for start_window in np.unique(windows):
            group = positions[windows == start_window]
            vectors = torch.from_numpy(item_vectors(model, data, float(seq.ts[group].min())))
            for start in range(0, len(group), 1024):
                hits += _hits_at_k(model, data, group[start : start + 1024], vectors, config, k)
    return hits / len(positions)


def _hits_at_k(
    model: TwoTower,
    data: TwoTowerData,
    pos: np.ndarray,
    vectors: torch.Tensor,
    config: TrainingConfig,
    k: int,
) -> int:
    seq = data.seq
    now = seq.ts[pos]
    f, hist = user_features(data, seq.user[pos], now, seq.run_start[pos], seq.device[pos], config)
    scores = item_scores(embed_users(model, data, f, hist, now), vectors, config.temperature)
    rows = np.repeat(np.arange(len(pos)), hist.shape[1])
    seen = hist.ravel()
    keep = seen >= 0
    scores[rows[keep], seq.item[seen[keep]]] = -math.inf
    all_items = np.arange(scores.shape[1])
    scores = scores.masked_fill(_not_yet_listed(data, all_items, now), -math.inf)
    target_score = scores[torch.arange(len(pos)), torch.from_numpy(seq.item[pos])]
    return int(((scores > target_score[:, None]).sum(dim=1) < k).sum())
