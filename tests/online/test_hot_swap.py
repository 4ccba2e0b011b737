"""Hot swap: a `model` record in the event log makes every worker swap in a retrained model,
caught up with the log after the offset it was trained up to, without failing a request."""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import pytest

from marketrec.cli import main
from marketrec.core.errors import MarketrecError
from marketrec.online.live import LiveRecommender
from marketrec.online.log import SQLiteEventLog
from marketrec.online.retrain import publish, retrain
from marketrec.online.versions import model_version, record_training_data, trained_offset
from marketrec.pipeline.recommender import load_recommender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from market_model import ITEMS, market, train_model


def open_live(folder: Path, log_file: Path) -> LiveRecommender:
    live = LiveRecommender(
        load_recommender(folder), SQLiteEventLog(log_file), version=model_version(folder)
    )
    live.recover()
    return live


def event(user: str, item: str, kind: str = "purchase", ts: float = 1.77e9) -> dict:
    return {"user_id": user, "item_id": item, "event": kind, "ts": ts}


def listed(live: LiveRecommender, user: str) -> list[str]:
    return [i["item_id"] for i in live.recommend(user, len(ITEMS))["items"]]


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Path]:
    return train_model(tmp_path / "v1"), tmp_path / "state" / "events.sqlite"


def test_a_published_model_serves_with_the_events_after_its_training(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, log_file = served
    live = open_live(folder, log_file)
    old = live.version
    live.ingest([event("walk-in", "c1-2"), event("u00", "c2-3")])  # offsets 1, 2
    retrained, fold = retrain(folder, market(), live.log, tmp_path / "v2")
    assert fold.offset == 2 and trained_offset(retrained) == 2
    live.ingest(event("walk-in", "c2-1", ts=1.77e9 + 60))  # after the retrain: replayed into v2
    version, offset = publish(live.log, retrained)
    live.ingest(event("walk-in", "c0-5", ts=1.77e9 + 120))  # after the publish record
    assert offset == 4 and version == model_version(retrained) != old

    live.recommend("u01", 5)  # a read syncs the log and starts the swap
    assert live.wait_for_swap(30)
    assert live.version == version and live.swap_error is None
    body = live.recommend("walk-in", len(ITEMS))
    assert body["model_version"] == version
    shown = [i["item_id"] for i in body["items"]]
    # bought before the retrain (trained on), after it (replayed) and after the publish
    assert {"c1-2", "c2-1", "c0-5"}.isdisjoint(shown) and shown

    # the same as the retrained model given the records after its offset directly …
    reference = open_live(retrained, tmp_path / "reference.sqlite")
    reference.ingest([event("walk-in", "c2-1", ts=1.77e9 + 60)])
    reference.ingest([event("walk-in", "c0-5", ts=1.77e9 + 120)])
    # … and to a worker that starts later and recovers from the log (swapping on the way)
    late = open_live(folder, log_file)
    assert late.version == version and not late.swapping
    for user in ("walk-in", "u00", "u07", "stranger"):
        assert listed(live, user) == listed(reference, user) == listed(late, user), user
    for state in (live, reference, late):
        state.close()


def test_a_restart_starts_from_the_newest_model_in_the_log(
    served: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, log_file = served
    live = open_live(folder, log_file)
    live.ingest([event("walk-in", "c1-2"), event("u00", "c2-3")])
    v2, _ = retrain(folder, market(), live.log, tmp_path / "v2")
    publish(live.log, v2)
    live.ingest(event("walk-in", "c2-1", ts=1.77e9 + 60))
    v3, _ = retrain(folder, market(), live.log, tmp_path / "v3")
    live.ingest(event("u07", "c0-5", ts=1.77e9 + 90))  # trained on by no version: replayed
    version, _ = publish(live.log, v3)
    live.ingest(event("walk-in", "c0-4", ts=1.77e9 + 120))
    assert live.wait_for_swap(30) and live.version == version

    from marketrec.online import live as live_module

    applied: list[tuple[str, str]] = []  # (the folder of the model applied to, record kind)
    loaded: list[str] = []
    real_apply, real_load = live_module._apply_to, live_module._load_for_swap
    folders: dict[int, str] = {}

    def load(record, *args):  # type: ignore[no-untyped-def]
        loaded.append(record.key)
        model, offset = real_load(record, *args)
        folders[id(model)] = record.key
        return model, offset

    def apply(model, batch):  # type: ignore[no-untyped-def]
        applied.append((folders.get(id(model), "start"), batch[0].kind))
        return real_apply(model, batch)

    monkeypatch.setattr(live_module, "_apply_to", apply)
    monkeypatch.setattr(live_module, "_load_for_swap", load)
    late = open_live(folder, log_file)
    # only the newest version was loaded, and the starting model was given nothing
    assert late.version == version and loaded == [version]
    assert applied and all(name == version for name, _ in applied)
    for user in ("walk-in", "u00", "u07", "stranger"):
        assert listed(late, user) == listed(live, user), user
    # this worker's own record of the log still covers the records before the newest model
    assert [e["item_id"] for e in late.history("walk-in")] == ["c0-4", "c2-1", "c1-2"]
    assert late.history("u00") == live.history("u00")
    late.recover()  # again: nothing is noted twice
    assert [e["item_id"] for e in late.history("walk-in")] == ["c0-4", "c2-1", "c1-2"]
    # the same state as the full replay, through every version
    full = LiveRecommender(
        load_recommender(folder), SQLiteEventLog(log_file), version=model_version(folder)
    )
    full.recover(from_newest_model=False)
    assert full.version == version and full.offset == late.offset
    assert loaded[1:] == [model_version(v2), version]
    for user in ("walk-in", "u00", "u07", "stranger"):
        assert listed(full, user) == listed(late, user), user
        assert full.history(user) == late.history(user)

    # a newest model that no longer loads: the whole log is replayed, and the last version
    # that loads serves, as it would have in a worker that followed the log
    monkeypatch.setattr(live_module, "_apply_to", real_apply)
    monkeypatch.setattr(live_module, "_load_for_swap", real_load)
    shutil.rmtree(v3)
    fallback = open_live(folder, log_file)
    assert fallback.version == model_version(v2) and "v3" in (fallback.swap_error or "")
    assert [e["item_id"] for e in fallback.history("walk-in")] == ["c0-4", "c2-1", "c1-2"]
    for state in (live, late, full, fallback):
        state.close()


def test_requests_never_fail_while_a_model_is_swapped_in(
    served: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, log_file = served
    live = open_live(folder, log_file)
    old = live.version
    retrained, _ = retrain(folder, market(), live.log, tmp_path / "v2")
    # one list per client thread: appends of different threads may land out of order
    # (a thread can be preempted between its answer and its append), a thread's own cannot
    seen: list[list[str]] = [[], [], []]
    failures: list[BaseException] = []
    stop = threading.Event()

    def hammer(versions: list[str]) -> None:
        while not stop.is_set():
            try:
                versions.append(live.recommend("u03", 10)["model_version"])
            except BaseException as exc:  # any failure fails the test
                failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(versions,)) for versions in seen]
    for thread in threads:
        thread.start()
    try:
        version, _ = publish(live.log, retrained)
        assert live.wait_for_swap(30)
        for _ in range(3):  # once swapped, every answer is the new version's
            assert live.recommend("u03", 10)["model_version"] == version
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert any(version in versions for versions in seen)
    for versions in seen:  # each client: the old version, then only the new one
        switched = versions.index(version) if version in versions else len(versions)
        assert set(versions[:switched]) <= {old} and set(versions[switched:]) <= {version}
    live.close()


def test_a_model_record_that_cannot_load_keeps_the_old_model(served: tuple[Path, Path]) -> None:
    folder, log_file = served
    live = open_live(folder, log_file)
    old = live.version
    live.log.append([("model", "ghost@1", {"folder": "/nonexistent/ghost"})])
    live.recommend("u01", 5)
    assert live.wait_for_swap(10)
    assert live.version == old and "ghost@1" in (live.swap_error or "")
    assert live.recommend("u01", 5)["items"]
    with pytest.raises(MarketrecError):
        publish(live.log, folder.parent / "not-a-model")  # refused before it reaches a worker
    live.close()


def test_the_retrain_command_trains_on_the_recorded_data_and_publishes(
    served: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = served
    log_file = folder / "state" / "events.sqlite"  # the command's default store
    assert main(["retrain", str(folder)]) != 0  # no dataset recorded, none given
    assert "--data" in capsys.readouterr().err
    data = tmp_path / "data"
    market().save(data)
    record_training_data(folder, data)
    live = open_live(folder, log_file)
    live.ingest(event("walk-in", "c1-2"))
    out = tmp_path / "v2"
    assert main(["retrain", str(folder), "--out", str(out)]) == 0
    assert trained_offset(out) == 1
    assert "walk-in" in load_recommender(out).retrieval.user_ids.to_list()
    live.recommend("u01", 5)
    assert live.wait_for_swap(30) and live.version == model_version(out)
    # --no-publish only trains
    assert main(["retrain", str(folder), "--out", str(tmp_path / "v3"), "--no-publish"]) == 0
    live.recommend("u01", 5)
    assert live.wait_for_swap(30) and live.version == model_version(out)
    live.close()


def test_the_warm_up_at_start_and_swap_changes_no_answer(served: tuple[Path, Path]) -> None:
    """`_warm_up` (run before a worker is ready and before a swapped-in model serves) only
    builds caches: a warmed model answers exactly as a cold one."""
    from marketrec.online.live import _warm_up

    folder, _ = served
    warm, cold = load_recommender(folder), load_recommender(folder)
    _warm_up(warm)
    for user in ("u00", "u21", "walk-in"):
        assert warm.recommend_one(user, 6) == cold.recommend_one(user, 6), user
