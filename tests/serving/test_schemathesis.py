"""Property-based requests generated from the service's own OpenAPI schema (schemathesis):
whatever a client sends that the schema allows, or breaks, the answer is never a 500."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from market_model import train_tower_model

from marketrec.online.live import LiveRecommender, model_version
from marketrec.online.log import SQLiteEventLog
from marketrec.pipeline.recommender import load_recommender
from marketrec.serving.app import create_app

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")

_FOLDER = Path(tempfile.mkdtemp(prefix="marketrec-schemathesis-"))
_MODEL = train_tower_model(_FOLDER / "model")
_LOG = SQLiteEventLog(_FOLDER / "events.sqlite")
_LIVE = LiveRecommender(load_recommender(_MODEL), _LOG, version=model_version(_MODEL))
_LIVE.recover()
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_LIVE))
# valid requests and, above all, requests that break the schema (wrong types, missing or
# unknown fields, out-of-range numbers): those must get a 4xx with a JSON error
schema.config.generation.update(
    modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_makes_the_service_fail(case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    if response.status_code >= 400:
        assert "error" in response.json()
