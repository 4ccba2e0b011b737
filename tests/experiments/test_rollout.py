"""Staged rollout: staging → region → global → completed, ramps that keep users on the new
version, rollback by hand and by guardrail, and the service following the state file."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketrec.cli import main
from marketrec.core.errors import ConfigError
from marketrec.experiments.assignment import ExperimentConfig, RequestContext, VariantSettings
from marketrec.experiments.rollout import LiveAssigner, RolloutStore, guard

USERS = [f"user-{i}" for i in range(20_000)]
NEW = VariantSettings(exploration_share=0.2)


def on_new(assigner: LiveAssigner, region: str | None = None) -> set[str]:
    out = set()
    for user in [*USERS, "staff-1"]:
        for a in assigner.assign(RequestContext(user_id=user, region=region)):
            if a.experiment == "rollout:explore" and a.variant == "new":
                out.add(user)
    return out


def test_a_rollout_runs_staging_then_a_region_then_global(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.json")
    assigner = LiveAssigner(ExperimentConfig(), store)
    store.start("explore", NEW, ("staff-1",))
    assert on_new(assigner, "north") == {"staff-1"}  # staging: internal users only

    with pytest.raises(ConfigError, match="regions"):
        store.promote("explore")
    store.promote("explore", 20.0, ("north",))
    north, south = on_new(assigner, "north"), on_new(assigner, "south")
    assert 0.17 < len(north) / len(USERS) < 0.23 and south == {"staff-1"}
    assert "staff-1" in north

    store.promote("explore", 50.0)
    ramped = on_new(assigner, "north")
    assert north <= ramped and 0.47 < len(ramped) / len(USERS) < 0.53
    with pytest.raises(ConfigError, match="only ramps up"):
        store.promote("explore", 30.0)

    store.promote("explore")  # the regions are done: global, not below their 50 %
    everywhere = on_new(assigner, "south")
    assert store.get("explore").stage == "global" and 0.47 < len(everywhere) / len(USERS) < 0.53
    assert on_new(assigner, "north") == ramped  # nobody in the north lost the new version

    store.promote("explore")
    assert store.get("explore").stage == "completed"
    assert len(on_new(assigner, "west")) == len(USERS) + 1
    stages = [h.stage for h in store.get("explore").history]
    assert stages == ["staging", "region", "region", "global", "completed"]


def test_rollback_by_hand_and_by_guardrail(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.json")
    assigner = LiveAssigner(ExperimentConfig(), store)
    store.start("explore", NEW, ("staff-1",))
    store.promote("explore", 30.0, ("north",))
    users = {"users_control": 400, "users_treatment": 120}
    fine = {"effects": {"new": [{"metric": "ctr", "relative": 0.01, "low": -0.01, "high": 0.02}]}}
    fine["effects"]["new"][0] |= users
    rollout, violations = guard(store, "explore", fine)
    assert not violations and rollout.stage == "region"
    bad = {"effects": {"new": [{"metric": "ctr", "relative": -0.2, "low": -0.03, "high": -0.01}]}}
    few = {"effects": {"new": [bad["effects"]["new"][0] | users | {"users_treatment": 2}]}}
    rollout, violations = guard(store, "explore", few)  # two users: no verdict yet
    assert not violations and rollout.stage == "region"
    bad["effects"]["new"][0] |= users
    rollout, violations = guard(store, "explore", bad)
    assert rollout.stage == "rolled_back" and "ctr -20.0%" in violations[0]
    assert "guardrail" in rollout.history[-1].reason
    assert on_new(assigner, "north") == set()  # nobody, the internal users neither
    with pytest.raises(ConfigError, match="nothing to promote"):
        store.promote("explore")
    store.start("explore", NEW, ("staff-1",))  # a rolled-back rollout can start again
    assert store.rollback("explore").stage == "rolled_back"


def test_a_model_version_rollout_names_where_it_is_and_internal_users(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.json")
    with pytest.raises(ConfigError, match="internal user"):
        store.start("x", NEW, ())
    with pytest.raises(ConfigError, match="needs the folder that holds it"):
        store.start("x", VariantSettings(model_version="v2@1"), ("staff-1",))
    # a version the service hosts already, or its folder (the services host it)
    hosted = store.start("x", VariantSettings(model_version="v2@1"), ("s",), hosted=("v2@1",))
    assert hosted.settings.model_version == "v2@1" and store.rollback("x").stage == "rolled_back"
    folder = store.start("x", VariantSettings(model="models/v2"), ("staff-1",))
    assert folder.settings.model == "models/v2" and store.rollback("x").stage == "rolled_back"
    # behind a router that sends each variant to its own deployment (the simulator)
    routed = store.start("x", VariantSettings(model_version="v2@1"), ("staff-1",), routed=True)
    assert routed.settings.model_version == "v2@1"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a rollout state file"):
        RolloutStore(tmp_path / "broken.json").load()


def test_the_rollout_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = ["--state", str(tmp_path / "rollouts.json")]
    assert main(["rollout", "start", "explore", *state, "--internal-users", "a,b",
                 "--exploration-share", "0.2"]) == 0  # fmt: skip
    assert "staging 0 %" in capsys.readouterr().out
    assert main(["rollout", "promote", "explore", *state]) != 0
    assert "name regions" in capsys.readouterr().err
    assert main(["rollout", "promote", "explore", *state, "--regions", "north"]) == 0
    assert "region 10 % in north" in capsys.readouterr().out
    assert main(["rollout", "status", *state]) == 0
    assert "explore: region" in capsys.readouterr().out
    assert main(["rollout", "rollback", "explore", *state, "--reason", "pager"]) == 0
    assert "rolled_back" in capsys.readouterr().out
    assert main(["rollout", "start", "other", *state, "--internal-users", "a",
                 "--exploration-share", "3"]) != 0  # fmt: skip
    assert "rollout settings" in capsys.readouterr().err


def test_the_guard_command_rolls_back_by_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime, timedelta

    import polars as pl

    state = ["--state", str(tmp_path / "rollouts.json")]
    store = RolloutStore(tmp_path / "rollouts.json")
    store.start("explore", NEW, ("staff-1",))
    store.promote("explore", 50.0, ("north",))
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    shown = [
        {
            "request_id": f"r{i}",
            "ts": t0 + timedelta(minutes=i),
            "user_id": f"u{i}",
            "experiment": "rollout:explore",
            "variant": ("new", "control")[i % 2],
            "region": "north",
            "items": ["a", "b"],
        }
        for i in range(240)
    ]
    # control users click, users on the new settings never do
    clicks = [
        {"ts": t0 + timedelta(minutes=i, seconds=30), "user_id": f"u{i}", "item_id": "a",
         "event": "click", "value": None}
        for i in range(1, 240, 2)
    ]  # fmt: skip
    pl.DataFrame(shown).write_parquet(tmp_path / "exposures.parquet")
    pl.DataFrame(clicks).write_parquet(tmp_path / "events.parquet")
    data = ["--exposures", str(tmp_path / "exposures.parquet")]
    data += ["--events", str(tmp_path / "events.parquet")]
    assert main(["rollout", "guard", "explore", *state, *data, "--every", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "guardrail violated: ctr" in out and "rolled_back" in out
    assert store.get("explore").stage == "rolled_back"
