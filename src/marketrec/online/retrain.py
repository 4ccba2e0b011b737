"""Full retraining from the event log: the training data plus everything the service took in.

The event log holds every event, product and profile change accepted since the model was
trained; `dataset_with_log` folds them into the training dataset (events appended; items and
users replaced by their last PUT; delisted items marked unavailable), and `retrain` fits a
model of the same kind and settings on the result. The new folder records the log offset it
was trained up to, so a worker that swaps it in replays only the records after it
(`LiveRecommender`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from marketrec.core.errors import ModelError
from marketrec.data.schema import (
    Dataset,
    make_dataset,
    validate_items,
    validate_users,
)
from marketrec.models.base import CollaborativeRecommender
from marketrec.models.registry import unfitted_like
from marketrec.online.log import EventLog
from marketrec.online.records import events_from_payloads, parse_item_update, parse_user_update
from marketrec.online.versions import (
    TRAINED_LOG,
    TRAINED_ON,
    model_version,
    record_training_data,
    trained_offset,
    training_data,
)
from marketrec.pipeline.recommender import ENGAGEMENT, Recommender, load_recommender

log = logging.getLogger(__name__)

_PAGE = 10_000


@dataclass(frozen=True)
class LogFold:
    """A dataset with the log folded in, and how much of the log that was."""

    data: Dataset
    offset: int
    events: int
    items: int
    users: int
    #: events in records after the `after` offset asked for, and the earliest of their times
    new_events: int = 0
    new_since_ts: float | None = None
    #: exploration's counts in the folded records: new listings shown, and clicks
    #: (`ENGAGEMENT` events), per item id (`carry_exploration`)
    shown: dict[str, int] = field(default_factory=dict)
    clicked: dict[str, int] = field(default_factory=dict)


def dataset_with_log(
    data: Dataset, event_log: EventLog, upto: int | None = None, after: int = 0
) -> LogFold:
    """`data` plus the log's records up to offset `upto` (None: all of them); the events in
    records after offset `after` are counted as new (what a model trained up to `after`
    has not seen)."""
    events: list[dict] = []
    new_events, new_since = 0, float("inf")
    items: dict[str, pl.DataFrame] = {}
    delisted: set[str] = set()
    users: dict[str, pl.DataFrame] = {}
    shown: Counter[str] = Counter()
    clicked: Counter[str] = Counter()
    offset = 0
    while True:
        records = event_log.read(offset, limit=_PAGE)
        records = [r for r in records if upto is None or r.offset <= upto]
        if not records:
            break
        for record in records:
            if record.kind == "event":
                events.append(record.payload)
                if record.payload.get("event") in ENGAGEMENT and record.payload.get("item_id"):
                    clicked[record.payload["item_id"]] += 1
                if record.offset > after:
                    new_events += 1
                    new_since = min(new_since, float(record.payload["ts"]))
            elif record.kind == "item":
                items[record.key] = parse_item_update(record.payload, now=0.0).to_row(record.key)
                delisted.discard(record.key)
            elif record.kind == "item_delete":
                delisted.add(record.key)
            elif record.kind == "user":
                users[record.key] = parse_user_update(record.payload, now=0.0).to_row(record.key)
            elif record.kind == "impressions":
                shown.update(record.payload["items"])
        offset = records[-1].offset
        if len(records) < _PAGE:
            break
    merged_events = data.events
    if events:
        merged_events = pl.concat(
            [data.events, events_from_payloads(events)], how="diagonal_relaxed"
        )
    catalogue = _replaced(data.items, list(items.values()), "item_id")
    if delisted:
        if "available" not in catalogue.columns:
            catalogue = catalogue.with_columns(available=pl.lit(True))
        catalogue = catalogue.with_columns(
            available=pl.when(pl.col("item_id").is_in(sorted(delisted)))
            .then(False)
            .otherwise(pl.col("available"))
        )
    profiles = _replaced(data.users, list(users.values()), "user_id")
    folded = make_dataset(
        merged_events,
        validate_items(catalogue, []),
        validate_users(profiles, []),
    )
    return LogFold(
        folded,
        offset,
        len(events),
        len(items) + len(delisted),
        len(users),
        new_events,
        new_since if new_events else None,
        dict(shown),
        dict(clicked),
    )


def carry_exploration(model: Recommender | CollaborativeRecommender, fold: LogFold) -> None:
    """Give a model fitted on `fold` the exploration counts of the records it folded: a
    fit starts them at zero, and a worker that swaps it in replays only the records after
    its offset, so without them a new version would forget every impression and click
    the service saw before it."""
    if isinstance(model, Recommender):
        model.record_impressions(fold.shown, fold.clicked)


def _replaced(table: pl.DataFrame, rows: list[pl.DataFrame], key: str) -> pl.DataFrame:
    """`table` with `rows` replacing the rows of the same `key` (new keys appended)."""
    if not rows:
        return table
    updates = pl.concat(rows, how="diagonal_relaxed")
    kept = table.filter(~pl.col(key).is_in(updates.get_column(key).implode()))
    return pl.concat([kept, updates], how="diagonal_relaxed")


def same_kind(folder: Path) -> Recommender | CollaborativeRecommender:
    """An unfitted model of the kind and settings of the model folder `folder`."""
    loaded = load_recommender(folder)
    if isinstance(loaded, Recommender):
        return Recommender(unfitted_like(loaded.retrieval), loaded.config, loaded.ranking_params)
    return unfitted_like(loaded)


def retrain(
    model_folder: Path, data: Dataset, event_log: EventLog, out: Path
) -> tuple[Path, LogFold]:
    """Fit a model like `model_folder`'s on `data` plus the whole log; save it to `out` with
    the log offset it saw (`trained_log.json`)."""
    if out.resolve() == model_folder.resolve():
        raise ModelError(f"{out}: the retrained model needs a folder of its own")
    fold = dataset_with_log(data, event_log)
    model = same_kind(model_folder)
    log.info(
        "retraining on %s events (%s from the log, up to offset %s)",
        f"{fold.data.events.height:,}",
        f"{fold.events:,}",
        fold.offset,
    )
    model.fit(fold.data)
    carry_exploration(model, fold)
    if isinstance(model, Recommender):
        model.warm_up()  # its folder then carries the ONNX exports every worker would make
    model.save(out)
    (out / TRAINED_LOG).write_text(json.dumps({"offset": fold.offset}))
    source = training_data(model_folder)
    if source is not None:
        record_training_data(out, source)
    return out, fold


def publish(event_log: EventLog, folder: Path) -> tuple[str, int]:
    """Append a `model` record naming `folder`: every worker following the log swaps it in
    (`LiveRecommender`); returns its version and the record's offset. The folder must be
    readable at the same path by every worker (a shared disk across machines)."""
    path = Path(folder).resolve()
    load_recommender(path)  # a folder that does not load is refused here, not in each worker
    version = model_version(path)
    offset = event_log.append([("model", version, {"folder": str(path)})])
    return version, offset


__all__ = [
    "TRAINED_LOG",
    "TRAINED_ON",
    "LogFold",
    "carry_exploration",
    "dataset_with_log",
    "publish",
    "record_training_data",
    "retrain",
    "same_kind",
    "trained_offset",
    "training_data",
]
