"""Exposures on the shared store: a service on a Redis store writes them to the stream
`<prefix>exposures`, the report and the rollout guard read them back from it, and files and the
stream give the same report for the same exposures. A write that fails never fails a request.

Redis tests use database 15 under a unique key prefix (`redis_prefix`: deleted afterwards;
skipped when no Redis answers at 127.0.0.1:6379).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import redis
from fastapi.testclient import TestClient
from market_model import ITEMS, train_model
from polars.testing import assert_frame_equal
from server_process import ServerProcess
from test_experiments_api import CONFIG

from conftest import REDIS_URL
from marketrec.cli import main
from marketrec.experiments.assignment import (
    Assigner,
    Assignment,
    VariantSettings,
    parse_experiments,
)
from marketrec.experiments.exposures import (
    ExposureLog,
    RedisExposureLog,
    exposure_stream,
    open_exposures,
    read_exposures,
)
from marketrec.online.live import LiveRecommender, model_version
from marketrec.online.log import RedisEventLog, SQLiteEventLog
from marketrec.online.records import events_from_payloads
from marketrec.pipeline.recommender import load_recommender
from marketrec.serving.app import create_app

T0 = 1_772_323_200.0  # 2026-03-01, epoch seconds
DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("model") / "knn")


def client(model: Path, log: object, exposures: ExposureLog | RedisExposureLog) -> TestClient:
    live = LiveRecommender(load_recommender(model), log, version=model_version(model))  # type: ignore[arg-type]
    live.recover()
    app = create_app(
        live, owns_live=True, experiments=Assigner(parse_experiments(CONFIG)), exposures=exposures
    )
    return TestClient(app, raise_server_exceptions=False)


def assigned(experiment: str, variant: str, layer: str = "default", forced: bool = False):
    return Assignment(
        experiment=experiment,
        layer=layer,
        variant=variant,
        settings=VariantSettings(),
        forced=forced,
    )


def report(exposures: str, events: Path, out: Path, *extra: str) -> int:
    argv = ["experiment", "report", "explore", "--exposures", exposures, *extra]
    return main([*argv, "--events", str(events), "--out", str(out)])


def write_events(path: Path, users: list[str], ts: float) -> Path:
    """Clicks on the first items by every other user, at `ts`."""
    payloads = [
        {"user_id": u, "item_id": item, "event": "click", "ts": ts}
        for u in users[::2]
        for item in ITEMS[:6]
    ]
    events_from_payloads(payloads).write_parquet(path)
    return path


def stream_length(prefix: str) -> int:
    with redis.Redis.from_url(REDIS_URL) as r:
        return int(r.xlen(exposure_stream(prefix)))


# --------------------------------------------------------------------------- same report
def test_the_same_exposures_in_files_and_in_redis_give_the_same_report(
    redis_prefix: str, tmp_path: Path
) -> None:
    """Two "workers" per store, each writing half the exposures: the frames and the report
    JSON read from the files and from the stream are identical."""
    files = [ExposureLog(tmp_path / "exposures") for _ in range(2)]
    streams = [RedisExposureLog(REDIS_URL, redis_prefix) for _ in range(2)]
    users = [f"u{i:02d}" for i in range(40)]
    for i, user in enumerate(users):
        assignments = [assigned("explore", ("control", "all-new")[i % 2])]
        if i % 3 == 0:
            assignments.append(assigned("north-only", "on", "regional", forced=i == 0))
        region = "north" if i % 3 == 0 else None
        args = (f"req-{i}", user, assignments, ITEMS[i % 5 : i % 5 + 4], region, "knn@1")
        for writer in (files[i % 2], streams[(i + 1) % 2]):  # another split on each side
            writer.record(*args, ts=T0 + i * 60.0)
    for writer in (*files, *streams):
        writer.close()
    assert sum(w.lost for w in (*files, *streams)) == 0
    assert stream_length(redis_prefix) == 40 + 14

    from_files = read_exposures(tmp_path / "exposures")
    from_redis = read_exposures(REDIS_URL, redis_prefix)
    assert from_files.height == 54
    assert_frame_equal(from_files, from_redis)

    events = write_events(tmp_path / "events.parquet", users, T0 + 3600.0)
    assert report(str(tmp_path / "exposures"), events, tmp_path / "files") == 0
    assert report(REDIS_URL, events, tmp_path / "redis", "--store-prefix", redis_prefix) == 0
    as_files = (tmp_path / "files" / "report.json").read_text()
    assert as_files == (tmp_path / "redis" / "report.json").read_text()  # byte for byte
    assert json.loads(as_files)["variants"]["control"]["users"] == 20


def test_a_retried_batch_is_read_once(redis_prefix: str) -> None:
    """A batch Redis applied but whose reply was lost is sent again: the reader keeps each
    line once."""
    writer = RedisExposureLog(REDIS_URL, redis_prefix)
    writer.record("r1", "ann", [assigned("explore", "control")], ["a"], ts=T0)
    writer.close()
    with redis.Redis.from_url(REDIS_URL, decode_responses=True) as r:
        (_, fields), *_ = r.xrange(exposure_stream(redis_prefix))
        r.xadd(exposure_stream(redis_prefix), fields)  # the same line again
    assert read_exposures(REDIS_URL, redis_prefix).height == 1


# --------------------------------------------------------------------------- services
def test_two_services_on_one_redis_write_exposures_that_one_report_reads(
    model_folder: Path, redis_prefix: str, tmp_path: Path
) -> None:
    services = [
        client(
            model_folder,
            RedisEventLog(REDIS_URL, redis_prefix),
            open_exposures(None, REDIS_URL, tmp_path / "unused", redis_prefix),
        )
        for _ in range(2)
    ]
    users = [f"visitor-{u}" for u in range(30)] + [f"u{u:02d}" for u in range(10)]
    answered: dict[str, str] = {}
    with services[0] as first, services[1] as second:
        for i, user in enumerate(users):
            reply = (first, second)[i % 2].get("/v1/recommendations", params={"user_id": user})
            assert reply.status_code == 200
            answered[reply.json()["request_id"]] = user
    assert not (tmp_path / "unused").exists()  # nothing went to files

    exposures = read_exposures(REDIS_URL, redis_prefix)
    explore = exposures.filter(pl.col("experiment") == "explore")
    assert dict(zip(explore["request_id"], explore["user_id"], strict=True)) == answered
    # u00..u09 live in the north: their responses are in the regional experiment too
    assert exposures.filter(pl.col("experiment") == "north-only").height == 10

    now = float(exposures["ts"].max().timestamp())  # type: ignore[union-attr]
    events = write_events(tmp_path / "events.parquet", users, now)
    out = tmp_path / "report"
    assert report(REDIS_URL, events, out, "--store-prefix", redis_prefix) == 0
    result = json.loads((out / "report.json").read_text())
    assert sum(v["users"] for v in result["variants"].values()) == len(users)
    assert sum(v["exposures"] for v in result["variants"].values()) == len(users)


def test_serve_with_two_workers_on_redis_logs_exposures_to_the_stream(
    model_folder: Path, redis_prefix: str, tmp_path: Path
) -> None:
    """A real `marketrec serve --workers 2` on a Redis store: every answered request is in
    the stream once the service stopped (the workers send what they queued before exiting),
    and no exposure files are written."""
    experiments = tmp_path / "experiments.json"
    experiments.write_text(json.dumps(CONFIG))
    args = ["--store", REDIS_URL, "--store-prefix", redis_prefix, "--workers", "2"]
    server = ServerProcess(
        model_folder, [*args, "--experiments", str(experiments)], tmp_path / "log"
    )
    answered = set()
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            for u in range(40):
                reply = http.get("/v1/recommendations", params={"user_id": f"visitor-{u}"})
                assert reply.status_code == 200, reply.text
                answered.add(reply.json()["request_id"])
    finally:
        server.stop()
    assert set(read_exposures(REDIS_URL, redis_prefix)["request_id"]) == answered
    assert not (model_folder / "state" / "exposures").exists(), server.log()


def test_exposures_dir_forces_files_and_sqlite_keeps_files(
    redis_prefix: str, tmp_path: Path
) -> None:
    forced = open_exposures(tmp_path / "forced", REDIS_URL, tmp_path / "default", redis_prefix)
    sqlite = open_exposures(None, f"sqlite:///{tmp_path}/e.sqlite", tmp_path / "default")
    default = open_exposures(None, None, tmp_path / "default")
    redis_writer = open_exposures(None, REDIS_URL, tmp_path / "default", redis_prefix)
    try:
        assert isinstance(forced, ExposureLog) and forced.folder == tmp_path / "forced"
        assert isinstance(sqlite, ExposureLog) and sqlite.folder == tmp_path / "default"
        assert isinstance(default, ExposureLog) and default.folder == tmp_path / "default"
        assert isinstance(redis_writer, RedisExposureLog)
        assert redis_writer.stream == f"{redis_prefix}exposures"
    finally:
        for writer in (forced, sqlite, default, redis_writer):
            writer.close()


# --------------------------------------------------------------------------- failures
def test_a_full_disk_loses_exposures_but_not_the_response(
    model_folder: Path, tmp_path: Path
) -> None:
    exposures = ExposureLog(tmp_path / "exposures")
    exposures._file.close()
    exposures._file = Path("/dev/full").open("a", buffering=1, encoding="utf-8")  # noqa: SIM115 ENOSPC
    service = client(model_folder, SQLiteEventLog(tmp_path / "events.sqlite"), exposures)
    with service:
        for user in ("ann", "bob", "u03"):  # u03: north, so in both experiments
            assert service.get("/v1/recommendations", params={"user_id": user}).status_code == 200
        metrics = service.get("/metrics").text
    assert exposures.lost == 4
    assert "marketrec_exposures_lost_total 4.0" in metrics


def test_redis_away_queues_exposures_and_retries_then_counts_what_it_cannot_send(
    model_folder: Path, redis_prefix: str, tmp_path: Path
) -> None:
    writer = RedisExposureLog(REDIS_URL, redis_prefix, max_pending=3, drain_timeout=0.5)
    alive = writer._redis
    writer._redis = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.2)  # Redis away
    one = [assigned("explore", "control")]
    for i in range(2):
        writer.record(f"early-{i}", "ann", one, ["a"])
    assert not writer.flush(timeout=0.3) and writer.lost == 0  # queued, retried
    writer._redis = alive  # back: the queue is sent
    assert writer.flush(timeout=10)
    assert stream_length(redis_prefix) == 2 and writer.lost == 0

    # away for good: the queue (3 lines) fills, then lines are lost; the rest at close
    writer._redis = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.2)
    service = client(model_folder, SQLiteEventLog(tmp_path / "events.sqlite"), writer)
    with service:
        for i in range(5):
            reply = service.get("/v1/recommendations", params={"user_id": f"visitor-{i}"})
            assert reply.status_code == 200
        assert writer.lost == 2
        assert "marketrec_exposures_lost_total 2.0" in service.get("/metrics").text
    assert writer.lost == 5  # closing gave up on the 3 queued after drain_timeout
    alive.close()
    assert stream_length(redis_prefix) == 2


def test_closing_sends_what_is_queued(redis_prefix: str) -> None:
    """A worker that stops while Redis is briefly away still sends its queued lines."""
    writer = RedisExposureLog(REDIS_URL, redis_prefix)
    alive = writer._redis
    writer._redis = redis.Redis.from_url(DEAD_REDIS, socket_connect_timeout=0.2)
    for i in range(3):
        writer.record(f"r{i}", "ann", [assigned("explore", "control")], ["a"])
    time.sleep(0.3)  # a few failed tries: the lines wait in the queue
    writer._redis = alive
    writer.close()
    assert writer.lost == 0 and stream_length(redis_prefix) == 3


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (DEAD_REDIS, "exposures: Redis not reachable at redis://127.0.0.1:1/0"),
        ("redis://127.0.0.1:notaport/0", "Port could not be cast to integer"),
        ("redis://user:s3cret@127.0.0.1:1/0", "Redis not reachable at redis://user:***@"),
    ],
)
def test_report_and_guard_on_an_unusable_redis_fail_with_one_line(
    url: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_events(tmp_path / "events.parquet", ["ann"], T0)
    assert report(url, events, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "s3cret" not in err
    state = tmp_path / "rollouts.json"
    assert main(["rollout", "start", "r", "--state", str(state), "--internal-users", "a"]) == 0
    guard = ["rollout", "guard", "r", "--state", str(state), "--exposures", url]
    # --every keeps waiting for exposures to come, not for a store that cannot answer
    assert main([*guard, "--events", str(events), "--every", "3600"]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_empty_stream_is_a_clear_error(
    redis_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_events(tmp_path / "events.parquet", ["ann"], T0)
    assert report(REDIS_URL, events, tmp_path / "out", "--store-prefix", redis_prefix) == 1
    assert "no exposures in this stream yet" in capsys.readouterr().err
