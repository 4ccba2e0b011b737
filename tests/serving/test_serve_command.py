"""`marketrec serve` for real: granian, a worker process, the default SQLite log in
MODEL/state/; and its answer to a bad model folder."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from market_model import train_model
from server_process import ServerProcess

from marketrec.cli import main


def test_serve_answers_over_http(tmp_path: Path) -> None:
    model = train_model(tmp_path / "model")
    server = ServerProcess(model, ["--rank-budget-ms", "12.5"], tmp_path / "server.log")
    base = server.url
    try:
        server.wait_ready()
        # the option reaches the worker (through the environment granian's factory reads)
        assert httpx.get(f"{base}/readyz").json()["rank_budget_ms"] == 12.5
        recs = httpx.get(f"{base}/v1/recommendations", params={"user_id": "u00", "k": 3})
        assert recs.status_code == 200
        assert len(recs.json()["items"]) == 3
        target = recs.json()["items"][0]["item_id"]
        event = {"user_id": "u00", "item_id": target, "event": "click"}
        posted = httpx.post(f"{base}/v1/events", json=event)
        assert posted.status_code == 202 and posted.json() == {"accepted": 1}
        again = httpx.get(f"{base}/v1/recommendations", params={"user_id": "u00", "k": 3})
        assert target not in [i["item_id"] for i in again.json()["items"]]
        assert httpx.get(f"{base}/v1/recommendations", params={"k": 3}).status_code == 400
        assert (model / "state" / "events.sqlite").is_file()  # the default store
    finally:
        server.stop()
    text = server.log(tail=None)
    assert '"endpoint":"/v1/recommendations"' in text  # one JSON log line per request


def test_serve_refuses_a_bad_model_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert "model folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["serve", str(tmp_path / "empty")]) == 1
    assert "not a model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: a budget that is not positive
        main(["serve", str(tmp_path / "empty"), "--rank-budget-ms", "0"])
    assert "--rank-budget-ms: must be a positive number" in capsys.readouterr().err


def test_serve_refuses_a_bad_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = train_model(tmp_path / "model")
    assert main(["serve", str(model), "--store", "mysql://db"]) == 1
    assert "unsupported" in capsys.readouterr().err
