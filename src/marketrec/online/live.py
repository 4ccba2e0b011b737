"""The online state of one serving worker: a loaded model that follows the event log.

The event log (`marketrec.online.log`) is the source of truth; a `LiveRecommender` is a
deterministic function of it. Every write (`ingest`, `put_item`, `delete_item`, `put_user`)
appends to the log first, durably, and only then applies what it wrote, and every read
(`recommend`, `history`) first applies whatever other writers appended since the last read
(`sync`; a recommendation may leave other users' events for up to `apply_lag_s`: see
`_may_wait`). So with several worker processes tailing one log, a request answered by any
worker already reflects every write acknowledged by any worker before it (other users'
events: within the lag), and a worker that starts (or restarts) rebuilds the same state
from the log (`recover`: from the newest model version it names, below).

Model state is mutated by `sync` and read by recommendations, from the threads of the HTTP
server's pool: one lock serialises both. With the GIL the model's Python work runs one thread
at a time anyway; throughput comes from worker processes, not threads. Requests that arrive
while a list is being computed queue, and the next pass (the HTTP endpoint's, scheduled on the
worker's event loop: `recommend_async`; or a calling thread's) answers all of them in one pass
of the pipeline (up to `max_batch`; the same lists, since lists are computed
per user at the model's clock): most of a request's cost is fixed per pass (the Python of each
stage, the network calls, the index search), so under load a worker answers several requests
for little more than one, and a request that finds the worker idle waits for nothing.

The clock: requests pass no ranking moment (`at=None`), so they rank at the model's own
"now": one second past its training data, moved forward by the events and listings it absorbs
(`CollaborativeRecommender.clock`). A replayed historic stream thus ranks at its own time and
a live one at the present, and every worker, applying the same log, keeps the same clock.

Hot swap: a `model` record in the log (`marketrec retrain` appends one) names a retrained
model folder. Each worker loads it in a background thread while it keeps serving the old
model, replays into it the log after the offset it was trained up to (`trained_offset`),
then, under the lock, applies the last few records and swaps: no request fails or waits
for the load, and each response names the version that served it. A worker that recovers
from the log starts from the newest model record's version, given the records after its
trained offset, as the swap to it was (`_start_from_newest_model`); the records before
only rebuild this worker's own state. A version's folder carries its networks' ONNX
exports (`Recommender.warm_up` before its save), so a swap exports nothing in the process
that serves.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from marketrec.core.errors import MarketrecError
from marketrec.models.base import CollaborativeRecommender
from marketrec.online.log import (
    DEFAULT_REDIS_PREFIX,
    Entry,
    EventLog,
    EventLogError,
    Record,
    open_log,
)
from marketrec.online.records import (
    events_from_payloads,
    parse_event_payloads,
    parse_item_update,
    parse_user_update,
)
from marketrec.online.versions import model_version, trained_offset
from marketrec.pipeline.config import SERVING_MAX_BATCH, SERVING_RANK_BUDGET_MS, PipelineConfig
from marketrec.pipeline.recommender import Listed, Recommender, Served, load_recommender

log = logging.getLogger(__name__)

Model = Recommender | CollaborativeRecommender

#: Records read from the log per page while syncing (bounds the memory of a long replay).
PAGE = 2_000
#: Online events kept per user for `history`.
HISTORY_SIZE = 200
#: Seconds a worker gathers the new items it showed before appending them to the log as one
#: `impressions` record (a record per request would double the log's writes).
IMPRESSION_FLUSH_S = 1.0
#: The state folder inside a model folder: the default SQLite event log lives there.
STATE_FOLDER = "state"


class UnknownItemError(MarketrecError):
    """An item id neither the model nor the event log knows (the HTTP layer answers 404)."""

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        super().__init__(f"item '{item_id}' is unknown (neither in the model nor ever PUT)")


class NotReadyError(RuntimeError):
    """The state is still being recovered from the log (the HTTP layer answers 503).

    Not a `MarketrecError`: the client did nothing wrong and should retry."""


class Observer(Protocol):
    """Where a `LiveRecommender` reports timings and counts (the service's metrics)."""

    def stage(self, name: str, seconds: float) -> None: ...

    def ingested(self, count: int) -> None: ...

    def effect(self, seconds: float) -> None: ...

    def swapped(self, old: str, new: str) -> None: ...

    def batch(self, requests: int) -> None: ...

    def served(self, served_by: str, degraded: Mapping[str, str] | None) -> None: ...


class NullObserver:
    """An `Observer` that keeps nothing (the default; a base for one that keeps a part)."""

    def stage(self, name: str, seconds: float) -> None:
        pass

    def ingested(self, count: int) -> None:
        pass

    def effect(self, seconds: float) -> None:
        pass

    def swapped(self, old: str, new: str) -> None:
        pass

    def batch(self, requests: int) -> None:
        pass

    def served(self, served_by: str, degraded: Mapping[str, str] | None) -> None:
        pass


@dataclass
class SyncReport:
    """What one `sync` applied (for logs and tests)."""

    records: int = 0
    events: int = 0
    failed: int = 0
    offset: int = 0
    #: records read at recovery only for the worker's own state (users' recent events, items
    #: created): those the model it starts from holds already (`recover`)
    noted: int = 0


@dataclass
class _State:
    """Everything the log has taught this worker beyond the model itself."""

    offset: int = 0  # the last log offset applied
    created: set[str] = field(default_factory=set)  # items first PUT through the log
    history: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    appended_at: dict[int, float] = field(default_factory=dict)  # own appends: offset → clock
    noted: int = 0  # the last log offset `created` and `history` have learned


@dataclass(eq=False)
class _Request:
    """A recommendation request waiting for a pass of the pipeline (`LiveRecommender`)."""

    user_id: str
    k: int
    region: str | None
    settings: Mapping[str, Any] | None
    device: str | None = None
    items: list[dict[str, Any]] | None = None
    version: str = ""
    error: Exception | None = None
    #: an asyncio caller's (`recommend_async`): done once the request is answered
    future: asyncio.Future[None] | None = None
    #: when it reached the service (`time.perf_counter`; by default when it joined the
    #: queue): what it waited since counts against its deadline
    queued_at: float = field(default_factory=time.perf_counter)
    #: what served its list (`pipeline.recommender.Served`)
    served_by: str = ""
    degraded: dict[str, str] | None = None

    @property
    def answered(self) -> bool:
        return self.items is not None or self.error is not None

    def settle(self) -> None:
        """Wake an asyncio caller: on its own loop directly, from elsewhere thread-safely."""
        future = self.future
        if future is None:
            return
        loop = future.get_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is running:
            _finish(future)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(_finish, future)

    def body(self, request_id: str | None) -> dict[str, Any]:
        """The answered request's CONTRACT §6 body; raises what failed its pass."""
        if self.error is not None:
            raise self.error
        return {
            "user_id": self.user_id,
            "items": self.items,
            "model_version": self.version,
            "request_id": request_id or uuid.uuid4().hex,
            "served_by": self.served_by,
            "degraded": self.degraded,
        }

    def group(self) -> tuple[int, tuple[tuple[str, Any], ...]]:
        """Requests one pass may answer together: the same k and settings."""
        return self.k, tuple(sorted((self.settings or {}).items(), key=lambda kv: kv[0]))


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():  # a caller that gave up (its task cancelled) wants nothing
        future.set_result(None)


class LiveRecommender:
    """One worker's online state: `model` + the `log` it follows up to `offset`."""

    def __init__(
        self,
        model: Model,
        log: EventLog,
        *,
        version: str,
        history_size: int = HISTORY_SIZE,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        trained_up_to: int = 0,
        follow_swaps: bool = True,
        max_batch: int = SERVING_MAX_BATCH,
        apply_lag_s: float = 0.0,
        rank_budget_ms: float | None = None,
    ) -> None:
        """`trained_up_to`: the log offset the model was trained up to (a retrained or
        fine-tuned folder's `trained_offset`): those records are in the model already and
        are not replayed again. `follow_swaps`: swap in the models that `model` records
        name (False: keep this version whatever the log publishes, as the extra versions a
        service hosts for experiments do). `max_batch`: queued requests answered in one pass
        (1: one at a time). `apply_lag_s`: how long other users' events may wait before a
        pass applies them (`_may_wait`; 0: every pass applies the whole log first).
        `rank_budget_ms`: each request's ranking budget, its wait before its pass included
        (a pass whose oldest request spent it skips the ranker: `_answer_queued`), for this
        model and every version swapped in (None: the model's own `rank_budget_ms`, else
        `SERVING_RANK_BUDGET_MS`)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not apply_lag_s >= 0:
            raise ValueError(f"apply_lag_s must be 0 or more, got {apply_lag_s}")
        if rank_budget_ms is not None and not rank_budget_ms > 0:
            raise ValueError(f"rank_budget_ms must be positive, got {rank_budget_ms}")
        self.rank_budget_ms = rank_budget_ms
        self.model = _for_serving(model, rank_budget_ms)
        self.log = log
        self.version = version
        self.observer: Observer = observer or NullObserver()
        self.history_size = history_size
        self._clock = clock
        self._lock = threading.Lock()
        self.max_batch = max_batch
        self._queue: deque[_Request] = deque()  # appended and popped whole: no lock needed
        #: event loops with a pass scheduled (`recommend_async`)
        self._passes_due: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._state = _State(offset=trained_up_to)
        self.apply_lag_s = apply_lag_s
        self._pending: list[Record] = []  # read from the log, not applied yet
        self._pending_users: set[str] = set()  # the users of the pending events
        self._pending_other = False  # a pending record that is not an event
        self._pending_since = 0.0
        self.follow_swaps = follow_swaps
        self._ready = False
        self._recovering = False
        self.recovery_error: str | None = None
        self._wanted: Record | None = None  # the newest model record not swapped in yet
        self._swapper: threading.Thread | None = None
        self.swap_error: str | None = None  # why the last swap failed (the old model serves)
        #: how often the new items this worker showed go to the log (`_count_impressions`)
        self.impression_flush_s = IMPRESSION_FLUSH_S
        self._impressions: Counter[str] = Counter()
        self._impressions_since = clock()
        self._writer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # ----------------------------------------------------------------- set-up
    @classmethod
    def open(
        cls,
        model_folder: str | Path,
        store: str | None = None,
        *,
        recover: bool = True,
        prefix: str = DEFAULT_REDIS_PREFIX,
        max_batch: int = SERVING_MAX_BATCH,
        apply_lag_s: float = 0.0,
        rank_budget_ms: float | None = None,
    ) -> LiveRecommender:
        """Load a model folder and its event log (`store` URL; default: SQLite in
        MODEL/state/; `prefix`: the Redis store's key prefix), then, with `recover`, replay
        the log; `max_batch`, `apply_lag_s`, `rank_budget_ms`: see the constructor."""
        folder = Path(model_folder)
        model = load_recommender(folder)
        event_log = open_log(store, folder / STATE_FOLDER, prefix=prefix)
        live = cls(
            model,
            event_log,
            version=model_version(folder),
            trained_up_to=trained_offset(folder),
            max_batch=max_batch,
            apply_lag_s=apply_lag_s,
            rank_budget_ms=rank_budget_ms,
        )
        if recover:
            live.recover()
        return live

    def recover(self, from_newest_model: bool = True) -> SyncReport:
        """Rebuild this worker's state from the log (what a fresh worker does before it is
        ready): from the newest model the log names, when there is one
        (`_start_from_newest_model`), then every record after it. `from_newest_model`
        False: replay every record through every version instead (what the shortcut
        equals; tests and `benchmarks/recovery.py` compare the two)."""
        started = time.perf_counter()
        self._recovering = True
        try:
            with self._lock:
                newest = (
                    self._start_from_newest_model()
                    if from_newest_model
                    else SyncReport(offset=self._state.offset)
                )
                # the records the model holds already (a newest version's or the starting
                # folder's trained offset): only this worker's own state learns them
                noted = self._note_upto(self._state.offset)
            report = self.sync()
            report.records += newest.records
            report.events += newest.events
            report.failed += newest.failed
            report.noted = noted
        except Exception as exc:
            self.recovery_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._recovering = False
        _warm_up(self.model)
        self._ready = True
        log.info(
            "recovered %d records (%d events) up to offset %d in %.2fs (and %d records "
            "the model held already read for users' recent events)",
            report.records,
            report.events,
            report.offset,
            time.perf_counter() - started,
            report.noted,
        )
        return report

    @property
    def ready(self) -> bool:
        """True once the model is loaded and the log replayed."""
        return self._ready

    @property
    def offset(self) -> int:
        """The last log offset applied to this worker's state."""
        return self._state.offset

    @property
    def swapping(self) -> bool:
        """True while a model named in the log is being loaded and caught up."""
        return self._wanted is not None

    def wait_for_swap(self, timeout: float = 60.0) -> bool:
        """Apply the log, then block until no swap is pending (True) or `timeout` seconds
        passed (False)."""
        deadline = time.monotonic() + timeout
        self.sync()  # a model record appended by someone else starts its swap here
        while self.swapping and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.swapping

    def close(self) -> None:
        self.flush_impressions()
        self.log.close()

    # ----------------------------------------------------------------- reads
    def recommend(
        self,
        user_id: str,
        k: int,
        region: str | None = None,
        device: str | None = None,
        *,
        request_id: str | None = None,
        settings: Mapping[str, Any] | None = None,
        received_at: float | None = None,
    ) -> dict[str, Any]:
        """The CONTRACT §6 body of `GET /v1/recommendations` for one user.

        `device`: the request's device, which the two-tower's user tower reads (trained on
        the device of the event it predicts; without one, the user's last event's).
        `settings`: pipeline settings for this request only (an experiment variant's
        candidates, diversity_strength, exploration_share); a single-stage model has none.
        `received_at`: when the request reached the service (`time.perf_counter`; default
        now): its deadline counts from then (`_answer_queued`)."""
        self._check_ready()
        request = _Request(user_id, k, region, settings, device, queued_at=_arrival(received_at))
        self._queue.append(request)
        while not request.answered:
            with self._lock:
                if not request.answered:
                    self._answer_queued()
        return request.body(request_id)

    async def recommend_async(
        self,
        user_id: str,
        k: int,
        region: str | None = None,
        device: str | None = None,
        *,
        request_id: str | None = None,
        settings: Mapping[str, Any] | None = None,
        received_at: float | None = None,
    ) -> dict[str, Any]:
        """`recommend` for a caller on an asyncio loop (the HTTP endpoint), answered by a
        pass that runs on the loop itself: no hand-off to a pool thread and back, which cost
        0.4–0.6 ms of CPU a request (measured on this machine). The pass is scheduled, not
        run at once, so the requests the loop takes in meanwhile (every one that arrived
        while the previous pass ran) join it."""
        self._check_ready()
        loop = asyncio.get_running_loop()
        request = _Request(
            user_id,
            k,
            region,
            settings,
            device,
            future=loop.create_future(),
            queued_at=_arrival(received_at),
        )
        self._queue.append(request)
        if loop not in self._passes_due:
            self._passes_due.add(loop)
            loop.call_soon(self._pass_on_loop, loop)
        assert request.future is not None
        await request.future
        return request.body(request_id)

    def _pass_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """One pass on the loop's thread, then another later while requests remain."""
        self._passes_due.discard(loop)
        if not self._queue:
            return
        with self._lock:
            self._answer_queued()
        if self._queue and loop not in self._passes_due:
            self._passes_due.add(loop)
            loop.call_soon(self._pass_on_loop, loop)

    def _answer_queued(self) -> None:
        """Under the lock: apply the log, then answer up to `max_batch` queued requests, oldest
        first, one pass per group of the same k and settings. Every request taken was queued
        before this sync, so each reflects every write acknowledged before it was made (other
        users' events: once applied, within `apply_lag_s`). A failure reaches every request
        it left unanswered (each raises it), never a hang."""
        started = time.perf_counter()
        taken: list[_Request] = []
        while self._queue and len(taken) < self.max_batch:
            taken.append(self._queue.popleft())
        failed = False
        try:
            self._sync_locked(serving={request.user_id for request in taken})
            synced = time.perf_counter()
            budget_ms = _rank_budget_ms(self.model)
            groups: dict[tuple[int, tuple[tuple[str, Any], ...]], list[_Request]] = {}
            for request in taken:
                groups.setdefault(request.group(), []).append(request)
            # a pass whose oldest request waited its whole ranking budget skips the ranker
            # for all of them: the worker has fallen behind, and a pass that still ranked
            # its on-time requests would cost nearly as much (the ranker's cost is mostly
            # per pass), so the queue would not drain
            skip = _late(taken, synced, budget_ms)
            for group in groups.values():
                try:
                    answers = self._top(group, skip)
                except Exception as exc:  # each request of the group raises it
                    for request in group:
                        request.error = exc
                    continue
                for request, served in zip(group, answers, strict=True):
                    self._count_impressions([e.item_id for e in served if e.new_listing])
                    request.served_by, request.degraded = served.served_by, served.degraded
                    request.version = self.version
                    request.items = [
                        {"item_id": e.item_id, "score": _finite(e.score), "source": e.source}
                        for e in served
                    ]
                    self.observer.served(served.served_by, served.degraded)
        except Exception as exc:
            failed = True
            for request in taken:
                if not request.answered:
                    request.error = exc
        finally:
            for request in taken:
                request.settle()
        if failed:
            return
        done = time.perf_counter()
        self.observer.batch(len(taken))
        for _ in taken:
            self.observer.stage("sync", synced - started)
            self.observer.stage("model", done - synced)

    def history(self, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The user's most recent online events as logged, newest first (each with its log
        `offset`). Only what arrived through the log: training events live in the model."""
        self._check_ready()
        with self._lock:
            self._sync_locked()
            kept = self._state.history.get(user_id)
            return [] if kept is None else list(reversed(kept))[:limit]

    def knows_item(self, item_id: str) -> bool:
        """Whether the model's catalogue or the log has this item."""
        return item_id in self._state.created or _in_catalogue(self.model, item_id)

    def item(self, item_id: str) -> dict[str, Any]:
        """What this worker knows about an item (`GET /v1/items/{id}`), after applying the
        log: `recommendable` when it has a column in the model, may be shown somewhere (not
        delisted), is placed by the retrieval model (the two-tower places every column by
        content; other scorers only the columns they were trained with) and is listed by the
        model's clock (a `created_at` in the future hides it until then);
        `sellable_regions`: the model's regions where it may be shown, None for everywhere
        (every region and users without one; [] with `recommendable` true: only users whose
        region the model does not know); `listed_live`: first listed through the log, after
        training. Unknown ids raise `UnknownItemError`."""
        self._check_ready()
        with self._lock:
            self._sync_locked()
            inner = retrieval_model(self.model)
            column = int(inner.item_columns(pl.Series([item_id], dtype=pl.String))[0])
            created = item_id in self._state.created
            if column < 0:
                if not created:
                    raise UnknownItemError(item_id)
                # PUT through the log, but its update failed to apply (logged when it did)
                return {
                    "item_id": item_id,
                    "known": True,
                    "recommendable": False,
                    "sellable_regions": [],
                    "listed_live": True,
                }
            names = inner.region_names
            rows = np.arange(len(names) + 1)  # the last row: users without a known region
            allowed = inner.sellable_pairs(rows, np.full(len(rows), column))
            trained = trained_items(inner)
            placed = column < trained or places_new_items(inner)
            listed = inner.listed_at
            moment = inner.clock
            on_time = not (
                column < len(listed)
                and np.isfinite(listed[column])
                and np.isfinite(moment)
                and listed[column] > moment
            )
        return {
            "item_id": item_id,
            "known": True,
            "recommendable": bool(allowed.any() and placed and on_time),
            "sellable_regions": None
            if allowed.all()
            else [name for name, ok in zip(names, allowed[:-1], strict=True) if ok],
            "listed_live": column >= trained,
        }

    # ----------------------------------------------------------------- writes
    def ingest(self, payload: object) -> int:
        """Validate a `POST /v1/events` body (one event or a list), append it to the log
        durably (all or nothing) and apply it; returns the number of events accepted.
        An invalid event raises `RecordError` before anything is logged."""
        self._check_ready()
        payloads = parse_event_payloads(payload, now=self._clock())
        self._append([("event", p["user_id"], p) for p in payloads])
        self.observer.ingested(len(payloads))
        return len(payloads)

    def put_item(self, item_id: str, payload: object) -> int:
        """Create or replace a catalogue entry (`PUT /v1/items/{id}`); returns its offset."""
        self._check_ready()
        update = parse_item_update(payload, now=self._clock())
        update.to_row(item_id)  # an id the catalogue schema refuses fails here, not in replay
        return self._append([("item", item_id, update.to_payload())])

    def delete_item(self, item_id: str) -> int:
        """Delist an item: never recommended again. Unknown ids raise `UnknownItemError`."""
        self._check_ready()
        with self._lock:
            self._sync_locked()  # an item PUT through another worker is known here too
            known = self.knows_item(item_id)
        if not known:
            raise UnknownItemError(item_id)
        return self._append([("item_delete", item_id, {})])

    def put_user(self, user_id: str, payload: object) -> int:
        """Set a user's region, sign-up time and attributes (`PUT /v1/users/{id}`)."""
        self._check_ready()
        update = parse_user_update(payload, now=self._clock())
        update.to_row(user_id)
        return self._append([("user", user_id, update.to_payload())])

    def _append(self, entries: Sequence[Entry]) -> int:
        """Log durably, then apply (with everything else logged since the last sync)."""
        last = self.log.append(entries)
        appended = time.perf_counter()
        with self._lock:
            self._state.appended_at[last] = appended
            self._sync_locked(serving=())  # events may wait for the pass that needs them
        return last

    # ----------------------------------------------------------------- applying the log
    def sync(self) -> SyncReport:
        """Apply every log record after `offset`, in order (what each request does first)."""
        with self._lock:
            return self._sync_locked()

    def _sync_locked(self, serving: Collection[str] | None = None) -> SyncReport:
        """Read what the log gained and apply it. `serving`: the users a pass is about to
        answer; their own events, and every record that is not an event, are applied now,
        while other users' events may wait up to `apply_lag_s` (`_may_wait`); None: apply
        everything now."""
        report = SyncReport(offset=self._state.offset)
        while True:
            after = self._pending[-1].offset if self._pending else self._state.offset
            records = self.log.read(after, limit=PAGE)
            if records:
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending.extend(records)
                for record in records:
                    if record.kind == "event":
                        self._pending_users.add(record.key)
                    else:
                        self._pending_other = True
            if self._pending and not self._may_wait(serving):
                self._apply_pending(report)
            if len(records) < PAGE:
                break
        report.offset = self._state.offset
        self._observe_effects()
        return report

    def _may_wait(self, serving: Collection[str] | None) -> bool:
        """Whether the records read but not applied may wait for a later pass: only other
        users' events, for at most `apply_lag_s` and `PAGE` records. Applying a batch of
        events costs milliseconds however few it holds (every worker applies every event),
        so a worker that applied the log before each pass spent its time on other users'
        single events under a steady stream of them; their effect on this user's list (item
        trends, co-occurrence, exploration's clicks) may arrive a moment later."""
        return (
            serving is not None
            and self.apply_lag_s > 0
            and not self._pending_other
            and len(self._pending) < PAGE
            and time.monotonic() - self._pending_since < self.apply_lag_s
            and self._pending_users.isdisjoint(serving)
        )

    def _apply_pending(self, report: SyncReport) -> None:
        records = self._pending
        self._pending, self._pending_users, self._pending_other = [], set(), False
        for batch in _runs(records):
            self._apply(batch, report)
            self._state.offset = batch[-1].offset
        report.records += len(records)

    def _start_from_newest_model(self) -> SyncReport:
        """Recovery's shortcut: load the newest model the log names and replay into it only
        the records after the offset it was trained up to, as the swap to it did when the
        record was first applied; the records before it only teach this worker's own state
        (`_note_upto`). A full replay would apply every event to every older model and load
        each of them in turn, all to be thrown away at the newest one's record, so a
        restart cost grew with the whole log and every version ever published. When the
        newest model does not load, nothing is skipped: the full replay swaps to each model
        in turn and keeps the last that loads, as a running worker would have."""
        report = SyncReport(offset=self._state.offset)
        record = self.log.newest("model") if self.follow_swaps else None
        if record is None or record.offset <= self._state.offset:
            return report
        try:
            model, trained = _load_for_swap(record, self.rank_budget_ms)
        except Exception as exc:
            log.warning(
                "recovery: the newest model %s (log offset %d) does not load (%s: %s); "
                "replaying the whole log",
                record.key,
                record.offset,
                type(exc).__name__,
                exc,
            )
            return report
        _replay(model, self.log, trained, record.offset, report)
        self._state.offset = record.offset
        self._install(model, record)
        log.info(
            "recovery: started from model %s (log offset %d, trained up to %d)",
            record.key,
            record.offset,
            trained,
        )
        return report

    def _note_upto(self, upto: int) -> int:
        """Teach this worker's own state (`_note`) the records up to `upto` it has not
        noted yet, which its model holds already, without applying them to it; returns how
        many were read."""
        read = 0
        for records in _pages(self.log, self._state.noted, upto):
            for batch in _runs(records):
                self._note(batch)
            read += len(records)
        return read

    def _apply(self, batch: list[Record], report: SyncReport) -> None:
        """One run of records of one kind, to the serving model and this worker's state."""
        kind = batch[0].kind
        if kind == "model":
            if not self.follow_swaps:
                return
            self._wanted = batch[-1]  # the newest of a run supersedes the others
            if self._recovering:
                self._swap_now()
            elif self._swapper is None:
                self._swapper = threading.Thread(target=self._swap, name="swap", daemon=True)
                self._swapper.start()
            return
        if not _apply_to(self.model, batch):
            report.failed += len(batch)
            return
        if kind == "event":
            report.events += len(batch)
        self._note(batch)

    def _note(self, batch: list[Record]) -> None:
        """What a run of records teaches this worker beyond the model: each user's recent
        events, the items first PUT through the log."""
        kind, state = batch[0].kind, self._state
        state.noted = batch[-1].offset
        if kind == "event":
            for record in batch:
                kept = state.history.get(record.key)
                if kept is None:
                    kept = state.history[record.key] = deque(maxlen=self.history_size)
                kept.append({**record.payload, "offset": record.offset})
        elif kind == "item":
            state.created.update(r.key for r in batch)

    # ----------------------------------------------------------------- hot swap
    def _swap(self) -> None:
        """Background: load the wanted model and catch it up off the lock, then swap under
        it (looping while a newer model record arrived meanwhile). `_wanted` and
        `_swapper` change only under the lock, so a record that arrives as this thread
        ends is never left without one."""
        while True:
            with self._lock:
                wanted = self._wanted
                if wanted is None:
                    self._swapper = None
                    return
            try:
                model, offset = _load_for_swap(wanted, self.rank_budget_ms)
                # catch up without the lock while the old model serves …
                offset = _replay(model, self.log, offset, self._state.offset)
                _warm_up(model)
                with self._lock:
                    # … then the last records under it, and swap
                    self._sync_locked()  # a model record met here only becomes wanted
                    _replay(model, self.log, offset, self._state.offset)
                    self._install(model, wanted)
            except Exception as exc:
                with self._lock:
                    self._swap_failed(wanted, exc)

    def _swap_now(self) -> None:
        """Recovery: swap in the wanted model at once (the lock is held; nobody is served)."""
        wanted = self._wanted
        assert wanted is not None
        try:
            model, offset = _load_for_swap(wanted, self.rank_budget_ms)
            _replay(model, self.log, offset, self._state.offset)
            self._install(model, wanted)
        except Exception as exc:
            self._swap_failed(wanted, exc)

    def _install(self, model: Model, wanted: Record) -> None:
        old = self.version
        self.model = model
        self.version = wanted.key
        self.swap_error = None
        if self._wanted is wanted:
            self._wanted = None
        log.info("swapped model %s → %s at offset %d", old, wanted.key, self._state.offset)
        self.observer.swapped(old, wanted.key)

    def _swap_failed(self, wanted: Record, exc: Exception) -> None:
        self.swap_error = f"{wanted.key}: {type(exc).__name__}: {exc}"
        log.exception("could not swap in model %s; %s keeps serving", wanted.key, self.version)
        if self._wanted is wanted:
            self._wanted = None

    def _observe_effects(self) -> None:
        """Event-to-effect lag of this worker's own appends that are now applied."""
        pending = self._state.appended_at
        if not pending:
            return
        now = time.perf_counter()
        for offset in [o for o in pending if o <= self._state.offset]:
            appended = pending.pop(offset)
            if not self._recovering:
                self.observer.effect(now - appended)

    # ----------------------------------------------------------------- ranking
    def user_context(self, user_id: str) -> tuple[bool, str | None]:
        """Whether the model or the log has seen this user, and their home region (what
        experiment targeting reads: new vs returning, region)."""
        with self._lock:
            model = self.model
            retrieval = model.retrieval if isinstance(model, Recommender) else model
            rows = retrieval.user_rows(pl.Series([user_id], dtype=pl.String))
            known = bool(rows[0] >= 0) or user_id in self._state.history
            index = int(retrieval.regions_of(rows)[0]) if rows[0] >= 0 else -1
            names = retrieval.region_names
            return known, names[index] if 0 <= index < len(names) else None

    def _top(self, group: list[_Request], skip_ranking: str | None = None) -> list[Served]:
        """Each request's list and what served it; the requests share k and settings.
        `skip_ranking`: retrieval order, for this reason (`Recommender.recommend_many`)."""
        model, k, settings = self.model, group[0].k, group[0].settings
        users, regions = [r.user_id for r in group], [r.region for r in group]
        if isinstance(model, Recommender):
            model.on_stage = self.observer.stage
            config = _with_settings(model.config, settings) if settings else None
            devices = [r.device for r in group]
            return model.recommend_many(
                users,
                k,
                regions=regions,
                config=config,
                skip_ranking=skip_ranking,
                devices=devices if any(devices) else None,
            )
        answers = []
        for user, region in zip(users, regions, strict=True):  # single models: rarely served
            frame = model.recommend([user], k, regions=[region])
            known = model.user_rows(pl.Series([user], dtype=pl.String))[0] >= 0
            source = "retrieval" if known else "fallback"
            listed = [
                Listed(item, score, source, False)  # a single model does not explore
                for item, score in zip(
                    frame.get_column("item_id").to_list(),
                    frame.get_column("score").to_list(),
                    strict=True,
                )
            ]
            answers.append(Served(listed, source))
        return answers

    def _count_impressions(self, new: list[str]) -> None:
        """Count the new listings a list showed (exploration's misses are impressions
        without a click; `Listed.new_listing` marks them only in lists that explore, since
        nobody reads them otherwise); every `impression_flush_s` a background thread
        appends them to the log as one record, so no request waits for that write. Every
        worker, this one included, applies the record at its next sync, so all agree.
        Called under the lock."""
        self._impressions.update(new)
        if self._clock() - self._impressions_since >= self.impression_flush_s:
            shown = self._take_impressions()
            if shown:
                threading.Thread(
                    target=self._append_impressions, args=(shown,), name="impressions", daemon=True
                ).start()

    def flush_impressions(self) -> None:
        """Append the impressions gathered so far now (at close, and for tests)."""
        with self._lock:
            shown = self._take_impressions()
        self._append_impressions(shown)

    def _take_impressions(self) -> dict[str, int]:
        self._impressions_since = self._clock()
        shown, self._impressions = dict(self._impressions), Counter()
        return shown

    def _append_impressions(self, shown: dict[str, int]) -> None:
        """One `impressions` record. A failed append drops them with a warning: they are
        statistics, not accepted events."""
        if not shown:
            return
        try:
            self.log.append([("impressions", self._writer, {"items": shown})])
        except EventLogError as exc:
            log.warning("impressions of %d item(s) not logged: %s", len(shown), exc)

    def _check_ready(self) -> None:
        if not self._ready:
            raise NotReadyError("not ready: the event log is being replayed")


# --------------------------------------------------------------------------- helpers
@lru_cache(maxsize=256)
def _settings_config(
    config: PipelineConfig, settings: tuple[tuple[str, Any], ...]
) -> PipelineConfig:
    return PipelineConfig.model_validate({**config.model_dump(), **dict(settings)})


def _with_settings(config: PipelineConfig, settings: Mapping[str, Any]) -> PipelineConfig:
    """`config` with a variant's settings (validated; one object per distinct variant)."""
    fields = PipelineConfig.model_fields
    known = {k: v for k, v in settings.items() if v is not None and k in fields}
    return _settings_config(config, tuple(sorted(known.items())))


def _arrival(received_at: float | None) -> float:
    """When a request reached the service (`time.perf_counter`): `received_at` (a front
    proxy's stamp), never later than now."""
    now = time.perf_counter()
    return now if received_at is None else min(received_at, now)


def _late(requests: list[_Request], now: float, budget_ms: float | None) -> str | None:
    """Why a pass over `requests` skips the ranker (the oldest waited its whole budget by
    `now`: the worker is behind), or None."""
    if budget_ms is None or not requests:
        return None
    waited = (now - min(r.queued_at for r in requests)) * 1e3
    if waited < budget_ms:
        return None
    return f"deadline: the pass's oldest request waited {waited:.0f} ms (budget {budget_ms:g} ms)"


def _rank_budget_ms(model: Model) -> float | None:
    """The ranking budget a request of `model` has (None: none, or no ranker to skip)."""
    if not isinstance(model, Recommender) or model.ranking is None or not model.ranking.active:
        return None
    return model.config.rank_budget_ms


def _for_serving(model: Model, rank_budget_ms: float | None = None) -> Model:
    """A live request keeps its deadline: past the rank budget, retrieval order. The
    budget: `rank_budget_ms` when given, else the model's own, else the service's."""
    if isinstance(model, Recommender):
        budget = rank_budget_ms or model.config.rank_budget_ms or SERVING_RANK_BUDGET_MS
        if model.config.rank_budget_ms != budget:
            model.config = model.config.model_copy(update={"rank_budget_ms": budget})
    return model


def _apply_to(model: Model, batch: list[Record]) -> bool:
    """Apply one run of records of one kind (not `model`) to `model`; False if it failed.

    A record that fails to apply is logged and skipped: it was validated before it was
    logged, so a failure is a bug in the model's update, and stopping would freeze the
    worker at that offset forever."""
    kind = batch[0].kind
    try:
        if kind == "event":
            model.absorb(events_from_payloads([r.payload for r in batch]))
        elif kind == "item":
            # items rows share one schema: one update for the run, the last PUT per id wins
            rows = [parse_item_update(r.payload, now=0.0).to_row(r.key) for r in batch]
            model.upsert_items(pl.concat(rows).unique("item_id", keep="last", maintain_order=True))
        elif kind == "item_delete":
            model.delist([r.key for r in batch])
        elif kind == "user":
            # one at a time: each PUT carries its own attribute columns and types
            for r in batch:
                model.upsert_users(parse_user_update(r.payload, now=0.0).to_row(r.key))
        elif kind == "impressions":
            if isinstance(model, Recommender):  # a single model does not explore
                shown: Counter[str] = Counter()
                for r in batch:
                    shown.update(r.payload["items"])
                model.record_impressions(shown)
        else:
            raise ValueError(f"unknown record kind {kind!r}")
    except Exception:
        log.exception(
            "could not apply %d '%s' record(s) at offsets %d-%d; skipped",
            len(batch),
            kind,
            batch[0].offset,
            batch[-1].offset,
        )
        return False
    return True


def _warm_up(model: Model) -> None:
    """`Recommender.warm_up` before a model serves: no live request pays for its lazy caches
    or its networks' exports after a start or a swap. It only reads the model; a failure is
    logged and the model still serves."""
    if not isinstance(model, Recommender):
        return
    try:
        model.warm_up()
    except Exception:
        log.exception("warming up the model failed; it serves anyway")


def _load_for_swap(record: Record, rank_budget_ms: float | None) -> tuple[Model, int]:
    """The model folder a `model` record names, loaded for serving, and the log offset it
    was trained up to (the replay into it starts after that)."""
    folder = Path(str(record.payload.get("folder", "")))
    if not folder.is_dir():
        raise MarketrecError(f"model folder {folder} (log offset {record.offset}) not found")
    return _for_serving(load_recommender(folder), rank_budget_ms), trained_offset(folder)


def _replay(
    model: Model, event_log: EventLog, after: int, upto: int, report: SyncReport | None = None
) -> int:
    """Apply to `model` the log's records in (after, upto], `model` records skipped;
    returns the offset reached (`report` counts what was read and applied)."""
    offset = after
    for records in _pages(event_log, after, upto):
        for batch in _runs(records):
            if batch[0].kind != "model":
                applied = _apply_to(model, batch)
                if report is not None and not applied:
                    report.failed += len(batch)
                elif report is not None and batch[0].kind == "event":
                    report.events += len(batch)
        if report is not None:
            report.records += len(records)
        offset = records[-1].offset
    return offset


def _pages(event_log: EventLog, after: int, upto: int) -> Iterator[list[Record]]:
    """The log's records in (after, upto], a page at a time."""
    offset = after
    while offset < upto:
        records = [r for r in event_log.read(offset, limit=PAGE) if r.offset <= upto]
        if not records:
            return
        yield records
        offset = records[-1].offset


def _runs(records: Iterable[Record]) -> list[list[Record]]:
    """Consecutive records of the same kind, in order (events batch into one frame)."""
    runs: list[list[Record]] = []
    for record in records:
        if runs and runs[-1][0].kind == record.kind:
            runs[-1].append(record)
        else:
            runs.append([record])
    return runs


def retrieval_model(model: Model) -> CollaborativeRecommender:
    """The model whose columns, sellability and clock every stage shares."""
    return model.retrieval if isinstance(model, Recommender) else model


def trained_items(model: CollaborativeRecommender) -> int:
    """How many item columns the model was trained with (products listed live come after
    them; the model keeps no public count of them)."""
    assert model._items is not None, "the model is fitted"
    return len(model._items)


def places_new_items(model: CollaborativeRecommender) -> bool:
    """Whether the scorer places products listed after training (by their content: the
    two-tower's `grow_items`); the others score only their trained columns."""
    return getattr(model.scorer, "grow_items", None) is not None


def _in_catalogue(model: Model, item_id: str) -> bool:
    inner = retrieval_model(model)
    return bool(inner.item_columns(pl.Series([item_id], dtype=pl.String))[0] >= 0)


def _finite(value: float) -> float:
    """JSON has no NaN or infinity."""
    return float(value) if math.isfinite(value) else 0.0
