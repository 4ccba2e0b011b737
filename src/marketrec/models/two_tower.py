"""The two-tower retrieval model behind the shared recommender path.

Unlike the baselines, it serves cold users itself: a user without history is embedded from
profile attributes, region and context, and a new item from its content. PyTorch is imported
only when a two-tower model is trained or loaded, so the rest of marketrec stays light.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field

from marketrec.core.errors import ModelError
from marketrec.data.schema import epoch_seconds
from marketrec.models.scoring import Params, TrainContext

if TYPE_CHECKING:
    from marketrec.retrieval.reembedding import TunedCatalogue

log = logging.getLogger(__name__)


_MOMENT_STEP_S = 3600.0


class TwoTowerParams(Params):
    dim: int = Field(default=64, gt=0)
    history: int = Field(default=20, ge=1)
    long_history: int = Field(default=200, ge=0)
    target_horizon: int = Field(default=0, ge=0)
    queries: int = Field(default=5, ge=0)
    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=1024, ge=2)
    learning_rate: float = Field(default=3e-3, gt=0)
    id_learning_rate: float | None = Field(default=None, gt=0)
    """Learning rate of the sparse id tables (None = `learning_rate`): each id row is updated
    only in the batches that use it, so it can take larger steps."""
    weight_decay: float = Field(default=1e-5, ge=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    temperature: float = Field(default=0.1, gt=0)
    random_negatives: int = Field(default=256, ge=0)
    hard_negatives: int = Field(default=0, ge=0)
    logq: bool = True
    full_softmax_max_items: int = Field(default=10_000, ge=0)
    """Catalogues of at most this many items are scored whole in every training batch
    (exact softmax over the catalogue as of the batch's moment, with time-local batches; no
    random negatives or logQ); larger ones use the sampled softmax. Up to about this size the
    whole-catalogue pass costs what the sampled one does (a batch's positives, random
    negatives and its histories' distinct items: several thousand rows at 1,024 examples)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """Learning rate over the planned `epochs`: constant, or a half cosine down to zero
    (the last planned epochs take small, settling steps)."""
    batch_window_days: float = Field(default=30.0, ge=0)
    """Full softmax only: examples are batched in time order with a random jitter of up to
    this many days (fresher catalogue per row vs more mixing of users)."""
    id_dropout: float = Field(default=0.6, ge=0, le=1)
    history_dropout: float = Field(default=0.1, ge=0, le=1)
    time_features: bool = True
    """False for data whose event times are only each user's order (the sequence importer's
    synthetic clock): trends, ages, hour and weekday are then left out."""
    context_dropout: float = Field(default=0.5, ge=0, le=1)
    recency_half_life_days: float | None = Field(default=None, gt=0)
    patience: int = Field(default=3, ge=1)
    weight_averaging: float = Field(default=1.0, ge=0)
    """Epochs an exponential moving average of the weights spans (its decay per step is
    1 − 1/(this × steps per epoch)); the average is validated and kept instead of the last
    step's weights. 0 = off."""
    validation_fraction: float = Field(default=0.1, ge=0, lt=1)
    refit: bool = False
    max_minutes: float | None = Field(default=None, gt=0)
    seed: int = 0
    text_encoder: Literal["auto", "minilm", "hashed"] = "auto"
    id_buckets_per_id: float = Field(default=2.0, gt=0)
    new_item_share: float = Field(default=0.05, ge=0, le=1)
    """Share of a list (rounded down: none in a top 10, 5 of 100, 15 of 300 candidates)
    reserved for the best-scored new items: listed at most `new_item_days` before the model's
    "now" (or after it) and without training interactions. Their vectors come from content
    alone and carry no popularity, so on merit they rarely beat items with a known following;
    a few reserved places let new products reach the ranker and earn feedback. 0 = merit
    order only."""
    new_item_days: float = Field(default=7.0, gt=0)
    ann_min_items: int | None = Field(default=50_000, gt=0)
    """Catalogues of at least this many items are searched at serving time through a faiss
    IVF index over `index_vectors` (approximate: recall@300 against exact search is in
    docs/benchmarks.md, two_stage_latency) instead of scoring every item; smaller ones, and
    every request ranked at a moment before the model's "now" (whose catalogue vectors are
    computed for that moment), are scored exactly. None = always exact."""
    ann_nprobe: int | None = Field(default=None, gt=0)
    """Lists the serving index scans per query (None: `retrieval.index.default_nprobe` for the
    number of items asked)."""
    threads: int = Field(default=1, ge=0)
    """torch threads; 1 by default: on a shared 2-core machine two threads ran a training
    step 6× slower than one (measured), and one thread is reproducible; 0 = torch's default."""
    training_threads: int | None = Field(default=None, ge=0)
    """torch threads while fitting (None = `threads`); serving after the fit, in the same
    process, goes back to `threads`. A training job alone on a machine may use its cores:
    2 on this 2-core machine trained ml-100k's epochs 1.3× faster than 1 (measured side by
    side, the machine otherwise idle); beside serving workers or another job, keep 1. More
    than one thread is not bit-reproducible: the same seed gave ml-100k P1u Recall@100
    0.6129 and 0.6181 in two runs."""


class TwoTowerScorer:
    handles_cold_users = True
    reads_history = False  # the towers read the stored event sequences, not the matrix rows

    def __init__(self, params: TwoTowerParams | None = None) -> None:
        self.params = params or TwoTowerParams()
        self._model: Any = None
        self._data: Any = None
        self._item_vectors = np.zeros((0, 0), dtype=np.float32)
        self._index_vectors: tuple[np.ndarray, np.ndarray] | None = None
        #: the serving ANN index and the `_item_vectors` it holds (see `serving_index`)
        self._ann: tuple[np.ndarray, Any] | None = None
        #: reserved (new) items' columns and index vectors, for the mask and matrix they
        #: were taken from (see `reserved_scores`)
        self._reserved: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._meta: dict[str, Any] = {}
        #: called after each training epoch with {"epoch", "loss", "val_recall@100"}
        #: (the CLI draws its progress bar from it)
        self.on_epoch: Callable[[dict[str, float]], None] | None = None
        #: set by `fine_tune_from`: the next `fit` starts from another model's weights
        #: (the start, that model and its item ids)
        self._warm: tuple[Any, TwoTowerScorer, pl.Series | None] | None = None

    # ----------------------------------------------------------------- training
    def fine_tune_from(
        self,
        previous: TwoTowerScorer,
        since_ts: float,
        epochs: int = 1,
        learning_rate_scale: float = 0.1,
        item_ids: pl.Series | None = None,
    ) -> None:
        """Make the next `fit` fine-tune `previous`'s weights on the targets at or after
        `since_ts` instead of training from scratch. The vocabularies and the text encoder
        stay `previous`'s (unseen categories and brands take the unknown code, new ids
        their hashed buckets, as they do when served live), so every weight keeps its
        shape and meaning; a new region needs a full retrain.

        The new catalogue re-embeds only the items whose vectors changed, and its serving
        index is `previous`'s with those rows placed afresh under the same centroids
        (`_tuned_catalogue`). Which items those are depends on the clock: a model that reads
        trends (`time_features`) places every trained item by its share of all recent events,
        which moves with every event, so every vector changes and the item layers learn too.
        Without time features the item tower's shared layers stay frozen
        (`WarmStart.item_layers`), and only the items whose id rows or trained flags moved
        are re-embedded. `item_ids`: `previous`'s item columns as loaded from its folder
        (its recommender's vocabulary), which map its vectors onto the new columns; without
        them every item is re-embedded and the index built anew."""
        from marketrec.retrieval.training import WarmStart

        if previous._model is None:
            raise ModelError("fine-tuning needs a fitted two-tower model to start from")
        if item_ids is not None and len(item_ids) != len(previous._item_vectors):
            raise ModelError(
                f"fine-tuning: {len(item_ids)} item ids for a catalogue of "
                f"{len(previous._item_vectors)} (the model must be as loaded from its folder)"
            )
        state = {k: v.detach().clone() for k, v in previous._model.state_dict().items()}
        timed = bool(previous._data.timed)
        warm = WarmStart(state, float(since_ts), epochs, learning_rate_scale, item_layers=timed)
        self._warm = (warm, previous, item_ids)

    def fit(self, ctx: TrainContext) -> None:
        from marketrec.retrieval.training import item_vectors, train_two_tower

        warm, previous, previous_ids = self._warm or (None, None, None)
        self._warm = None  # one fit only: a later refit trains from scratch again
        self._set_threads(self.params.training_threads)  # None: the serving threads
        try:
            frozen = None if previous is None else previous._meta  # its vocabularies, encoder
            data, meta = _build_data(ctx, self.params, frozen)
            model, report = train_two_tower(data, self._config, on_epoch=self.on_epoch, warm=warm)
        finally:
            self._set_threads()
        self._model, self._data = model, data
        self.__dict__.pop("_new_items", None)  # a refit has other new items
        self._meta = {
            **meta,
            "report": {
                "epochs_run": report.epochs_run,
                "best_epoch": report.best_epoch,
                "best_val_recall@100": report.best_recall,
                "seconds": round(report.seconds, 1),
                "history": report.history,
            },
        }
        self._ann = None
        if previous is not None and previous_ids is not None:
            tuned = _tuned_catalogue(previous, previous_ids, self, ctx.interactions.items.ids)
            self._item_vectors = tuned.vectors
            self._meta["report"]["reembedded_items"] = int(tuned.reembedded.sum())
            if tuned.index is not None:
                self._ann = (self._item_vectors, tuned.index)
        else:
            self._item_vectors = item_vectors(model, data, at=meta["reference_ts"])
        self.serving_index()  # large catalogues: built now, not in a first request

    @cached_property
    def _config(self) -> Any:
        """The retrieval layer's training config: built once (params are frozen), not on
        every scoring call."""
        from marketrec.retrieval.training import TrainingConfig

        fields = TrainingConfig.__dataclass_fields__
        return TrainingConfig(**{k: v for k, v in self.params.model_dump().items() if k in fields})

    def _set_threads(self, threads: int | None = None) -> None:
        """torch's intra-op threads: `threads` (0 = leave torch's), by default the serving
        `params.threads`."""
        import torch

        wanted = self.params.threads if threads is None else threads
        if wanted:
            torch.set_num_threads(wanted)

    # ----------------------------------------------------------------- serving
    def score(
        self,
        user_rows: np.ndarray,
        history: sp.csr_matrix,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
        devices: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """`at`: each user's ranking moment (epoch seconds, NaN = the model's "now", one
        second past its last training event); `devices`: see `user_vectors`."""
        users = self.user_vectors(user_rows, region_idx, at, devices)
        if at is None or np.isnan(at).all() or not self.params.time_features:
            return self._dot(users, self._item_vectors)
        # items trend and age: each user meets the catalogue as it was at their own moment
        # (users grouped by the hour, each group at its earliest moment: nothing later leaks)
        moments = np.where(np.isnan(at), self._meta["reference_ts"], at)
        hours = np.floor(moments / _MOMENT_STEP_S)
        scores = np.empty((len(users), len(self._item_vectors)), dtype=np.float32)
        for hour in np.unique(hours):
            rows = np.flatnonzero(hours == hour)
            scores[rows] = self._dot(
                users[rows], self.catalogue_vectors(float(moments[rows].min()))
            )
        return scores

    def _dot(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Cosine / temperature plus each item's bias (towers.item_scores, in NumPy), as one
        product [u, 1] · [v / temperature, bias] over a contiguous matrix: the stored
        catalogue's is kept (slicing off the bias column made NumPy copy the whole catalogue
        on every request, a third of the scoring time at 100k items)."""
        matrix = self.index_vectors() if items is self._item_vectors else self._scaled(items)
        ones = np.ones((len(users), 1), dtype=np.float32)
        return np.hstack([users.astype(np.float32, copy=False), ones]) @ matrix.T

    def catalogue_vectors(self, at: float) -> np.ndarray:
        """(n_items, dim + 1) item vectors and biases as of `at` (epoch seconds)."""
        from marketrec.retrieval.training import item_vectors

        if at >= self._meta["reference_ts"]:
            return self._item_vectors
        return item_vectors(self._model, self._data, at)

    def user_vectors(
        self,
        user_rows: np.ndarray,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
        devices: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """(len(user_rows), dim) user vectors from the stored state (-1 rows: unknown users);
        `region_idx` indexes the model's regions (len(regions) = unknown); `devices`: each
        request's device (None: the device of the user's last event; a name training never
        saw: unknown). Append a column of ones to query `index_vectors`."""
        from marketrec.retrieval.training import user_vectors

        n_regions = len(self._meta["regions"])
        region_code = np.where(region_idx < n_regions, region_idx + 1, 0).astype(np.int64)
        now = float(self._meta["reference_ts"])
        moments = now if at is None else np.where(np.isnan(at), now, at)
        # at the model's "now" the history items' vectors are the stored catalogue's
        at_now = at is None or bool(np.all(np.asarray(moments) == now))
        return user_vectors(
            self._model,
            self._data,
            np.asarray(user_rows, dtype=np.int64),
            region_code,
            moments,
            self._config,
            catalogue=self._item_vectors if at_now else None,
            fast=True,  # a fitted model's requests: the tower through ONNX Runtime
            devices=None if devices is None else self._device_codes(devices),
        )

    #: `top_items` passes each request's device to `score` and `query_vectors`
    reads_devices = True

    def _device_codes(self, devices: Sequence[str | None]) -> np.ndarray:
        """Codes of the devices in training's vocabulary: -1 for None, 0 for a name it
        never saw (a dict kept per model: `Vocab.encode` is a join, a request's fixed cost)."""
        codes = self._per_model(
            "_device_code_cache",
            lambda: {v: i + 1 for i, v in enumerate(self._device_vocab.values)},
        )
        return np.array([-1 if d is None else codes.get(d, 0) for d in devices], dtype=np.int64)

    def reserved_items(self, k: int) -> tuple[np.ndarray, int]:
        """(mask of new items, places reserved for them in a list of k; see
        `TwoTowerParams.new_item_share`): read by the shared top-k selection (`models.base`)."""
        return self._new_items, int(self.params.new_item_share * k + 1e-9)

    @cached_property
    def _new_items(self) -> np.ndarray:
        """Items listed within `new_item_days` of the model's "now" (or later) and never
        trained on: fixed once the model is fitted or loaded (both set `_data` once)."""
        since = self._meta["reference_ts"] - self.params.new_item_days * 86_400.0
        with np.errstate(invalid="ignore"):
            recent = self._data.items.listed_at >= since  # NaN (unknown) = not new
        return recent & ~self._data.item_trained.astype(bool)

    def index_vectors(self) -> np.ndarray:
        """(n_items, dim + 1) catalogue vectors for an inner-product ANN index, in the model's
        item order: [v / temperature, bias], to be queried with [u, 1]. Computed once per
        catalogue (do not modify the returned array)."""
        cached = self._index_vectors
        if cached is None or cached[0] is not self._item_vectors:
            cached = (self._item_vectors, self._scaled(self._item_vectors))
            self._index_vectors = cached
        return cached[1]

    def serving_index(self) -> Any:
        """The faiss IVF index over `index_vectors` (`retrieval.index.ColumnIndex`, row =
        item column) when the catalogue has at least `ann_min_items` items, else None (exact
        scoring). Built on first use (a few seconds at 100k items) and kept while the
        catalogue vectors are the same object; products listed live (`grow_items`) are added
        to it, any other change of `_item_vectors` builds a new one."""
        threshold = self.params.ann_min_items
        if threshold is None or len(self._item_vectors) < threshold:
            return None
        if self._ann is not None and self._ann[0] is self._item_vectors:
            return self._ann[1]
        from marketrec.retrieval.index import ColumnIndex

        log.info(
            "two-tower: building the serving index over %s items", f"{len(self._item_vectors):,}"
        )
        index = ColumnIndex(self.index_vectors(), self._index_config)
        self._ann = (self._item_vectors, index)
        return index

    @property
    def _index_config(self) -> Any:
        from marketrec.retrieval.index import FaissConfig

        return FaissConfig(nprobe=self.params.ann_nprobe)

    def query_vectors(
        self,
        user_rows: np.ndarray,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
        devices: Sequence[str | None] | None = None,
    ) -> np.ndarray | None:
        """[u, 1] queries for `index_vectors` / `serving_index`, whose inner products are
        exactly what `score` gives; None when `score` would read catalogue vectors of another
        moment (some `at` before the model's "now")."""
        if at is not None and self.params.time_features:
            moments = np.where(np.isnan(at), self._meta["reference_ts"], at)
            if (moments < self._meta["reference_ts"]).any():
                return None
        users = self.user_vectors(user_rows, region_idx, at, devices)
        ones = np.ones((len(users), 1), dtype=np.float32)
        return np.hstack([users.astype(np.float32, copy=False), ones])

    def reserved_scores(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The reserved (new) items' columns (`reserved_items`) and their scores for
        `query_vectors` queries, from a matrix of just their rows (kept while the mask and
        the catalogue stay the same objects)."""
        mask, matrix = self._new_items, self.index_vectors()
        cached = self._reserved
        if cached is None or cached[0] is not mask or cached[1] is not matrix:
            columns = np.flatnonzero(mask)
            cached = (mask, matrix, columns, np.ascontiguousarray(matrix[columns]))
            self._reserved = cached
        return cached[2], queries @ cached[3].T

    def _scaled(self, items: np.ndarray) -> np.ndarray:
        scaled = np.hstack([items[:, :-1] / self.params.temperature, items[:, -1:]])
        return np.ascontiguousarray(scaled, dtype=np.float32)

    # ----------------------------------------------------------------- live updates
    def absorb(
        self,
        user_rows: np.ndarray,
        item_columns: np.ndarray,
        events: pl.DataFrame,
        weights: np.ndarray,
        n_users: int,
    ) -> None:
        """Live item events (canonical columns; their user rows and item columns, all known,
        and interaction weights) into the stored sequences, so the user tower reads them on
        the next request: a fresh user vector without retraining. `n_users`: user rows the
        model now has (rows first seen live get profile codes here)."""
        from marketrec.retrieval.examples import insert_events
        from marketrec.retrieval.inputs import EVENT_CODES

        self.grow_users(n_users)
        device = (
            events.get_column("device")
            if "device" in events.columns
            else pl.repeat(None, events.height, dtype=pl.String, eager=True)
        )
        codes = events.get_column("event").replace_strict(
            EVENT_CODES, default=0, return_dtype=pl.Int64
        )
        seq = insert_events(
            self._data.seq,
            np.asarray(user_rows, dtype=np.int64),
            np.asarray(item_columns, dtype=np.int64),
            epoch_seconds(events.get_column("ts")),
            codes.to_numpy(),
            self._device_vocab.encode(device),
            np.asarray(weights, dtype=np.float32),
        )
        self._data = dataclasses.replace(self._data, seq=seq)

    def grow_users(self, n_users: int) -> None:
        """Profile rows for users first seen live (no id embedding of their own: an unseen
        id bucket, no region until one is set, no attributes)."""
        from marketrec.retrieval.examples import grow_users

        users = self._data.users
        extra = n_users - len(users.id_bucket)
        if extra <= 0:
            return
        grown = dataclasses.replace(
            users,
            # hashed like training ids: stable, but never trained for a new id (ids dropped
            # at training time taught the towers to do without)
            id_bucket=np.r_[users.id_bucket, np.zeros(extra, dtype=np.int64)],
            region=np.r_[users.region, np.zeros(extra, dtype=np.int64)],
            attributes=np.vstack(
                [users.attributes, np.zeros((extra, users.attributes.shape[1]), np.int64)]
            ),
            numeric=np.vstack(
                [users.numeric, np.zeros((extra, users.numeric.shape[1]), np.float32)]
            ),
        )
        self._data = dataclasses.replace(
            self._data, users=grown, seq=grow_users(self._data.seq, n_users)
        )

    def grow_items(self, items: pl.DataFrame) -> None:
        """New products (canonical items rows, in the order of their new columns) join the
        catalogue, placed by their content (text, category, brand, tags, price, age) as the
        item tower places any item never trained on: recommendable from this call on."""
        from marketrec.features.text import item_text
        from marketrec.retrieval.inputs import ItemVocabs, encode_items
        from marketrec.retrieval.training import item_vectors

        if items.height == 0:
            return
        old = self._data.items
        new = encode_items(
            items.get_column("item_id"),
            items,
            ItemVocabs.from_dict(self._meta["item_vocabs"]),
            self._text_encoder.encode(item_text(items)),
        )
        grown = type(old)(
            **{
                name: np.concatenate([getattr(old, name), getattr(new, name)])
                for name in old.__dataclass_fields__
            }
        )
        self._data = dataclasses.replace(
            self._data,
            items=grown,
            item_trained=np.r_[self._data.item_trained, np.zeros(items.height, dtype=bool)],
            item_category=np.r_[self._data.item_category, new.category],
        )
        rows = np.arange(len(old.id_bucket), len(grown.id_bucket))
        added = item_vectors(self._model, self._data, self._meta["reference_ts"], rows=rows)
        grown_vectors = np.vstack([self._item_vectors, added]).astype(np.float32)
        if self._ann is not None and self._ann[0] is self._item_vectors:
            # the serving index takes the new rows (the others did not change)
            self._ann[1].extend(self._scaled(added))
            self._ann = (grown_vectors, self._ann[1])
        self._item_vectors = grown_vectors
        self.__dict__.pop("_new_items", None)

    def _per_model(self, name: str, build: Callable[[], Any]) -> Any:
        """`build()` once per model state (fit and restore replace `_meta`): what live
        updates read from the model folder's metadata, rebuilt after a refit."""
        cached = self.__dict__.get(name)
        if cached is None or cached[0] is not self._meta:
            cached = (self._meta, build())
            self.__dict__[name] = cached
        return cached[1]

    @property
    def _device_vocab(self) -> Any:
        """The device vocabulary of training (live events are coded with it)."""
        from marketrec.retrieval.inputs import UserVocabs

        return self._per_model(
            "_device_vocab_cache",
            lambda: UserVocabs.from_dict(self._meta["user_vocabs"]).device,
        )

    @property
    def _text_encoder(self) -> Any:
        """The encoder the item texts were encoded with (the same vectors for the same
        texts), rebuilt from the model's metadata when a first new item arrives."""
        from marketrec.features.text import encoder_from_spec

        def build() -> Any:
            spec = dict(self._meta["text_encoder"])
            if self._meta.get("text_state"):
                spec["state"] = self._meta["text_state"]
            return encoder_from_spec(spec)

        return self._per_model("_text_encoder_cache", build)

    def set_user_regions(self, user_rows: np.ndarray, region_idx: np.ndarray) -> None:
        """Home regions (model region indices, -1 = unknown) of existing user rows."""
        region = self._data.users.region.copy()
        region[user_rows] = np.where(region_idx >= 0, region_idx + 1, 0)
        self._data = dataclasses.replace(
            self._data, users=dataclasses.replace(self._data.users, region=region)
        )

    def serving_networks(self) -> dict[str, Any]:
        """The networks a request runs (through ONNX Runtime: `core.onnx_forward`), by the
        name their saved exports go under in a pipeline folder."""
        return {"user_tower": self._model.users}

    # ----------------------------------------------------------------- persistence
    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            f"w/{k}": v.detach().numpy() for k, v in self._model.state_dict().items()
        }
        d = self._data
        out.update(d.seq.arrays())
        out.update(d.items.arrays())
        out.update(d.users.arrays())
        out["query_vectors"] = d.query_vectors
        out["item_trained"] = d.item_trained
        out["item_category"] = d.item_category
        out["item_vectors"] = self._item_vectors
        if self._ann is not None and self._ann[0] is self._item_vectors:
            # loading trains and fills no index (seconds at 100k items, in every worker on
            # every hot swap)
            out["ann_index"] = self._ann[1].to_bytes()
        meta = {**self._meta, "sizes": d.sizes.to_dict()}
        text_state = meta.pop("text_state", None)
        if text_state:
            out.update({f"text/{k}": v for k, v in text_state.items()})
        out["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return out

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        import torch

        from marketrec.retrieval.examples import Sequences
        from marketrec.retrieval.inputs import ItemInputs, UserInputs
        from marketrec.retrieval.towers import TowerSizes, TwoTower
        from marketrec.retrieval.training import TwoTowerData

        self._set_threads()
        meta = json.loads(arrays["meta_json"].tobytes().decode())
        sizes = TowerSizes.from_dict(meta["sizes"])
        self.__dict__.pop("_new_items", None)
        seq = Sequences.from_arrays(arrays)
        self._data = TwoTowerData(
            seq=seq,
            items=ItemInputs.from_arrays(arrays),
            # folders saved before profile-only users lost their hashed ids get the same mask
            users=_without_untrained_ids(UserInputs.from_arrays(arrays), seq),
            query_vectors=arrays["query_vectors"],
            item_trained=arrays["item_trained"],
            item_category=arrays["item_category"],
            sizes=sizes,
            timed=self.params.time_features,
        )
        # its id tables left uninitialised and given the saved tensors (`assign`): drawing
        # random values for them first was a third of a 100k-item load (the meta device,
        # which skips that too, imported torch._dynamo on first use: 2-3 s more per process)
        model = TwoTower(sizes, self.params.dim, self.params.dropout, initialise=False)
        state = {
            k[2:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("w/")
        }
        model.load_state_dict(state, assign=True)
        model.eval()
        self._model = model
        text_state = {k[5:]: v for k, v in arrays.items() if k.startswith("text/")}
        self._meta = {**meta, **({"text_state": text_state} if text_state else {})}
        self._item_vectors = arrays["item_vectors"]
        self._ann = self._reserved = None
        if "ann_index" in arrays:
            from marketrec.retrieval.index import ColumnIndex

            index = ColumnIndex.from_bytes(arrays["ann_index"], self._index_config)
            if len(index) == len(self._item_vectors) and index.dim == self._item_vectors.shape[1]:
                self._ann = (self._item_vectors, index)
        self.serving_index()


def _tuned_catalogue(
    previous: TwoTowerScorer, previous_ids: pl.Series, tuned: TwoTowerScorer, item_ids: pl.Series
) -> TunedCatalogue:
    """`tuned`'s catalogue (its model and data are fitted) from `previous`'s: see
    `retrieval.reembedding`."""
    from marketrec.features.interactions import IdVocab
    from marketrec.retrieval.reembedding import Catalogue, tuned_catalogue

    before = Catalogue(
        previous._model,
        previous._data,
        previous._item_vectors,
        float(previous._meta["reference_ts"]),
    )
    return tuned_catalogue(
        before,
        previous.serving_index(),
        tuned._model,
        tuned._data,
        float(tuned._meta["reference_ts"]),
        IdVocab(previous_ids).lookup(item_ids),
        tuned._scaled,
    )


def _build_data(
    ctx: TrainContext, params: TwoTowerParams, frozen: dict[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Tower inputs from the training context: vocabularies, content vectors, sequences.
    `frozen`: the metadata of a model being fine-tuned, whose vocabularies and text encoder
    are kept instead of fitted again."""
    from marketrec.features.text import (
        default_text_encoder,
        encode_cached,
        encoder_from_spec,
        encoder_spec,
        item_text,
    )
    from marketrec.retrieval.examples import build_sequences
    from marketrec.retrieval.inputs import (
        ItemVocabs,
        UserVocabs,
        encode_items,
        encode_users,
        fit_item_vocabs,
        fit_user_vocabs,
    )
    from marketrec.retrieval.towers import TowerSizes
    from marketrec.retrieval.training import TwoTowerData

    inter, data = ctx.interactions, ctx.data
    item_ids = inter.items.ids
    catalogue = pl.DataFrame({"item_id": item_ids}).join(
        data.items, on="item_id", how="left", maintain_order="left"
    )
    texts = item_text(catalogue)
    if frozen is not None:
        if list(frozen["regions"]) != list(ctx.region_names):
            raise ModelError(
                f"fine-tuning keeps the model's regions {frozen['regions']}, but the data has "
                f"{list(ctx.region_names)}: retrain the model instead"
            )
        spec = dict(frozen["text_encoder"])
        if frozen.get("text_state"):
            spec["state"] = frozen["text_state"]
        encoder = encoder_from_spec(spec)
        item_vocabs = ItemVocabs.from_dict(frozen["item_vocabs"])
        user_vocabs = UserVocabs.from_dict(frozen["user_vocabs"])
    else:
        encoder = default_text_encoder(params.text_encoder)
        if hasattr(encoder, "fit"):
            encoder.fit(texts)
        item_vocabs = fit_item_vocabs(
            data.items, max(64, int(len(item_ids) * params.id_buckets_per_id))
        )
        user_vocabs = fit_user_vocabs(
            data, ctx.region_names, max(64, int(len(inter.users) * params.id_buckets_per_id))
        )
    log.info("two-tower: encoding %s item texts with %s", f"{len(texts):,}", encoder.name)
    text = encode_cached(encoder, texts, _text_cache_dir())
    items = encode_items(item_ids, data.items, item_vocabs, text)
    items = dataclasses.replace(items, listed_at=ctx.listed_at)
    users = encode_users(inter.users.ids, data, ctx.user_region, user_vocabs)
    device_codes = user_vocabs.device.encode(inter.events.get_column("device"))
    item_events = inter.events.with_columns(device_code=pl.Series(device_codes))
    searches, queries = _searches(data, inter)
    query_vectors = np.vstack(
        [
            np.zeros((1, text.shape[1]), dtype=np.float32),
            encoder.encode(queries) if queries else np.zeros((0, text.shape[1]), dtype=np.float32),
        ]
    )
    seq = build_sequences(item_events, searches, len(inter.users))
    trained = np.zeros(len(item_ids), dtype=bool)
    trained[seq.item] = True
    users = _without_untrained_ids(users, seq)
    sizes = TowerSizes(
        item_ids=item_vocabs.id_buckets + 1,
        categories=len(item_vocabs.category),
        top_categories=len(item_vocabs.top_category),
        brands=len(item_vocabs.brand),
        tags=len(item_vocabs.tags),
        text_dim=int(text.shape[1]),
        user_ids=user_vocabs.id_buckets + 1,
        regions=len(user_vocabs.region),
        attributes=tuple(len(v) for v in user_vocabs.attributes.values()),
        numeric=len(user_vocabs.numeric),
        devices=len(user_vocabs.device),
    )
    tower_data = TwoTowerData(
        seq,
        items,
        users,
        query_vectors.astype(np.float32),
        trained,
        items.category,
        sizes,
        timed=params.time_features,
    )
    reference = inter.reference_time
    spec = encoder_spec(encoder)
    meta = {
        # one second past the last event, so "before now" includes the last event
        "reference_ts": reference.timestamp() + 1.0 if reference is not None else 0.0,
        "regions": list(ctx.region_names),
        "item_vocabs": item_vocabs.to_dict(),
        "user_vocabs": user_vocabs.to_dict(),
        "text_encoder": {k: v for k, v in spec.items() if k != "state"},
        "text_state": spec.get("state"),
        "queries": len(queries),
    }
    return tower_data, meta


def _without_untrained_ids(users: Any, seq: Any) -> Any:
    """The user inputs with id bucket 0 (no id embedding) for every user without an item
    event in the training data: users known only from their profile.

    Such a user is no training example's user, so the embedding of their hashed bucket was
    never trained for them: it is either another user's (buckets collide: 34 % of the
    profile-only users of the synthetic benchmark world) or an untrained random vector.
    Either way it pulled the user's vector away from what their profile and context say;
    read by profile alone, the synthetic world's new users went from NDCG@10 0.0856 to
    0.1067 (one trained model, the P1g benchmark split). Items never trained on are masked
    the same way
    (`item_trained`)."""
    has_events = seq.user_end > seq.user_start
    return dataclasses.replace(users, id_bucket=np.where(has_events, users.id_bucket, 0))


def _text_cache_dir() -> Path | None:
    """Where item text vectors are kept between trainings (MiniLM on a CPU encodes only tens
    of long texts a second): $MARKETREC_CACHE/text, else ~/.cache/marketrec/text;
    MARKETREC_CACHE=off disables it."""
    root = os.environ.get("MARKETREC_CACHE")
    if root == "off":
        return None
    return (Path(root) if root else Path.home() / ".cache" / "marketrec") / "text"


def _searches(data: Any, inter: Any) -> tuple[pl.DataFrame, list[str]]:
    """Search events mapped to user rows and query codes (1-based; 0 = no query)."""
    empty = pl.DataFrame(
        schema={"user_idx": pl.Int64, "ts": pl.Datetime("us", "UTC"), "query_code": pl.Int64}
    )
    events = data.events
    if "query" not in events.columns:
        return empty, []
    searches = events.filter((pl.col("event") == "search") & pl.col("query").is_not_null())
    if searches.height == 0:
        return empty, []
    queries = searches.get_column("query").unique().sort()
    codes = pl.DataFrame({"query": queries, "query_code": np.arange(1, queries.len() + 1)})
    users = inter.users.frame().rename({"id": "user_id", "idx": "user_idx"})
    mapped = (
        searches.select("user_id", "ts", "query")
        .join(users, on="user_id")
        .join(codes, on="query")
        .select("user_idx", "ts", "query_code")
    )
    return mapped, queries.to_list()
