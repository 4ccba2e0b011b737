"""The event log contract, checked on both implementations: atomic durable batches, strictly
increasing offsets, reads after an offset, persistence across reopening, several writers."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import redis

from conftest import REDIS_URL
from marketrec.core.errors import ConfigError
from marketrec.online.log import (
    Entry,
    EventLog,
    EventLogError,
    RedisEventLog,
    SQLiteEventLog,
    open_log,
)
from marketrec.online.records import events_from_payloads, parse_event_payloads, parse_events

Opener = Callable[[], EventLog]


def events(n: int, user: str = "u1") -> list[Entry]:
    return [("event", user, {"user_id": user, "item_id": f"i{i}", "n": i}) for i in range(n)]


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a new log object on the same storage each call (to test reopening, two writers)."""
    opened: list[EventLog] = []
    if request.param == "sqlite":
        path = tmp_path / "events.sqlite"

        def make() -> EventLog:
            return SQLiteEventLog(path)
    else:
        prefix = request.getfixturevalue("redis_prefix")

        def make() -> EventLog:
            return RedisEventLog(REDIS_URL, prefix)

    def tracked() -> EventLog:
        opened.append(make())
        return opened[-1]

    yield tracked
    for log in opened:
        log.close()


@pytest.fixture
def log(opener: Opener) -> EventLog:
    return opener()


# --- the contract, on both logs ----------------------------------------------------------------


def test_an_empty_log(log: EventLog) -> None:
    assert log.last_offset() == 0
    assert log.read(0) == []
    assert log.append([]) == 0


def test_append_returns_the_last_offset_and_offsets_increase(log: EventLog) -> None:
    first = log.append(events(3))
    second = log.append([("item", "i7", {"title": "Lamp"}), ("item_delete", "i8", {})])
    third = log.append([("user", "u1", {"region": "north", "age": 31})])
    assert 0 < first < second < third == log.last_offset()
    records = log.read(0)
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets)) and len(offsets) == 6
    assert offsets[2] == first and offsets[4] == second and offsets[5] == third
    assert [(r.kind, r.key) for r in records[3:]] == [
        ("item", "i7"),
        ("item_delete", "i8"),
        ("user", "u1"),
    ]
    assert records[0].payload == {"user_id": "u1", "item_id": "i0", "n": 0}
    assert records[5].payload == {"region": "north", "age": 31}


def test_read_after_an_offset_with_a_limit(log: EventLog) -> None:
    log.append(events(10))
    offsets = [r.offset for r in log.read(0)]
    page = log.read(offsets[2], limit=4)
    assert [r.offset for r in page] == offsets[3:7]
    assert [r.payload["n"] for r in page] == [3, 4, 5, 6]
    assert [r.offset for r in log.read(offsets[7])] == offsets[8:]
    assert log.read(offsets[-1]) == []
    assert log.read(0, limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        log.read(0, limit=-1)


def test_a_batch_of_100_is_one_append(log: EventLog) -> None:
    last = log.append(events(100))
    records = log.read(0)
    assert len(records) == 100 and records[-1].offset == last == log.last_offset()
    assert [r.payload["n"] for r in records] == list(range(100))


def test_a_bad_entry_appends_nothing_of_its_batch(log: EventLog) -> None:
    log.append(events(2))
    before = log.last_offset()
    with pytest.raises(ValueError, match="entry 2: payload is not JSON"):
        log.append([*events(2), ("event", "u1", {"x": float("nan")})])
    with pytest.raises(ValueError, match="entry 1: unknown record kind"):
        log.append([*events(1), ("order", "u1", {})])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="entry 0: key"):
        log.append([("event", "", {})])
    assert log.last_offset() == before and len(log.read(0)) == 2


def test_readers_never_see_part_of_a_batch(opener: Opener) -> None:
    """A reader racing a writer sees whole batches only (atomic visibility)."""
    writer, reader = opener(), opener()
    batch, batches = 50, 20
    seen: list[int] = []

    def write() -> None:
        for _ in range(batches):
            writer.append(events(batch))

    thread = threading.Thread(target=write)
    thread.start()
    while thread.is_alive():
        seen.append(len(reader.read(0)))
    thread.join()
    seen.append(len(reader.read(0)))
    assert all(count % batch == 0 for count in seen), sorted(set(seen))
    assert seen[-1] == batch * batches


def test_records_persist_across_reopening(opener: Opener) -> None:
    first = opener()
    last = first.append(events(5))
    before = first.read(0)
    first.close()
    again = opener()
    assert again.read(0) == before and again.last_offset() == last
    assert again.append(events(1)) > last  # offsets continue, never reused


def test_two_log_objects_on_one_store(opener: Opener) -> None:
    a, b = opener(), opener()
    offset = a.append(events(2, user="ua"))
    assert [r.key for r in b.read(0)] == ["ua", "ua"] and b.last_offset() == offset
    later = b.append(events(1, user="ub"))
    assert later > offset and a.last_offset() == later
    assert [r.key for r in a.read(offset)] == ["ub"]


def test_concurrent_writers_get_distinct_increasing_offsets(opener: Opener) -> None:
    logs = [opener(), opener()]
    returned: dict[int, list[int]] = {}

    def write(worker: int) -> None:
        target = logs[worker % 2]  # two threads share each log object
        returned[worker] = [target.append(events(2, user=f"w{worker}")) for _ in range(15)]

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = logs[0].read(0)
    assert len(records) == 4 * 15 * 2
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))
    for worker, lasts in returned.items():
        assert lasts == sorted(set(lasts))
        mine = [r.offset for r in records if r.key == f"w{worker}"]
        assert set(lasts) <= set(mine)  # each returned offset is that batch's last record
    # a batch's two records are adjacent: no other writer's record slipped in between
    for previous, record in zip(records[::2], records[1::2], strict=True):
        assert previous.key == record.key


def test_replayed_events_equal_the_parsed_ones(log: EventLog) -> None:
    body = [
        {"user_id": "u1", "item_id": "i1", "event": "view", "ts": "2026-01-01T10:00:00.5Z"},
        {"user_id": "u2", "event": "search", "query": "lamp", "region": "north"},
    ]
    log.append([("event", p["user_id"], p) for p in parse_event_payloads(body, 1.8e9)])
    replayed = events_from_payloads([r.payload for r in log.read(0)])
    assert replayed.equals(parse_events(body, 1.8e9))


def test_newest_record_of_a_kind(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    assert log.newest("model") is None  # an empty log
    log.append(events(3))
    assert log.newest("model") is None  # none of that kind
    first = log.append([("model", "v1@a", {"folder": "/models/v1"})])
    # more records after it than one backwards page of the Redis scan holds
    monkeypatch.setattr("marketrec.online.log._SCAN_PAGE", 4)
    log.append(events(9))
    found = log.newest("model")
    assert found is not None and (found.offset, found.key) == (first, "v1@a")
    assert found.payload == {"folder": "/models/v1"}
    second = log.append([("model", "v2@b", {"folder": "/models/v2"}), *events(2)]) - 2
    assert log.newest("model") == next(r for r in log.read(0) if r.offset == second)
    assert log.newest("event") == log.read(0)[-1]
    assert log.newest("item") is None


def test_a_closed_log_refuses_calls(log: EventLog) -> None:
    log.close()
    with pytest.raises(EventLogError, match="closed"):
        log.append(events(1))
    with pytest.raises(EventLogError, match="closed"):
        log.read(0)
    with pytest.raises(EventLogError, match="closed"):
        log.newest("model")


# --- SQLite specifics --------------------------------------------------------------------------


def test_sqlite_batch_is_one_transaction_in_wal_mode(tmp_path: Path) -> None:
    with SQLiteEventLog(tmp_path / "events.sqlite") as log:
        statements: list[str] = []
        log._db.set_trace_callback(statements.append)  # type: ignore[union-attr]
        log.append(events(100))
        log._db.set_trace_callback(None)  # type: ignore[union-attr]
        assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
        db = sqlite3.connect(tmp_path / "events.sqlite")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()


_WRITER = """
import sys
from marketrec.online.log import SQLiteEventLog
log = SQLiteEventLog(sys.argv[1])
for i in range(30):
    log.append([("event", sys.argv[2], {"i": i}), ("event", sys.argv[2], {"i": i})])
log.close()
"""


def test_sqlite_several_processes_append_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "events.sqlite"
    SQLiteEventLog(path).close()  # created once, as `serve` does before starting workers
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{n}"]) for n in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with SQLiteEventLog(path) as log:
        records = log.read(0)
    assert len(records) == 2 * 30 * 2
    assert [r.offset for r in records] == sorted({r.offset for r in records})
    for first, second in zip(records[::2], records[1::2], strict=True):
        assert (first.key, first.payload) == (second.key, second.payload)


def test_sqlite_unusable_path_is_a_config_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "events.sqlite"
    not_a_db.write_text("hello, I am not a database" * 100)
    with pytest.raises(ConfigError, match=r"events\.sqlite: cannot open"):
        SQLiteEventLog(not_a_db)


# --- Redis specifics ---------------------------------------------------------------------------


def test_redis_prefixes_isolate_logs(redis_prefix: str) -> None:
    with (
        RedisEventLog(REDIS_URL, redis_prefix + "a:") as a,
        RedisEventLog(REDIS_URL, redis_prefix + "b:") as b,
    ):
        a.append(events(3))
        assert b.last_offset() == 0 and b.read(0) == []
        assert b.append(events(1)) == 1


def test_redis_offsets_are_stream_ids_and_survive_a_lost_counter(redis_prefix: str) -> None:
    with RedisEventLog(REDIS_URL, redis_prefix) as log:
        assert log.append(events(3)) == 3
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        ids = [entry_id for entry_id, _ in client.xrange(f"{redis_prefix}log")]
        assert ids == ["1-0", "2-0", "3-0"]
        client.delete(f"{redis_prefix}log:last_offset")
        assert log.last_offset() == 3 and log.append(events(1)) == 4
        assert client.get(f"{redis_prefix}log:last_offset") == "4"
        client.close()


def test_redis_unreachable_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("Redis not reachable at redis://127.0.0.1:1/0")
    ):
        RedisEventLog("redis://127.0.0.1:1/0", socket_timeout=1)


# --- open_log ----------------------------------------------------------------------------------


def test_open_log_defaults_to_sqlite_in_the_folder(tmp_path: Path) -> None:
    for url in (None, "sqlite://", "sqlite:///"):
        with closing(open_log(url, tmp_path)) as log:
            assert isinstance(log, SQLiteEventLog)
            assert log.path == tmp_path / "events.sqlite"


def test_open_log_sqlite_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = tmp_path / "abs" / "log.sqlite"
    with closing(open_log(f"sqlite:///{absolute}", tmp_path / "unused")) as log:
        assert isinstance(log, SQLiteEventLog)
        assert log.path == absolute and absolute.exists()
    monkeypatch.chdir(tmp_path)
    with closing(open_log("sqlite:///rel/log.sqlite", tmp_path / "unused")) as log:
        assert isinstance(log, SQLiteEventLog)
        assert log.path == Path("rel/log.sqlite") and (tmp_path / "rel/log.sqlite").exists()


def test_open_log_redis(redis_prefix: str, tmp_path: Path) -> None:
    log = open_log(REDIS_URL, tmp_path, prefix=redis_prefix)
    assert isinstance(log, RedisEventLog)
    assert log.append(events(1)) == 1
    log.close()


@pytest.mark.parametrize(
    "url", ["postgres://db/events", "events.sqlite", "sqlite://host/events.sqlite", ""]
)
def test_open_log_refuses_other_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        open_log(url, tmp_path)
    assert repr(url) in str(caught.value)


def test_redis_passwords_stay_out_of_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisEventLog("redis://user:s3cret@127.0.0.1:1/0", socket_timeout=1)
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)


def test_payloads_are_stored_as_compact_json(tmp_path: Path) -> None:
    with SQLiteEventLog(tmp_path / "events.sqlite") as log:
        log.append([("user", "u1", {"name": "Zoë", "n": 1})])
    db = sqlite3.connect(tmp_path / "events.sqlite")
    stored = db.execute("SELECT payload FROM log").fetchone()[0]
    db.close()
    assert stored == '{"name":"Zoë","n":1}' and json.loads(stored) == {"name": "Zoë", "n": 1}


def test_payloads_read_back_exactly_beyond_what_orjson_parses(log: EventLog) -> None:
    """Payloads are read with orjson, and with json where orjson stops (integers beyond 64
    bits, which json writes): every record reads back as it was appended."""
    payloads = [
        {"user_id": "u1", "item_id": "i1", "event": "view", "ts": 1768031415.499604},
        {"attributes": {"age": 10**30, "name": "Zoë ☃", "score": -1e-300, "none": None}},
        {"nested": [1, 2.5, {"a": [True, False]}], "big": -(2**64)},
        {"edges": [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63)], "id": "sku-12345678901234567890"},
        {"fraction": 0.12345678901234567, "long": 10**19 + 1},
    ]
    log.append([("user", f"u{i}", p) for i, p in enumerate(payloads)])
    assert [r.payload for r in log.read(0)] == payloads
