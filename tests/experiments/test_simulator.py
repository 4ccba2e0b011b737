"""The marketplace simulator: its users act on their true tastes, every arm hears every event,
the true effect is computed from the same sessions, and `marketrec simulate` runs real
services end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from marketrec.cli import main
from marketrec.data.schema import make_dataset
from marketrec.data.split import split_global
from marketrec.data.synthetic import SyntheticConfig, generate_marketplace, write_marketplace
from marketrec.experiments.exposures import ExposureLog, read_exposures
from marketrec.experiments.report import analyse, attribute
from marketrec.experiments.rollout import RolloutStore
from marketrec.experiments.simulator import (
    ArmError,
    Behaviour,
    SimulationConfig,
    Simulator,
    StagedRollout,
    TruthModel,
    examine_probability,
    judge,
    population,
    start_of,
    truth_summary,
)
from marketrec.models.registry import create
from marketrec.online.live import LiveRecommender, model_version
from marketrec.online.log import SQLiteEventLog
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.recommender import Recommender, load_recommender
from marketrec.serving.app import create_app

WORLD = SyntheticConfig(users=1500, items=300, days=12, seed=3)


class ClientArm:
    """An arm served in process (FastAPI's test client: the same app as `marketrec serve`)."""

    def __init__(self, name: str, client: TestClient) -> None:
        self.name, self.client = name, client

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.client.request(method, path, json=body)
        if response.status_code >= 400:
            raise ArmError(f"{method} {path}: {response.text}", response.status_code)
        return response.json() if response.content else None


@pytest.fixture(scope="module")
def world():
    return generate_marketplace(WORLD)


@pytest.fixture(scope="module")
def folders(world, tmp_path_factory) -> dict[str, Path]:
    data, _ = world
    train = split_global(data, quantile=0.8).train
    root = tmp_path_factory.mktemp("arms")
    out = {}
    for name, model in (("popularity", "region-popularity"), ("knn", "itemknn")):
        out[name] = Recommender(create(model), PipelineConfig()).fit(train).save(root / name)
    return out


def serve(folder: Path, log: Path) -> TestClient:
    live = LiveRecommender(
        load_recommender(folder), SQLiteEventLog(log), version=model_version(folder)
    )
    client = TestClient(create_app(live, owns_live=True))
    client.__enter__()
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    return client


def test_truth_model_follows_taste_and_availability(world) -> None:
    data, truth = world
    model = TruthModel(data, truth, Behaviour(), seed=0)
    user = str(truth.user_ids[0])
    items = [str(i) for i in truth.item_ids]
    z = model.utility(user, items)
    end = 1e12  # long after every listing: only delisting and regions hide items
    p = model.click_probability(user, None, items, at=end)
    shown = np.array([model.available(model.item_row[i], None, end) for i in items])
    assert np.all(p[~shown] == 0.0)
    # among available items, a higher true utility is always a likelier click
    order = np.argsort(z[shown])
    assert np.all(np.diff(p[shown][order]) >= 0)
    # not listed yet: never clicked
    first = min(range(len(items)), key=lambda j: model.listed[j])
    assert model.click_probability(user, None, [items[first]], at=model.listed[first] - 1)[0] == 0
    # calibration: a random examined item is clicked at about click_rate
    rng = np.random.default_rng(1)
    users = [str(u) for u in rng.choice(truth.user_ids, 300)]
    sample = [model.click_probability(u, None, items, at=end)[shown].mean() for u in users]
    assert abs(np.mean(sample) - Behaviour().click_rate) < 0.01


def test_position_bias_falls_with_the_position() -> None:
    examine = examine_probability(10)
    assert examine[0] == 1.0
    assert np.all(np.diff(examine) < 0)


def test_every_arm_hears_every_event_and_the_truth_is_paired(world, folders, tmp_path) -> None:
    data, truth = world
    clients = {name: serve(folder, tmp_path / f"{name}.sqlite") for name, folder in folders.items()}
    arms = {name: ClientArm(name, c) for name, c in clients.items()}
    exposures = ExposureLog(tmp_path / "exposures")
    config = SimulationConfig(start=start_of(data), days=1.5, users=300, seed=0)
    result = Simulator(data, truth, arms, config, exposures=exposures).run()
    exposures.close()
    assert len(result.sessions) > 50
    assert {s.arm for s in result.sessions} == {"popularity", "knn"}
    # every session knows what each arm would have shown (its expected clicks)
    assert all(set(s.expected_clicks) == {"popularity", "knn"} for s in result.sessions)
    events = result.events
    assert set(events.get_column("event").unique()) <= {"click", "add_to_cart", "purchase"}
    clicks = events.filter(pl.col("event") == "click")
    assert clicks.height == sum(s.clicks for s in result.sessions) > 0
    # one event stream: the user's clicks are in both arms' histories
    user = clicks.get_column("user_id")[0]
    for client in clients.values():
        history = client.get(f"/v1/users/{user}/history").json()["events"]
        assert any(e["event"] == "click" for e in history)
    # exposures name the served arm and the items it showed
    shown = read_exposures(tmp_path / "exposures")
    assert shown.height == len(result.sessions)
    first = result.sessions[0]
    row = shown.sort("ts").row(0, named=True)
    assert (row["variant"], row["items"]) == (first.arm, first.items)
    truth_block = truth_summary(result, "popularity", data.items.height, set())
    table = attribute(shown, events)
    verdicts = judge(analyse(table, "simulation", "popularity"), truth_block)
    assert set(verdicts) == {"knn"}
    assert verdicts["knn"]["true"] == pytest.approx(
        truth_block["true_ctr"]["knn"] - truth_block["true_ctr"]["popularity"]
    )
    revenue = truth_block["true_revenue_per_user"]
    assert verdicts["knn"]["revenue_per_user"]["true"] == pytest.approx(
        revenue["knn"] - revenue["popularity"]
    )
    assert all(v > 0 for v in revenue.values())
    for arm in truth_block["arms"].values():
        assert 0 < arm["coverage"] <= 1
    for client in clients.values():
        client.__exit__(None, None, None)


def test_two_arms_with_one_model_have_no_true_difference(world, folders, tmp_path) -> None:
    data, truth = world
    arms = {
        name: ClientArm(name, serve(folders["knn"], tmp_path / f"{name}.sqlite"))
        for name in ("a", "b")
    }
    config = SimulationConfig(start=start_of(data), days=1.0, users=200, seed=1)
    result = Simulator(data, truth, arms, config).run()
    ctr = result.true_ctr()
    assert ctr["a"] == pytest.approx(ctr["b"], abs=1e-12)


def test_simulate_command_end_to_end(world, folders, tmp_path, capsys) -> None:
    write_marketplace(tmp_path / "world", WORLD)
    out = tmp_path / "run"
    args = ["simulate", str(tmp_path / "world"), "--out", str(out), "--days", "1"]
    args += ["--users", "150", "--arm", f"pop={folders['popularity']}"]
    args += ["--arm", f"knn={folders['knn']}"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["truth"]["verdicts"]) == {"knn"}
    assert "Ground truth (simulation)" in (out / "report.html").read_text()
    assert (out / "events.parquet").is_file()
    assert "covered" in capsys.readouterr().out


def test_simulate_command_names_bad_input(folders, tmp_path, capsys) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    args = ["simulate", str(plain), "--out", str(tmp_path / "o")]
    assert main([*args, "--arm", f"a={folders['knn']}", "--arm", f"b={folders['knn']}"]) != 0
    assert "ground_truth" in capsys.readouterr().err
    assert main([*args, "--arm", f"a={folders['knn']}"]) != 0
    assert "two or more arms" in capsys.readouterr().err
    assert main([*args, "--arm", "a", "--arm", "b=x"]) != 0
    assert "NAME=VALUE" in capsys.readouterr().err


def test_simulate_command_names_an_unreachable_arm(tmp_path, capsys) -> None:
    from marketrec.serving.process import free_port

    write_marketplace(tmp_path / "world", WORLD)
    urls = [f"--url=a=http://127.0.0.1:{free_port()}", f"--url=b=http://127.0.0.1:{free_port()}"]
    args = ["simulate", str(tmp_path / "world"), "--out", str(tmp_path / "o"), "--days", "1"]
    assert main([*args, "--users", "20", *urls]) != 0
    assert "no answer from http://127.0.0.1" in capsys.readouterr().err


def shuffled_popularity(train, folder: Path) -> Path:
    """A deliberately bad model: popularity learned on events whose item ids were permuted
    (the kind of join bug that ships a model recommending the wrong items)."""
    ids = train.items.get_column("item_id").to_list()
    perm = dict(zip(ids, np.random.default_rng(0).permutation(ids).tolist(), strict=True))
    events = train.events.with_columns(pl.col("item_id").replace_strict(perm, default=None))
    broken = make_dataset(events, train.items, train.users)
    return Recommender(create("region-popularity"), PipelineConfig()).fit(broken).save(folder)


def test_a_bad_model_is_rolled_back_by_its_guardrail(world, folders, tmp_path) -> None:
    data, truth = world
    bad = shuffled_popularity(split_global(data, quantile=0.8).train, tmp_path / "bad")
    arms = {
        "current": ClientArm("current", serve(folders["knn"], tmp_path / "current.sqlite")),
        "candidate": ClientArm("candidate", serve(bad, tmp_path / "candidate.sqlite")),
    }
    config = SimulationConfig(start=start_of(data), days=4.0, users=900, seed=2)
    users = population(data, config, {str(u) for u in truth.user_ids})
    internal = tuple(users["user_id"][:60])
    store = RolloutStore(tmp_path / "rollouts.json")
    region = max(set(users["region"]), key=users["region"].count)
    staged = StagedRollout(
        store, "broken", "current", "candidate", internal, (region,), tmp_path / "exposures"
    )
    exposures = ExposureLog(tmp_path / "exposures")
    Simulator(
        data,
        truth,
        arms,
        config,
        exposures=exposures,
        router=staged.router,
        after_day=staged.after_day,
    ).run()
    exposures.close()
    rollout = store.get("broken")
    assert rollout.stage == "rolled_back"
    assert rollout.history[-1].reason.startswith("guardrail: ctr")
    # it never reached everyone: rolled back in staging or in the region stage
    assert all(change.stage != "global" for change in rollout.history)
    # once rolled back, nobody was routed to the candidate any more
    shown = read_exposures(tmp_path / "exposures")
    stopped = staged.log[[e["now"][0] for e in staged.log].index("rolled_back")]
    after = shown.filter(
        pl.col("ts").dt.epoch("s") > config.start.timestamp() + 86_400 * (stopped["day"] + 1)
    )
    assert after.height == 0 or set(after.get_column("variant")) == {"control"}


def test_simulate_command_tests_settings(folders, tmp_path, capsys) -> None:
    write_marketplace(tmp_path / "world", WORLD)
    out = tmp_path / "run"
    args = ["simulate", str(tmp_path / "world"), "--out", str(out), "--days", "1"]
    args += ["--users", "150", "--arm", f"base={folders['knn']}"]
    args += ["--arm", f"explore={folders['knn']}"]
    args += ["--arm-settings", "explore=exploration_share=0.5,candidates=50"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    arms = report["truth"]["arms"]
    # half the slots explore new listings, where the base arm shows almost none
    assert arms["explore"]["new_item_share"] > arms["base"]["new_item_share"]
    assert json.loads((out / "settings" / "explore.json").read_text())["experiments"]
    assert main([*args[:-1], "explore=exploration_share=7"]) != 0
    assert "--arm-settings explore" in capsys.readouterr().err


def test_simulate_command_rolls_out_a_model_version_in_one_service(
    folders, tmp_path, capsys
) -> None:
    write_marketplace(tmp_path / "world", WORLD)
    out = tmp_path / "run"
    args = ["simulate", str(tmp_path / "world"), "--out", str(out), "--days", "3"]
    args += ["--users", "300", "--arm", f"pop={folders['popularity']}"]
    args += ["--arm", f"knn={folders['knn']}", "--rollout", "knn", "--internal-users", "5"]
    assert main([*args, "--one-service"]) == 0
    report = json.loads((out / "report.json").read_text())
    counts = report["rollout"]["one_service"]
    # one `marketrec serve` of pop hosting knn served every session as the rollout
    # assigned it, with the very list knn's own service gave
    assert counts["sessions"] > 100
    assert counts["same_version"] == counts["sessions"] == counts["same_list"]
    assert [h["stage"] for h in report["rollout"]["history"]][:3] == [
        "staging",
        "region",
        "global",
    ]
    assert "one service hosting both versions" in capsys.readouterr().out
    assert main([*args[:-4], "--one-service"]) != 0  # only for a rollout
    assert "--one-service" in capsys.readouterr().err
