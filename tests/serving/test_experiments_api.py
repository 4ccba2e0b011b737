"""The service under experiments: each request gets its variants' settings, names them in the
response, and is logged as an exposure that the report reads back."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from market_model import ITEMS, train_model

from marketrec.cli import main
from marketrec.core.errors import ConfigError
from marketrec.experiments.assignment import Assigner, parse_experiments
from marketrec.experiments.exposures import ExposureLog, read_exposures
from marketrec.online.live import LiveRecommender, model_version
from marketrec.online.log import SQLiteEventLog
from marketrec.pipeline.recommender import load_recommender
from marketrec.serving.app import create_app

CONFIG = {
    "experiments": [
        {
            "name": "explore",
            "variants": [
                {"name": "control", "allocation": 50},
                {"name": "all-new", "allocation": 50, "settings": {"exploration_share": 1.0}},
            ],
            "forced": {"qa-new": "all-new", "qa-control": "control"},
        },
        {
            "name": "north-only",
            "layer": "regional",
            "variants": [{"name": "on", "allocation": 100}],
            "targeting": {"regions": ["north"]},
        },
    ]
}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_model(tmp_path_factory.mktemp("model") / "knn")


def serve(model_folder: Path, tmp_path: Path, config: dict = CONFIG) -> tuple[TestClient, Path]:
    live = LiveRecommender(
        load_recommender(model_folder),
        SQLiteEventLog(tmp_path / "events.sqlite"),
        version=model_version(model_folder),
    )
    live.recover()
    folder = tmp_path / "exposures"
    app = create_app(
        live,
        owns_live=True,
        experiments=Assigner(parse_experiments(config)),
        exposures=ExposureLog(folder),
    )
    return TestClient(app, raise_server_exceptions=False), folder


def test_variants_change_the_answer_and_are_named_and_logged(
    model_folder: Path, tmp_path: Path
) -> None:
    client, folder = serve(model_folder, tmp_path)
    with client:
        new = {"title": "Brand new puzzle", "category": "Toys > Puzzles"}
        assert client.put("/v1/items/fresh", json=new).status_code == 200
        forced = client.get("/v1/recommendations", params={"user_id": "qa-new", "k": 5}).json()
        plain = client.get("/v1/recommendations", params={"user_id": "qa-control", "k": 5}).json()
        north = client.get("/v1/recommendations", params={"user_id": "u03", "k": 5}).json()
        south = client.get("/v1/recommendations", params={"user_id": "u30", "k": 5}).json()
        elsewhere = client.get(
            "/v1/recommendations", params={"user_id": "u03", "k": 5, "region": "south"}
        ).json()
    assert {"experiment": "explore", "variant": "all-new"} in forced["experiments"]
    assert {"experiment": "explore", "variant": "control"} in plain["experiments"]
    # exploration share 1.0: exploration slots go to new items (here the one just listed)
    assert ("fresh", "exploration") in [(i["item_id"], i["source"]) for i in forced["items"]]
    assert "fresh" not in {i["item_id"] for i in plain["items"]}
    # targeting reads the user's home region unless the request names one
    assert "north-only" in {e["experiment"] for e in north["experiments"]}
    assert "north-only" not in {e["experiment"] for e in south["experiments"]}
    assert "north-only" not in {e["experiment"] for e in elsewhere["experiments"]}

    exposures = read_exposures(folder)
    row = exposures.filter(request_id=forced["request_id"]).row(0, named=True)
    assert row["variant"] == "all-new" and row["forced"] is True
    assert row["items"] == [i["item_id"] for i in forced["items"]]
    assert set(exposures.get_column("request_id")) >= {plain["request_id"], north["request_id"]}


def test_a_variant_for_another_model_version_is_refused_at_start(
    model_folder: Path, tmp_path: Path
) -> None:
    config = {
        "experiments": [
            {
                "name": "v2",
                "variants": [
                    {"name": "control", "allocation": 50},
                    {"name": "new", "allocation": 50, "settings": {"model_version": "other@1"}},
                ],
            }
        ]
    }
    with pytest.raises(ConfigError, match="other@1"):
        serve(model_folder, tmp_path, config)


def test_the_report_reads_the_service_exposures(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client, folder = serve(model_folder, tmp_path)
    with client:
        for u in range(40):
            client.get("/v1/recommendations", params={"user_id": f"visitor-{u}", "k": 3})
        events = [
            {"user_id": f"visitor-{u}", "item_id": item, "event": "click", "ts": 1.77e9}
            for u in range(0, 40, 2)
            for item in ITEMS[:3]
        ]
        assert client.post("/v1/events", json=events).status_code == 202
    import polars as pl

    from marketrec.online.records import events_from_payloads

    now = read_exposures(folder).get_column("ts").max()
    table = events_from_payloads(events).with_columns(ts=pl.lit(now))
    table.write_parquet(tmp_path / "events.parquet")
    out = tmp_path / "report"
    argv = ["experiment", "report", "explore", "--exposures", str(folder)]
    argv += ["--events", str(tmp_path / "events.parquet"), "--out", str(out)]
    assert main(argv) == 0
    assert (out / "report.html").exists() and "40 users" in capsys.readouterr().out
    assert main([*argv[:4], str(tmp_path / "nowhere"), *argv[5:]]) != 0
    assert "no such exposure" in capsys.readouterr().err


def test_serve_refuses_a_bad_experiment_file_before_starting(
    model_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "experiments.toml"
    bad.write_text('[[experiments]]\nname = "x"\n[[experiments.variants]]\nname = "a"\n')
    assert main(["serve", str(model_folder), "--experiments", str(bad)]) != 0
    assert "allocation" in capsys.readouterr().err


def test_the_service_follows_a_rollout_state_file(model_folder: Path, tmp_path: Path) -> None:
    from marketrec.experiments.assignment import ExperimentConfig, VariantSettings
    from marketrec.experiments.rollout import LiveAssigner, RolloutStore

    store = RolloutStore(tmp_path / "rollouts.json")
    live = LiveRecommender(
        load_recommender(model_folder),
        SQLiteEventLog(tmp_path / "events.sqlite"),
        version=model_version(model_folder),
    )
    live.recover()
    app = create_app(
        live,
        owns_live=True,
        experiments=LiveAssigner(ExperimentConfig(), store),
        exposures=ExposureLog(tmp_path / "exposures"),
    )

    def variants(user: str) -> list[dict]:
        return client.get("/v1/recommendations", params={"user_id": user}).json()["experiments"]

    with TestClient(app) as client:
        assert variants("staff-1") == []  # no rollout yet
        store.start("explore", VariantSettings(exploration_share=0.5), ("staff-1",))
        assert variants("staff-1") == [{"experiment": "rollout:explore", "variant": "new"}]
        assert variants("u03") == [{"experiment": "rollout:explore", "variant": "control"}]
        promoted = client.post("/admin/rollouts/explore/promote", json={"regions": ["north"]})
        assert promoted.status_code == 200 and promoted.json()["stage"] == "region"
        again = client.post("/admin/rollouts/explore/promote", json={"percent": 5})
        assert again.status_code == 400 and "only ramps up" in again.json()["error"]
        unknown = client.post("/admin/rollouts/ghost/rollback", json={})
        assert unknown.status_code == 400 and "ghost" in unknown.json()["error"]
        wrong = client.post("/admin/rollouts/explore/promote", json={"percent": "lots"})
        assert wrong.status_code == 400
        back = client.post("/admin/rollouts/explore/rollback", json={"reason": "pager"})
        assert back.status_code == 200 and back.json()["stage"] == "rolled_back"
        assert variants("staff-1") == []  # the next request already follows the file
        assert client.get("/admin/rollouts").json()["explore"]["history"][-1]["reason"] == "pager"
