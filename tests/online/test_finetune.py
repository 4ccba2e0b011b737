"""Continuous learning: fine-tuning a served two-tower pipeline on the event log's new events,
starting from its weights, and publishing each version for the workers to swap in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from marketrec.cli import main
from marketrec.core import onnx_forward
from marketrec.core.errors import ModelError
from marketrec.online.finetune import ContinuousTrainer, current_folder, fine_tune
from marketrec.online.live import LiveRecommender
from marketrec.online.log import SQLiteEventLog
from marketrec.online.versions import model_version, trained_offset
from marketrec.pipeline.recommender import Recommender, load_recommender
from marketrec.retrieval.training import WarmStart, train_two_tower

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from market_model import market, train_model, train_tower_model

LATER = 1.77e9  # after the market's training events (January 2026), not in the future


def new_events(n: int = 30) -> list[tuple[str, str, dict]]:
    """Walk-in users who view c1-1 and then buy c2-5: a pattern the model has not seen."""
    out = []
    for i in range(n):
        user = f"walk-in-{i}"
        for kind, item, dt in (("view", "c1-1", 0.0), ("purchase", "c2-5", 1.0)):
            payload = {"user_id": user, "item_id": item, "event": kind, "ts": LATER + i + dt}
            out.append(("event", user, payload))
    return out


def tower_weights(folder: Path) -> dict[str, torch.Tensor]:
    model = load_recommender(folder)
    assert isinstance(model, Recommender)
    return {k: v.clone() for k, v in model.retrieval.scorer._model.state_dict().items()}


@pytest.fixture(scope="module")
def tower_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tower_model(tmp_path_factory.mktemp("tower") / "v1")


def test_nothing_new_in_the_log_means_no_fine_tuning(tower_folder: Path, tmp_path: Path) -> None:
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    assert fine_tune(tower_folder, market(), log, tmp_path / "v2") is None
    log.append(new_events(2))
    assert fine_tune(tower_folder, market(), log, tmp_path / "v2", min_events=5) is None
    assert not (tmp_path / "v2").exists()
    log.close()


def test_warm_start_without_new_targets_keeps_the_weights_exactly(tower_folder: Path) -> None:
    model = load_recommender(tower_folder)
    assert isinstance(model, Recommender)
    scorer = model.retrieval.scorer
    state = {k: v.clone() for k, v in scorer._model.state_dict().items()}
    tuned, report = train_two_tower(
        scorer._data, scorer._config, warm=WarmStart(state, since_ts=LATER * 2)
    )
    assert report.epochs_run == 0
    for name, value in tuned.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_fine_tuning_starts_from_the_served_weights_and_keeps_its_vocabularies(
    tower_folder: Path, tmp_path: Path
) -> None:
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    log.append(new_events())
    put = {"title": "Garden hose", "category": "Garden > Tools", "price": 20.0}
    log.append([("item", "hose", put)])
    result = fine_tune(tower_folder, market(), log, tmp_path / "v2", epochs=2)
    assert result is not None
    assert result.new_events == 60 and result.offset == 61 == trained_offset(result.folder)
    assert model_version(result.folder) != model_version(tower_folder)

    old, new = tower_weights(tower_folder), tower_weights(result.folder)
    assert old.keys() == new.keys()
    assert all(old[k].shape == new[k].shape for k in old)  # the same vocabularies: same shapes
    moved = [k for k in old if not torch.equal(old[k], new[k])]
    assert moved  # it learned from the new events …
    # … starting from the served weights: a small step away from them, not a new model
    flat_old = torch.cat([v.flatten().float() for v in old.values()])
    flat_new = torch.cat([new[k].flatten().float() for k in old])
    assert float((flat_new - flat_old).norm() / flat_old.norm()) < 0.5

    loaded = load_recommender(result.folder)
    assert isinstance(loaded, Recommender)
    meta, before = loaded.retrieval.scorer._meta, tower_weights_meta(tower_folder)
    assert meta["item_vocabs"] == before["item_vocabs"]
    assert meta["user_vocabs"] == before["user_vocabs"]
    # the product PUT live is a trained column of the new version, the walk-ins its users
    assert "hose" in loaded.retrieval.item_ids.to_list()
    assert "walk-in-3" in loaded.retrieval.user_ids.to_list()
    recs = loaded.recommend(["walk-in-3", "stranger"], 5)
    assert recs.height == 10 and "c2-5" not in recs.filter(user_id="walk-in-3")["item_id"]
    log.close()


def test_a_worker_started_on_a_fine_tuned_folder_does_not_replay_what_it_learned(
    tower_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file = tmp_path / "events.sqlite"
    log = SQLiteEventLog(log_file)
    log.append(new_events(5))
    result = fine_tune(tower_folder, market(), log, tmp_path / "v2")
    assert result is not None
    view = {"user_id": "u01", "item_id": "c2-2", "event": "view", "ts": LATER}
    log.append([("event", "u01", view)])
    # the version carries its user tower's ONNX exports: the worker makes none of its own
    assert (result.folder / "onnx" / "user_tower" / "eval.onnx").is_file()
    exported: list[object] = []
    monkeypatch.setattr(onnx_forward, "_exported", exported.append)
    live = LiveRecommender.open(result.folder, f"sqlite:///{log_file}", recover=False)
    report = live.recover()
    assert report.records == 1 and live.offset == result.offset + 1  # only the record after
    # the records the version learned are read once more, for the users' recent events only
    assert report.noted == result.offset
    assert [e["item_id"] for e in live.history("walk-in-2")] == ["c2-5", "c1-1"]
    assert exported == [] and live.recommend("u01", 3)["items"]
    tower = live.model.retrieval.scorer._model.users
    assert onnx_forward._cache[tower]["eval"] is not None  # served through ONNX Runtime
    live.close()
    log.close()


def tower_weights_meta(folder: Path) -> dict:
    model = load_recommender(folder)
    assert isinstance(model, Recommender)
    return model.retrieval.scorer._meta


def test_the_trainer_publishes_each_version_and_the_workers_swap_it_in(
    tower_folder: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "events.sqlite"
    live = LiveRecommender(
        load_recommender(tower_folder),
        SQLiteEventLog(log_file),
        version=model_version(tower_folder),
    )
    live.recover()
    served = tmp_path / "served"
    served.symlink_to(tower_folder)  # versions are written beside the served folder
    trainer = ContinuousTrainer(served, market(), SQLiteEventLog(log_file), keep=1)
    assert trainer.current == served and trainer.step() is None

    live.ingest([payload for _, _, payload in new_events(10)])
    first = trainer.step()
    assert first is not None and first.folder.parent == tmp_path
    live.recommend("u01", 5)  # a read syncs the log and starts the swap
    assert live.wait_for_swap(60) and live.swap_error is None
    assert live.version == model_version(first.folder)
    assert current_folder(served, trainer.event_log) == first.folder

    live.ingest({"user_id": "u05", "item_id": "c2-2", "event": "purchase", "ts": LATER + 99})
    second = trainer.step()  # from the first version, on the one event after its offset
    assert second is not None and second.new_events == 1
    info = json.loads((second.folder / "fine_tuned.json").read_text())
    assert info["from"] == str(first.folder.resolve()) and info["since_offset"] == first.offset
    assert not first.folder.exists() and second.folder.exists()  # keep=1
    assert tower_folder.exists()  # the served original is never pruned
    live.recommend("u01", 5)
    assert live.wait_for_swap(60) and live.version == model_version(second.folder)
    body = live.recommend("u05", 10)
    assert "c2-2" not in [i["item_id"] for i in body["items"]]  # replayed into the new version
    live.close()
    trainer.event_log.close()


def test_a_model_without_weights_cannot_be_fine_tuned(tmp_path: Path) -> None:
    folder = train_model(tmp_path / "knn")
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    log.append(new_events(3))
    with pytest.raises(ModelError, match="retrain"):
        fine_tune(folder, market(), log, tmp_path / "v2")
    log.close()


def test_the_finetune_command(
    tower_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    folder.symlink_to(tower_folder)
    assert main(["finetune", str(folder), "--once", "--store", "sqlite:///x.db"]) != 0
    assert "--data" in capsys.readouterr().err  # no dataset recorded, none given
    with pytest.raises(SystemExit) as usage:
        main(["finetune", str(folder), "--every", "0"])
    assert usage.value.code != 0 and "positive number" in capsys.readouterr().err
    data = tmp_path / "data"
    market().save(data)
    log_file = tmp_path / "log.sqlite"
    store = ["--store", f"sqlite:///{log_file}", "--data", str(data)]
    assert main(["finetune", str(folder), "--once", *store]) == 0
    assert "nothing done" in capsys.readouterr().out
    log = SQLiteEventLog(log_file)
    log.append(new_events(4))
    assert main(["finetune", str(folder), "--once", *store]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned on 8 new events" in out and "published" in out
    records = [r for r in log.read(0) if r.kind == "model"]
    assert len(records) == 1
    tuned = Path(records[0].payload["folder"])
    info = json.loads((tuned / "fine_tuned.json").read_text())
    assert trained_offset(tuned) == 8 and np.isfinite(info["seconds"])
    log.close()
