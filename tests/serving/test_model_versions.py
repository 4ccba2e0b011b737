"""One service, several model versions: a variant or a rollout that names another model
folder is answered by that model, hosted beside the primary over the same event log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from market_model import market, train_model
from server_process import ServerProcess

from marketrec.cli import main
from marketrec.core.errors import ConfigError
from marketrec.experiments.assignment import Assigner, RequestContext, parse_experiments
from marketrec.experiments.exposures import ExposureLog, read_exposures
from marketrec.experiments.rollout import RolloutStore
from marketrec.models.registry import create
from marketrec.online.hosting import HostedVersions
from marketrec.online.live import LiveRecommender
from marketrec.online.log import SQLiteEventLog
from marketrec.online.versions import model_version
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.recommender import Recommender, load_recommender
from marketrec.serving.app import create_app

USERS = [f"u{u:02d}" for u in range(40)]  # u00-u19 live in the north, u20-u39 in the south


def two_models(root: Path) -> tuple[Path, Path]:
    """The primary (item-kNN: lists follow each user's history) and a second version
    (popularity: the same list for everyone), both trained in milliseconds."""
    second = root / "pop"
    Recommender(create("popularity"), PipelineConfig()).fit(market()).save(second)
    return train_model(root / "knn"), second


def experiment(settings: dict[str, Any]) -> dict[str, Any]:
    treatment = {"name": "treatment", "allocation": 50, "settings": settings}
    variants = [{"name": "control", "allocation": 50}, treatment]
    return {"experiments": [{"name": "models", "variants": variants}]}


def open_live(folder: Path, log: Path) -> LiveRecommender:
    live = LiveRecommender(
        load_recommender(folder), SQLiteEventLog(log), version=model_version(folder)
    )
    live.recover()
    return live


def test_each_variant_is_answered_by_its_model_version(tmp_path: Path) -> None:
    knn, pop = two_models(tmp_path)
    config = experiment({"model": str(pop)})
    primary = open_live(knn, tmp_path / "events.sqlite")
    app = create_app(
        primary,
        owns_live=True,
        experiments=Assigner(parse_experiments(config)),
        exposures=ExposureLog(tmp_path / "exposures"),
    )
    # each model on its own, for the lists it gives directly
    direct = {
        "control": open_live(knn, tmp_path / "direct-knn.sqlite"),
        "treatment": open_live(pop, tmp_path / "direct-pop.sqlite"),
    }
    assigner = Assigner(parse_experiments(config))
    variant = {u: assigner.assign(RequestContext(user_id=u))[0].variant for u in USERS}
    assert set(variant.values()) == {"control", "treatment"}
    assert any(
        direct["control"].recommend(u, 5)["items"] != direct["treatment"].recommend(u, 5)["items"]
        for u in USERS
    )

    def check(client: TestClient, user: str) -> dict[str, Any]:
        body = client.get("/v1/recommendations", params={"user_id": user, "k": 5}).json()
        expected = direct[variant[user]].recommend(user, 5)
        assert body["model_version"] == expected["model_version"], user
        assert body["items"] == expected["items"], user
        return body

    with TestClient(app) as client:
        # every hosted version replays the log in the background after start: a variant
        # whose version is not ready yet is served by the primary (readyz says when it is)
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        bodies = {u: check(client, u) for u in USERS}
        # one event, POSTed once, changes the next answer of either version
        for chosen in ("control", "treatment"):
            user = next(u for u in USERS if variant[u] == chosen)
            top = bodies[user]["items"][0]["item_id"]
            event = {"user_id": user, "item_id": top, "event": "purchase", "ts": 1.77e9}
            assert client.post("/v1/events", json=event).status_code == 202
            for model in direct.values():
                model.ingest(event)
            again = check(client, user)
            assert top not in [i["item_id"] for i in again["items"]]
        ready = client.get("/readyz").json()
        metrics = client.get("/metrics").text
    versions = [model_version(knn), model_version(pop)]
    assert [v["model_version"] for v in ready["versions"]] == versions
    assert [v["primary"] for v in ready["versions"]] == [True, False]
    assert ready["versions"][1]["folder"] == str(pop.resolve())
    for version in versions:
        assert f'marketrec_model_info{{version="{version}"}} 1.0' in metrics
    exposures = read_exposures(tmp_path / "exposures")
    logged = dict(zip(exposures["user_id"], exposures["model_version"], strict=True))
    assert logged == {u: versions[variant[u] == "treatment"] for u in USERS}
    for model in direct.values():
        model.close()


def test_an_extra_version_keeps_its_model_when_the_primary_swaps(tmp_path: Path) -> None:
    knn, pop = two_models(tmp_path)
    other = train_model(tmp_path / "knn-b")
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    log.append([("model", model_version(knn), {"folder": str(knn)})])  # a retrain of pop
    hosts = HostedVersions(LiveRecommender(load_recommender(pop), log, version=model_version(pop)))
    assert hosts.add(other).version == model_version(other)
    assert hosts.add(pop) is hosts.primary  # its own folder: no second copy
    hosts.recover()
    assert hosts.ready and hosts.versions == [model_version(knn), model_version(other)]
    hosts.close()


def test_bad_model_settings_stop_the_service_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    knn, pop = two_models(tmp_path)
    missing = tmp_path / "nowhere"

    def serve(*args: str, settings: dict[str, Any] | None = None) -> str:
        argv = ["serve", str(knn), *args]
        if settings is not None:
            file = tmp_path / "experiments.json"
            file.write_text(json.dumps(experiment(settings)))
            argv += ["--experiments", str(file)]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "nowhere: model folder not found" in serve("--model-version", str(missing))
    err = serve(settings={"model": str(missing)})
    assert "experiment 'models', variant 'treatment'" in err and "not found" in err
    err = serve(settings={"model_version": "ghost@1"})
    assert "'ghost@1', which this service does not host" in err and "--model-version DIR" in err
    err = serve(settings={"model": str(pop), "model_version": "ghost@1"})
    assert f"holds '{model_version(pop)}'" in err
    argv = ["rollout", "start", "v2", "--state", str(tmp_path / "r.json"), "--internal-users", "a"]
    assert main([*argv, "--model", str(missing)]) == 1
    assert "model folder not found" in capsys.readouterr().err
    # in the worker: a folder that is there but does not load
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pipeline.json").write_text("{}")
    primary = open_live(knn, tmp_path / "events.sqlite")
    with pytest.raises(ConfigError, match="broken does not load"):
        create_app(primary, models=[broken])
    primary.close()


def test_a_staged_rollout_of_a_model_version_through_serve(tmp_path: Path) -> None:
    knn, pop = two_models(tmp_path)
    state = tmp_path / "rollouts.json"
    server = ServerProcess(knn, ["--rollouts", str(state)], tmp_path / "server.log")
    base = server.url
    old, new = model_version(knn), model_version(pop)
    users = ["staff-1", *USERS]

    def served() -> dict[str, str]:
        get = httpx.get
        return {
            u: get(f"{base}/v1/recommendations", params={"user_id": u}).json()["model_version"]
            for u in users
        }

    def expected() -> dict[str, str]:
        """Who the rollout's current stage gives the new version."""
        stage = RolloutStore(state).get("v2").experiment()
        if stage is None:
            return dict.fromkeys(users, old)
        out = {}
        for user in users:
            home = "north" if user in USERS[:20] else "south" if user in USERS else None
            admitted = stage.targeting.admits(RequestContext(user_id=user, region=home))
            takes = (admitted or user in stage.forced) and stage.variant_for(user).name == "new"
            out[user] = new if takes else old
        return out

    try:
        server.wait_ready()
        argv = ["rollout", "start", "v2", "--state", str(state), "--internal-users", "staff-1"]
        assert main([*argv, "--model", str(pop)]) == 0
        # the service hosts the new folder once the state file names it (in the background)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = httpx.get(f"{base}/readyz").json()["versions"]
            if any(v.get("model_version") == new and v["ready"] for v in versions):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{new} was never hosted: {versions}")
        staging = served()
        assert staging == expected() and staging["staff-1"] == new
        assert sum(v == new for v in staging.values()) == 1

        promote = {"regions": ["north"], "percent": 50}
        reply = httpx.post(f"{base}/admin/rollouts/v2/promote", json=promote)
        assert reply.status_code == 200 and reply.json()["stage"] == "region"
        region = served()
        assert region == expected()
        north = {region[u] for u in USERS[:20]}
        assert north == {old, new} and {region[u] for u in USERS[20:]} == {old}

        assert main(["rollout", "promote", "v2", "--state", str(state)]) == 0  # global, 50 %
        spread = served()
        assert spread == expected()
        assert {spread[u] for u in USERS[20:]} == {old, new}

        reply = httpx.post(f"{base}/admin/rollouts/v2/rollback", json={"reason": "test"})
        assert reply.status_code == 200 and reply.json()["stage"] == "rolled_back"
        assert set(served().values()) == {old}
    finally:
        server.stop()
