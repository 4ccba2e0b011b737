"""Continuous learning: fine-tune the served model on the event log in micro-batches.

Every `every` seconds the trainer folds the log into the training dataset and, when events
arrived since the current version was trained, fine-tunes that version on them
(`pipeline.recommender.fine_tuned`: the towers start from its weights, so id embeddings
follow the stream; the ranker learns from the lists it would have served). The result is a
new model folder that records the log offset it saw, and a `model` record published to
the log makes every worker swap it in and replay only what came after (`LiveRecommender`).

The new version re-embeds the items whose vectors changed, found exactly by comparing what
an item's vector is made of (`retrieval.reembedding`): without time features the item
tower's shared layers stay frozen and only the items whose id rows or trained flags moved
are re-embedded; with them, every trained item's trend input (its share of all recent
events) moves with every event, so every item is. Its serving index is the previous one's,
centroids kept and the changed rows placed afresh (no k-means), and it is saved in the
folder, so a worker's swap reads it instead of training one (`version_swap` in
docs/benchmarks.md: 0.44 s against 3.7 s at 100k items, and a load 1.0 s against 3.6 s
more). The serving one is replaced atomically by the swap.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from marketrec.core.errors import ModelError
from marketrec.data.schema import Dataset
from marketrec.online.log import EventLog
from marketrec.online.retrain import carry_exploration, dataset_with_log, publish
from marketrec.online.versions import (
    TRAINED_LOG,
    record_training_data,
    trained_offset,
    training_data,
)
from marketrec.pipeline.recommender import fine_tuned, load_recommender

log = logging.getLogger(__name__)

#: marks a folder written by the fine-tuner (only those are ever deleted by `keep`)
FINE_TUNED = "fine_tuned.json"


@dataclass(frozen=True)
class FineTuneResult:
    folder: Path
    started_from: Path
    offset: int  # the log offset the new version was trained up to
    new_events: int  # events it learned from (after the previous version's offset)
    seconds: float


def fine_tune(
    model_folder: Path,
    data: Dataset,
    event_log: EventLog,
    out: Path,
    epochs: int = 1,
    min_events: int = 1,
    learning_rate_scale: float = 0.1,
) -> FineTuneResult | None:
    """Fine-tune the model in `model_folder` on the events the log took in after the offset
    it was trained up to; save it to `out`. None when fewer than `min_events` arrived."""
    started = time.perf_counter()
    if out.resolve() == model_folder.resolve():
        raise ModelError(f"{out}: the fine-tuned model needs a folder of its own")
    since = trained_offset(model_folder)
    fold = dataset_with_log(data, event_log, after=since)
    if fold.new_events < min_events or fold.new_since_ts is None:
        return None
    previous = load_recommender(model_folder)
    log.info(
        "fine-tuning %s on %s new events (log offsets %s..%s)",
        model_folder.name,
        f"{fold.new_events:,}",
        since + 1,
        fold.offset,
    )
    model = fine_tuned(previous, fold.data, fold.new_since_ts, epochs, learning_rate_scale)
    carry_exploration(model, fold)
    model.warm_up()  # its folder then carries the ONNX exports every worker would make
    model.save(out)
    (out / TRAINED_LOG).write_text(json.dumps({"offset": fold.offset}))
    source = training_data(model_folder)
    if source is not None:
        record_training_data(out, source)
    seconds = time.perf_counter() - started
    (out / FINE_TUNED).write_text(
        json.dumps(
            {
                "from": str(model_folder.resolve()),
                "since_offset": since,
                "offset": fold.offset,
                "new_events": fold.new_events,
                "epochs": epochs,
                "learning_rate_scale": learning_rate_scale,
                "seconds": round(seconds, 1),
            }
        )
    )
    return FineTuneResult(out, model_folder, fold.offset, fold.new_events, seconds)


def current_folder(model_folder: Path, event_log: EventLog) -> Path:
    """The folder the workers serve now: the last published `model` record's, else the
    model the service was started with."""
    current, offset = model_folder, 0
    while True:
        records = event_log.read(offset, limit=10_000)
        if not records:
            return current
        for record in records:
            if record.kind == "model":
                current = Path(record.payload["folder"])
        offset = records[-1].offset


@dataclass
class ContinuousTrainer:
    """Fine-tune and publish every `every` seconds until `stop` is set.

    `served` is the folder `marketrec serve` was started with (its state/ holds the log
    by default; new versions are written beside it as `<name>-ft-<UTC time>`); the trainer
    starts from whatever version the log last published. `keep` fine-tuned folders are
    kept (the served original never is deleted): workers load a new version within
    seconds of its record, so older ones are no longer read."""

    served: Path
    data: Dataset
    event_log: EventLog
    every: float = 300.0
    epochs: int = 1
    min_events: int = 1
    keep: int = 3
    publish: bool = True
    learning_rate_scale: float = 0.1

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.current = current_folder(self.served, self.event_log)
        self.history: list[FineTuneResult] = []

    def step(self) -> FineTuneResult | None:
        """One micro-batch: fine-tune the current version if enough events arrived."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        out = self.served.parent / f"{self.served.name}-ft-{stamp}"
        result = fine_tune(
            self.current,
            self.data,
            self.event_log,
            out,
            self.epochs,
            self.min_events,
            self.learning_rate_scale,
        )
        if result is None:
            return None
        if self.publish:
            version, offset = publish(self.event_log, out)
            log.info("published %s at log offset %s (%.1f s)", version, offset, result.seconds)
        self.current = out
        self.history.append(result)
        self._prune()
        return result

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.step()
            except Exception:  # a failed step leaves the served version; the next retries
                log.exception("fine-tuning step failed; serving %s continues", self.current)

    def _prune(self) -> None:
        written = sorted(
            (p for p in self.served.parent.glob(f"{self.served.name}-ft-*") if p.is_dir()),
            key=lambda p: p.name,
        )
        for old in written[: max(0, len(written) - self.keep)]:
            if old.resolve() != self.current.resolve() and (old / FINE_TUNED).exists():
                shutil.rmtree(old, ignore_errors=True)


__all__ = ["ContinuousTrainer", "FineTuneResult", "current_folder", "fine_tune"]
