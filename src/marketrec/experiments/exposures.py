"""Exposure logging: what each response showed, to whom, under which experiment variant.

One JSON line per (response, experiment), written by one of two writers with the same
`record`/`close`:

- `ExposureLog` (files; the default, and always with `serve --exposures DIR`): every worker
  appends to its own file in the exposure folder (no lock between processes, no shared file
  to corrupt); lines are written through at once (line-buffered, no fsync), so a stopped
  worker loses nothing already answered, and a killed one at most its last line.
- `RedisExposureLog` (`serve --store redis://…`): the same lines in one Redis Stream,
  `<prefix>exposures`, shared by the workers of every machine on that store. The request only
  queues its lines (no network wait, as a file write waits on no disk); a writer thread sends
  whatever is queued in one `MULTI`/`EXEC` per batch (at most `batch` lines), retrying a failed
  batch with backoff while Redis is away. A stopped worker sends everything queued before it
  exits (up to `close`'s timeout); a killed one loses the lines queued but not yet sent (those
  of the last batch in flight, typically under a millisecond of responses). Once sent, they
  are as durable as the server's persistence (`appendonly`), beyond any one machine.

A write that fails never fails the recommendation: the lost lines are counted (`lost`,
`on_lost`: the service's `marketrec_exposures_lost` counter) and logged. The SQLite store keeps
files: its log has one writer at a time and fsyncs every commit, which one exposure per
response would contend with and slow event ingestion for nothing a one-machine store needs.

`read_exposures` reads a folder of files, a file (JSONL or Parquet) or the Redis stream for
`marketrec experiment report` and `rollout guard`: the same lines give the same frame.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import redis

from marketrec.core.errors import DataError
from marketrec.experiments.assignment import Assignment
from marketrec.online.log import DEFAULT_REDIS_PREFIX, is_redis_url, redact_url, redis_client

log = logging.getLogger(__name__)

#: the state folder's subfolder the service writes exposures to
EXPOSURE_FOLDER = "exposures"
#: the Redis Stream (after the store's key prefix) the service writes exposures to
EXPOSURE_STREAM = "exposures"
#: the stream entry's field that holds the JSON line
_FIELD = "line"
#: seconds between two warnings about lost exposures (the first is logged at once)
_WARN_EVERY = 60.0


class _Writer:
    """What both writers share: `record` turns a response into JSON lines for `_write`;
    lines that cannot be written are counted and logged, never raised."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.lost = 0
        #: called with the number of lines lost (the service's counter)
        self.on_lost: Callable[[int], None] | None = None
        self._warned = 0.0
        self._unreported = 0
        self._count_lock = threading.Lock()

    def record(
        self,
        request_id: str,
        user_id: str,
        assignments: Sequence[Assignment],
        items: Sequence[str],
        region: str | None = None,
        model_version: str | None = None,
        ts: float | None = None,
    ) -> None:
        """One JSON line per experiment the response took part in (items in their
        positions; `model_version`: the version that answered); never raises for storage."""
        at = time.time() if ts is None else ts
        lines = [
            json.dumps(
                {
                    "request_id": request_id,
                    "ts": at,
                    "user_id": user_id,
                    "experiment": a.experiment,
                    "layer": a.layer,
                    "variant": a.variant,
                    "forced": a.forced,
                    "region": region,
                    "items": list(items),
                    "model_version": model_version,
                }
            )
            for a in assignments
        ]
        if lines:
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        raise NotImplementedError

    def _lose(self, count: int, reason: object) -> None:
        with self._count_lock:
            self.lost += count
            self._unreported += count
            now = time.monotonic()
            warn = not self._warned or now - self._warned >= _WARN_EVERY
            if warn:
                lost, self._unreported, self._warned = self._unreported, 0, now
        if warn:
            log.error("exposures %s: %d line(s) lost (%s)", self.where, lost, reason)
        if self.on_lost is not None:
            self.on_lost(count)


class ExposureLog(_Writer):
    """Exposures in this worker's own JSONL file in `folder`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / f"exposures-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        super().__init__(str(self.path))
        self._file = self.path.open("a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def _write(self, lines: list[str]) -> None:
        try:
            with self._lock:
                self._file.write("".join(line + "\n" for line in lines))
        except (OSError, ValueError) as exc:  # disk full, file closed
            self._lose(len(lines), exc)

    def close(self) -> None:
        with self._lock:
            try:
                self._file.close()
            except OSError as exc:  # lines whose write failed, already counted as lost
                log.error("exposures %s: closing failed (%s)", self.where, exc)


class RedisExposureLog(_Writer):
    """Exposures in the Redis Stream `<prefix>exposures`, sent by a writer thread.

    `max_pending`: lines queued (or being sent) at most while Redis is slow or away; beyond it
    new lines are lost (counted), so memory stays bounded. `batch`: lines per `MULTI`/`EXEC`.
    A batch is retried until it is sent or `close` gives up; should Redis apply a batch whose
    reply is lost, the retry sends its lines twice, which `read_exposures` drops (identical
    lines).
    `drain_timeout`: how long `close` keeps trying to send what is queued.
    """

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_REDIS_PREFIX,
        *,
        max_pending: int = 100_000,
        batch: int = 500,
        socket_timeout: float = 5.0,
        drain_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.stream = exposure_stream(prefix)
        super().__init__(f"at {redact_url(url)} ({self.stream})")
        self._redis = redis_client(url, "exposures", socket_timeout=socket_timeout)
        self.max_pending, self.batch, self.drain_timeout = max_pending, batch, drain_timeout
        self._pending: deque[str] = deque()
        self._in_flight = 0
        self._wake = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="exposures", daemon=True)
        self._thread.start()

    def _write(self, lines: list[str]) -> None:
        with self._wake:
            queued = len(self._pending) + self._in_flight
            full = self._closing or queued + len(lines) > self.max_pending
            if not full:
                self._pending.extend(lines)
                self._wake.notify()
        if full:
            self._lose(len(lines), "closed" if self._closing else "too many lines queued")

    def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                time.sleep(backoff)  # nothing taken off the queue meanwhile: it keeps its bound
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return  # closing, everything sent
                if backoff and time.monotonic() > self._deadline:
                    lost = len(self._pending)
                    self._pending.clear()
                    break
                take = min(self.batch, len(self._pending))
                batch = [self._pending.popleft() for _ in range(take)]
                self._in_flight = len(batch)
            try:
                with self._redis.pipeline(transaction=True) as pipe:
                    for line in batch:
                        pipe.xadd(self.stream, {_FIELD: line})
                    pipe.execute()
            except redis.RedisError as exc:
                if not backoff:
                    log.warning("exposures %s: write failed, retrying (%s)", self.where, exc)
                backoff = min(max(backoff * 2, 0.05), 2.0)
                with self._wake:  # first in the queue again, in their order
                    self._in_flight = 0
                    self._pending.extendleft(reversed(batch))
                continue
            with self._wake:
                self._in_flight = 0
            if backoff:
                log.warning("exposures %s: writing again", self.where)
            backoff = 0.0
        self._lose(lost, "Redis still not writable when the service stopped")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued line is sent (or `timeout` seconds); whether it was."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._wake:
                if not self._pending and not self._in_flight:
                    return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued (retrying for up to `timeout` seconds, default
        `drain_timeout`), then disconnect; what could not be sent is counted as lost."""
        timeout = self.drain_timeout if timeout is None else timeout
        with self._wake:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._wake.notify()
        self._thread.join(timeout + 5.0)
        self._redis.close()


def exposure_stream(prefix: str = DEFAULT_REDIS_PREFIX) -> str:
    """The Redis Stream of a store's exposures."""
    return f"{prefix}{EXPOSURE_STREAM}"


def open_exposures(
    folder: str | Path | None,
    store: str | None,
    default_folder: str | Path,
    prefix: str = DEFAULT_REDIS_PREFIX,
) -> ExposureLog | RedisExposureLog:
    """The service's writer: files in `folder` when one is named, else the Redis store's
    stream when the store is Redis (`exposures_in_store`), else files in `default_folder`."""
    if store is not None and exposures_in_store(folder, store):
        return RedisExposureLog(store, prefix)
    return ExposureLog(folder if folder is not None else default_folder)


def exposures_in_store(folder: str | Path | None, store: str | None) -> bool:
    """Whether a service with exposure `folder` (None: not named) on `store` writes its
    exposures to the store's Redis stream rather than to files."""
    return folder is None and store is not None and is_redis_url(store)


def read_exposures(source: str | Path, prefix: str = DEFAULT_REDIS_PREFIX) -> pl.DataFrame:
    """Exposures from a Parquet file, a JSONL file, a folder of JSONL files or a Redis store's
    stream (`redis://HOST:PORT/DB`, keys under `prefix`); `ts` as UTC datetimes. Lines come
    sorted by time (then request and experiment), whichever worker or store wrote them."""
    if isinstance(source, str) and is_redis_url(source):
        return _read_stream(source, prefix)
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("*.jsonl"))
        if not files:
            raise DataError(str(source), "no exposure files (*.jsonl) in this folder")
        frames = [_read_ndjson(f, str(f)) for f in files if f.stat().st_size]
        if not frames:
            raise DataError(str(source), "the exposure files are empty: no exposures yet")
        frame = pl.concat(frames, how="diagonal")
    elif source.suffix == ".jsonl":
        frame = _read_ndjson(source, str(source))
    elif source.is_file():
        try:
            return pl.read_parquet(source)
        except Exception as exc:  # polars raises several types for corrupt files
            raise DataError(str(source), f"not a readable Parquet file ({str(exc)[:200]})") from exc
    else:
        raise DataError(str(source), "no such exposure file or folder")
    return _with_times(frame)


def _with_times(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        ts=pl.from_epoch(
            pl.col("ts").cast(pl.Float64).mul(1e6).cast(pl.Int64), time_unit="us"
        ).dt.replace_time_zone("UTC")
    ).sort("ts", "request_id", "experiment", maintain_order=True)


def _read_ndjson(source: Path | io.BytesIO, where: str) -> pl.DataFrame:
    """Exposure lines from a file or from the stream's lines, parsed the same way, so both
    give the same frame."""
    try:
        return pl.read_ndjson(source)
    except Exception as exc:
        raise DataError(where, f"not readable exposure lines ({str(exc)[:200]})") from exc


def _read_stream(url: str, prefix: str, page: int = 10_000) -> pl.DataFrame:
    """Every line of the store's exposure stream, each once (a retried batch may have sent
    some twice)."""
    stream = exposure_stream(prefix)
    where = f"{redact_url(url)} ({stream})"
    client = redis_client(url, "exposures")
    lines: list[str] = []
    try:
        start = "-"
        while entries := client.xrange(stream, min=start, max="+", count=page):
            lines.extend(fields.get(_FIELD, "") for _, fields in entries)  # type: ignore[union-attr]
            start = f"({entries[-1][0]}"  # type: ignore[index]
    except redis.RedisError as exc:
        raise DataError(where, f"read failed ({exc})") from None
    finally:
        client.close()
    if not lines:
        raise DataError(where, "no exposures in this stream yet")
    unique = "\n".join(dict.fromkeys(lines))
    return _with_times(_read_ndjson(io.BytesIO(unique.encode()), where))


__all__ = [
    "EXPOSURE_FOLDER",
    "EXPOSURE_STREAM",
    "ExposureLog",
    "RedisExposureLog",
    "exposure_stream",
    "exposures_in_store",
    "open_exposures",
    "read_exposures",
]
