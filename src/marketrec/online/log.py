"""The event log: the durable source of truth that every serving worker tails.

The HTTP layer answers `202 accepted` only once the records are appended here; workers then
read the log from the last offset they applied, so each worker's online state (histories,
catalogue, user profiles) is a deterministic function of the log, and a worker that restarts
rebuilds it by reading from offset 0. Two implementations share one contract (`EventLog`):

- `SQLiteEventLog`: a file beside the model, for one machine; several worker processes append
  to and read the same file (WAL mode lets readers run while one writer commits).
- `RedisEventLog`: a Redis Stream, for several machines.

A log is a sequence of `Record`s with offsets that increase strictly (gaps are allowed, so a
reader must never infer a count from offsets). Payloads are JSON objects; what each kind holds
is defined by `marketrec.online.records` (events: the §1 fields with `ts` in epoch seconds);
a `model` record (key: the version, payload: `{"folder": ...}`) tells every worker to swap in
a retrained model (`marketrec.online.retrain.publish`); an `impressions` record (key: the
worker that wrote it, payload: `{"items": {item_id: times shown}}`) carries a worker's served
new items to every worker's exploration statistics (`marketrec.online.live`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, Self, get_args
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis

from marketrec.core.errors import ConfigError

log = logging.getLogger(__name__)

RecordKind = Literal["event", "item", "item_delete", "user", "model", "impressions"]
KINDS: tuple[str, ...] = get_args(RecordKind)

#: What `append` takes: (kind, key, payload); key is the user id (events, users) or item id.
Entry = tuple[RecordKind, str, Mapping[str, Any]]

DEFAULT_SQLITE_FILE = "events.sqlite"
DEFAULT_REDIS_PREFIX = "marketrec:"
#: the URL schemes of a Redis store (redis-py's)
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class Record:
    """One committed entry of the log."""

    offset: int
    kind: RecordKind
    key: str
    payload: dict[str, Any]


class EventLogError(RuntimeError):
    """The log's storage failed (database locked too long, Redis down, disk full…).

    Not a `MarketrecError`: the client did nothing wrong, so the HTTP layer answers 503 and
    the client retries; nothing was appended when `append` raises it.
    """


class EventLog(Protocol):
    """The contract both logs keep (and the tests check on both)."""

    def append(self, kind_payloads: Sequence[Entry]) -> int:
        """Append all records atomically; return the last offset once they are committed.

        An empty sequence appends nothing and returns `last_offset()`.
        """
        ...

    def read(self, after: int, limit: int | None = None) -> list[Record]:
        """Records with offset > `after`, in offset order, at most `limit` of them."""
        ...

    def last_offset(self) -> int:
        """The offset of the newest record; 0 when the log is empty."""
        ...

    def newest(self, kind: RecordKind) -> Record | None:
        """The newest record of `kind`, or None when the log holds none (a worker that
        starts reads the newest `model` record first: see `LiveRecommender.recover`)."""
        ...

    def close(self) -> None:
        """Release the connection; further calls fail."""
        ...


# --- SQLite ------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    "offset" INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL
)
"""


class SQLiteEventLog:
    """The event log in one SQLite file, shared by the worker processes of one machine.

    Durability: `journal_mode=WAL` with `synchronous=FULL` fsyncs the write-ahead log at every
    commit, so a record is on disk when `append` returns. A batch is one `BEGIN IMMEDIATE`
    transaction: all of it or none of it is ever visible. `AUTOINCREMENT` guarantees offsets
    never go back or get reused, even after rows are deleted. Several processes may open the
    file at once: a writer that finds it locked waits up to `busy_timeout` seconds. Within a
    process one connection is shared by threads behind a lock.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._configure(self._db)
        except (OSError, sqlite3.Error) as exc:
            if self._db is not None:
                self._db.close()
            raise ConfigError(f"event log {self.path}: cannot open ({exc})") from None

    def _configure(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            # e.g. a network file system: still correct, but readers then block the writer
            log.warning("event log %s: WAL mode unavailable, using %s", self.path, mode)
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)

    def append(self, kind_payloads: Sequence[Entry]) -> int:
        rows = _encode(kind_payloads)
        if not rows:
            return self.last_offset()
        with self._lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT INTO log (kind, key, payload) VALUES (?, ?, ?)", rows)
                last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                raise EventLogError(f"event log {self.path}: append failed ({exc})") from exc
            except BaseException:
                _rollback(db)
                raise
        return int(last)

    def read(self, after: int, limit: int | None = None) -> list[Record]:
        _check_limit(limit)
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute(
                        'SELECT "offset", kind, key, payload FROM log '
                        'WHERE "offset" > ? ORDER BY "offset" LIMIT ?',
                        (after, -1 if limit is None else limit),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise EventLogError(f"event log {self.path}: read failed ({exc})") from exc
        return [_row_record(row) for row in rows]

    def last_offset(self) -> int:
        with self._lock:
            try:
                row = self._connection().execute('SELECT MAX("offset") FROM log').fetchone()
            except sqlite3.Error as exc:
                raise EventLogError(f"event log {self.path}: read failed ({exc})") from exc
        return int(row[0] or 0)

    def newest(self, kind: RecordKind) -> Record | None:
        # backwards by offset (the rowid) until one matches: no index on `kind`, which
        # every append would pay for, and the newest model record is usually near the end
        with self._lock:
            try:
                row = (
                    self._connection()
                    .execute(
                        'SELECT "offset", kind, key, payload FROM log WHERE kind = ? '
                        'ORDER BY "offset" DESC LIMIT 1',
                        (kind,),
                    )
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise EventLogError(f"event log {self.path}: read failed ({exc})") from exc
        return None if row is None else _row_record(row)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise EventLogError(f"event log {self.path}: closed")
        return self._db

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteEventLog({str(self.path)!r})"


def _row_record(row: tuple[Any, ...]) -> Record:
    """A record from a `SELECT "offset", kind, key, payload` row."""
    offset, kind, key, body = row
    return Record(int(offset), kind, key, _decode(body))


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")


# --- Redis -------------------------------------------------------------------------------------


#: entries per round trip when `RedisEventLog.newest` walks the stream backwards
_SCAN_PAGE = 1_000


class RedisEventLog:
    """The event log as a Redis Stream, shared by workers on several machines.

    Offsets: each record's stream id is `<offset>-0`, so the offset *is* the stream id and a
    read after offset N is `XRANGE key N+1-0 +`. The offsets are assigned by the writer: under
    `WATCH` of the counter key (`<prefix>log:last_offset`) and the stream, it reads the last
    offset N, then in one `MULTI`/`EXEC` sets the counter to N+n and adds one `XADD` per record
    with explicit ids N+1…N+n (a `SET` rather than `INCRBY`: under `WATCH` the new value is
    known, and it also repairs a counter that was lost). The batch is atomic (no reader sees
    part of it); a concurrent writer makes `EXEC` fail and the batch is retried with fresh
    offsets, so offsets are strictly increasing across all writers. Explicit ids rather than
    Redis's time-based ones keep offsets small integers, the same kind of number as SQLite's,
    which workers store and compare.

    Durability: `EXEC` returns once Redis has applied the batch in memory; it survives a Redis
    restart only as far as the server persists it (`appendonly yes`, and `appendfsync always`
    for every append to be on disk when `append` returns). Opening the log warns when the
    server has no append-only file. `prefix` isolates deployments (and tests) in one database.
    """

    def __init__(
        self, url: str, prefix: str = DEFAULT_REDIS_PREFIX, *, socket_timeout: float = 10.0
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._stream = f"{prefix}log"
        self._counter = f"{prefix}log:last_offset"
        self._closed = False
        self._redis = redis_client(url, "event log", socket_timeout=socket_timeout)
        self._warn_without_aof(redact_url(url))

    def _warn_without_aof(self, shown: str) -> None:
        try:
            persistence = self._redis.info("persistence")
        except redis.RedisError:  # INFO may be forbidden by ACLs; nothing to report then
            return
        if not int(persistence.get("aof_enabled", 0)):
            log.warning(
                "event log at %s: Redis has no append-only file (appendonly no): appended "
                "events are lost if the server stops before its next snapshot",
                shown,
            )

    def append(self, kind_payloads: Sequence[Entry]) -> int:
        self._check_open()
        rows = _encode(kind_payloads)
        if not rows:
            return self.last_offset()

        def write(pipe: redis.client.Pipeline) -> int:
            base = self._last(pipe)  # immediate: the pipeline is in WATCH mode here
            pipe.multi()
            pipe.set(self._counter, base + len(rows))
            for i, (kind, key, body) in enumerate(rows, start=1):
                fields = {"kind": kind, "key": key, "payload": body}
                pipe.xadd(self._stream, fields, id=f"{base + i}-0")  # type: ignore[arg-type]
            return base + len(rows)

        try:
            return int(
                self._redis.transaction(
                    write, self._counter, self._stream, value_from_callable=True
                )
            )
        except redis.RedisError as exc:
            raise EventLogError(
                f"event log at {redact_url(self.url)}: append failed ({exc})"
            ) from exc

    def read(self, after: int, limit: int | None = None) -> list[Record]:
        self._check_open()
        _check_limit(limit)
        if limit == 0:
            return []
        start = f"{max(after, 0) + 1}-0"
        try:
            entries = self._redis.xrange(self._stream, min=start, max="+", count=limit)
        except redis.RedisError as exc:
            raise EventLogError(
                f"event log at {redact_url(self.url)}: read failed ({exc})"
            ) from exc
        return [_record(entry_id, fields) for entry_id, fields in entries or []]

    def last_offset(self) -> int:
        self._check_open()
        try:
            return self._last(self._redis)
        except redis.RedisError as exc:
            raise EventLogError(
                f"event log at {redact_url(self.url)}: read failed ({exc})"
            ) from exc

    def newest(self, kind: RecordKind) -> Record | None:
        self._check_open()
        # backwards through the stream a page at a time (a stream cannot be searched by a
        # field); the newest model record is usually near the end
        end = "+"
        try:
            while True:
                entries = self._redis.xrevrange(self._stream, max=end, min="-", count=_SCAN_PAGE)
                for entry_id, fields in entries or []:
                    if fields["kind"] == kind:
                        return _record(entry_id, fields)
                if not entries or len(entries) < _SCAN_PAGE:
                    return None
                end = f"({entries[-1][0]}"  # exclusive: before the page's oldest entry
        except redis.RedisError as exc:
            raise EventLogError(
                f"event log at {redact_url(self.url)}: read failed ({exc})"
            ) from exc

    def close(self) -> None:
        self._closed = True
        self._redis.close()

    def _check_open(self) -> None:
        # redis-py would silently reconnect; a closed log must fail as SQLite's does
        if self._closed:
            raise EventLogError(f"event log at {redact_url(self.url)}: closed")

    def _last(self, client: redis.Redis | redis.client.Pipeline) -> int:
        """The newest offset: the counter, or the stream's top id should the counter be lost.

        Taking the larger of the two keeps `XADD` ids increasing even if someone deleted the
        counter key, instead of failing every append from then on.
        """
        counter = int(client.get(self._counter) or 0)  # type: ignore[arg-type]
        top = client.xrevrange(self._stream, max="+", min="-", count=1)
        newest = _offset(top[0][0]) if top else 0  # type: ignore[index]
        return max(counter, newest)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisEventLog({redact_url(self.url)!r}, prefix={self.prefix!r})"


def _record(entry_id: str, fields: Mapping[str, str]) -> Record:
    return Record(
        _offset(entry_id),
        fields["kind"],  # type: ignore[arg-type]
        fields["key"],
        _decode(fields["payload"]),
    )


def _offset(entry_id: str) -> int:
    return int(str(entry_id).split("-", 1)[0])


def redis_client(url: str, what: str, *, socket_timeout: float = 10.0) -> redis.Redis:
    """A client of the Redis at `url` (strings decoded) that answered a `PING`; a
    `ConfigError` naming `what` and the URL (without its password) for a bad URL or a Redis
    that does not answer."""
    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
        )
    except ValueError as exc:
        raise ConfigError(f"{what} URL {shown!r}: {exc}") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise ConfigError(f"{what}: Redis not reachable at {shown} ({exc})") from None
    return client


def is_redis_url(url: str) -> bool:
    """Whether a `--store` URL (or any location) names a Redis store."""
    return _scheme(url) in REDIS_SCHEMES


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


# --- shared ------------------------------------------------------------------------------------


def _encode(entries: Sequence[Entry]) -> list[tuple[str, str, str]]:
    """Check and serialise every entry before anything is written (all or nothing)."""
    rows = []
    for i, (kind, key, payload) in enumerate(entries):
        if kind not in KINDS:
            raise ValueError(f"entry {i}: unknown record kind {kind!r} (known: {KINDS})")
        if not isinstance(key, str) or not key:
            raise ValueError(f"entry {i}: key must be a non-empty string, got {key!r}")
        if not isinstance(payload, Mapping):
            raise ValueError(f"entry {i}: payload must be a mapping, got {type(payload).__name__}")
        try:
            body = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"entry {i}: payload is not JSON-serialisable ({exc})") from None
        rows.append((kind, key, body))
    return rows


#: floats at least this large may be integers beyond 64 bits that orjson read as floats
_HUGE = float(2**63)


def _decode(body: str) -> dict[str, Any]:
    """A record's payload: orjson (every worker parses every record, and json took most of a
    replay's time), or json again where orjson read a number of 2**63 or more, which may
    be an integer beyond 64 bits that orjson turns into a float: `_encode`'s json writes
    any integer exactly, and it reads back exactly."""
    payload = orjson.loads(body)
    return json.loads(body) if _has_huge(payload) else payload


def _has_huge(value: dict[str, Any] | list[Any]) -> bool:
    """Whether a float of 2**63 or more sits anywhere in the payload (a plain loop: a record
    is read by every worker, and generator expressions cost as much as orjson's parse)."""
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is float:
            if item >= _HUGE or item <= -_HUGE:
                return True
        elif (kind is dict or kind is list) and _has_huge(item):
            return True
    return False


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be ≥ 0 or None, got {limit}")


def open_log(
    url: str | None, folder: str | Path, *, prefix: str = DEFAULT_REDIS_PREFIX
) -> EventLog:
    """The log a `--store URL` names.

    - None: SQLite in `folder / "events.sqlite"` (also `sqlite://` or `sqlite:///`);
    - `sqlite:///relative/path` or `sqlite:////absolute/path` (SQLAlchemy's convention:
      the path is what follows the third slash);
    - `redis://host:port/db` (also `rediss://`, `unix://`), keys under `prefix`.
    Anything else is a `ConfigError` naming the URL.
    """
    if url is None:
        return SQLiteEventLog(Path(folder) / DEFAULT_SQLITE_FILE)
    scheme = _scheme(url)
    if scheme == "sqlite":
        rest = url[len("sqlite://") :]
        if rest in ("", "/"):
            return SQLiteEventLog(Path(folder) / DEFAULT_SQLITE_FILE)
        if not rest.startswith("/"):
            raise ConfigError(
                f"event log URL {url!r}: expected sqlite:///relative/path or "
                "sqlite:////absolute/path"
            )
        return SQLiteEventLog(Path(rest[1:]))
    if scheme in REDIS_SCHEMES:
        return RedisEventLog(url, prefix)
    raise ConfigError(
        f"event log URL {redact_url(url)!r}: unsupported (expected sqlite:///PATH or "
        "redis://HOST:PORT/DB)"
    )
