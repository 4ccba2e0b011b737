"""`marketrec serve` for real: granian, a worker process, the default SQLite log in
MODEL/state/; and its answer to a bad model folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from market_model import train_model

from marketrec.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout}s")


def test_serve_answers_over_http(tmp_path: Path) -> None:
    model = train_model(tmp_path / "model")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "marketrec.cli", "serve", str(model), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_ready(base, process)
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
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    text = output.decode(errors="replace")
    assert '"endpoint":"/v1/recommendations"' in text  # one JSON log line per request


def test_serve_refuses_a_bad_model_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert "model folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["serve", str(tmp_path / "empty")]) == 1
    assert "not a model folder" in capsys.readouterr().err


def test_serve_refuses_a_bad_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = train_model(tmp_path / "model")
    assert main(["serve", str(model), "--store", "mysql://db"]) == 1
    assert "unsupported" in capsys.readouterr().err
