"""Attribution of events to exposures, the per-variant analysis and the written report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from marketrec.cli import main
from marketrec.core.errors import ConfigError
from marketrec.experiments.report import analyse, attribute, write_report

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def exposure(request: str, hours: float, user: str, variant: str, items: list[str]) -> dict:
    return {
        "request_id": request,
        "ts": T0 + timedelta(hours=hours),
        "user_id": user,
        "experiment": "ranker-v2",
        "variant": variant,
        "region": "north",
        "items": items,
    }


def event(hours: float, user: str, item: str, kind: str, value: float | None = None) -> dict:
    return {
        "ts": T0 + timedelta(hours=hours),
        "user_id": user,
        "item_id": item,
        "event": kind,
        "value": value,
    }


def test_events_are_attributed_to_the_exposure_of_that_item_within_the_window() -> None:
    exposures = pl.DataFrame(
        [
            exposure("r1", 0, "ann", "control", ["a", "b"]),
            exposure("r2", 30, "ann", "control", ["c"]),  # a second day: a return
            exposure("r3", 0, "bob", "treatment", ["a"]),
        ]
    )
    events = pl.DataFrame(
        [
            event(1, "ann", "a", "click"),  # shown at 0: counted
            event(2, "ann", "a", "purchase", 30.0),  # counted, with revenue
            event(3, "ann", "z", "click"),  # never shown: not the experiment's
            event(-1, "ann", "b", "click"),  # before the exposure: no
            event(40, "bob", "a", "click"),  # 40 h after: outside the 24 h window
            event(0.5, "bob", "a", "view"),  # views are not outcomes
            event(31, "ann", "c", "add_to_cart"),
        ]
    )
    table = attribute(exposures, events).sort("user_id")
    ann, bob = table.row(0, named=True), table.row(1, named=True)
    assert (ann["clicks"], ann["purchases"], ann["carts"], ann["revenue"]) == (1, 1, 1, 30.0)
    assert (ann["exposures"], ann["items_shown"], ann["active_days"]) == (2, 3, 2)
    assert (bob["clicks"], bob["revenue"], bob["variant"]) == (0, 0.0, "treatment")
    wider = attribute(exposures, events, window=timedelta(hours=48)).sort("user_id")
    assert wider.row(1, named=True)["clicks"] == 1


def simulated(n_users: int, lift: float, seed: int, share: float = 0.5) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    exposures, events = [], []
    for u in range(n_users):
        user = f"u{u}"
        variant = "treatment" if rng.random() < share else "control"
        ctr = rng.beta(2, 18) * (1 + lift if variant == "treatment" else 1.0)
        region = "north" if u % 2 else "south"
        for r in range(int(rng.integers(1, 4))):
            items = [f"i{rng.integers(0, 500)}" for _ in range(5)]
            row = exposure(f"{user}-{r}", 20 * r, user, variant, items) | {"region": region}
            exposures.append(row)
            for item in items:
                if rng.random() < ctr:
                    events.append(event(20 * r + 0.1, user, item, "click"))
                    if rng.random() < 0.3:
                        events.append(event(20 * r + 0.2, user, item, "purchase", 25.0))
    return attribute(pl.DataFrame(exposures), pl.DataFrame(events))


def test_the_analysis_finds_a_real_lift_and_reports_every_metric() -> None:
    table = simulated(3000, lift=0.5, seed=1)
    result = analyse(table, "ranker-v2", "control")
    ctr = next(e for e in result["effects"]["treatment"] if e["metric"] == "ctr")
    assert ctr["low"] > 0 and 0.3 < ctr["relative"] < 0.7
    metrics = {e["metric"] for e in result["effects"]["treatment"]}
    assert metrics == {"ctr", "add_to_cart_rate", "conversion", "revenue_per_user", "return_rate"}
    assert set(result["variants"]["control"]) >= {"users", "exposures", "ctr", "conversion"}
    assert not result["sample_ratio"]["mismatch"]
    assert set(result["regions"]) == {"north", "south"}


def test_a_skewed_split_is_flagged_and_cuped_is_added_with_a_pre_period() -> None:
    table = simulated(6000, lift=0.0, seed=2, share=0.56)
    pre = table.select("user_id", pre_revenue=pl.col("revenue") * 0.5 + 1.0)
    result = analyse(table, "ranker-v2", "control", pre_revenue=pre)
    assert result["sample_ratio"]["mismatch"]
    assert "revenue_per_user (CUPED)" in {e["metric"] for e in result["effects"]["treatment"]}
    with pytest.raises(ConfigError, match="control variant"):
        analyse(table, "ranker-v2", "baseline")
    with pytest.raises(ConfigError, match="no exposures"):
        analyse(table, "other", "control")


def test_the_report_is_json_and_a_standalone_html_page(tmp_path: Path) -> None:
    result = analyse(simulated(1500, lift=0.3, seed=3), "ranker-v2", "control")
    as_json, page = write_report(result, tmp_path / "report")
    assert json.loads(as_json.read_text())["experiment"] == "ranker-v2"
    text = page.read_text()
    assert text.startswith("<!doctype html>") and text.count("data:image/png;base64,") == 2
    assert "95 % interval" in text and "CTR lift per region" in text


def test_the_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exposures = pl.DataFrame(
        [
            exposure(f"r{i}", i, f"u{i}", ("control", "treatment")[i % 2], ["a", "b"])
            for i in range(40)
        ]
    )
    events = pl.DataFrame([event(i + 0.5, f"u{i}", "a", "click") for i in range(0, 40, 3)])
    exposures.write_parquet(tmp_path / "exposures.parquet")
    events.write_parquet(tmp_path / "events.parquet")
    out = tmp_path / "out"
    argv = ["experiment", "report", "ranker-v2", "--exposures", str(tmp_path / "exposures.parquet")]
    argv += [
        "--events",
        str(tmp_path / "events.parquet"),
        "--control",
        "control",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert (out / "report.html").exists() and "report.html" in capsys.readouterr().out
    assert main([*argv[:-2], "--out", str(out), "--control", "nobody"]) != 0
    assert "control variant 'nobody'" in capsys.readouterr().err
    missing = [*argv]
    missing[4] = str(tmp_path / "nothing.parquet")
    assert main(missing) != 0
    assert "nothing.parquet" in capsys.readouterr().err


def test_bootstrap_and_cuped_options(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    exposures = pl.DataFrame(
        [
            exposure(f"r{i}", 100 + i, f"u{i}", ("control", "treatment")[i % 2], ["a", "b"])
            for i in range(200)
        ]
    )
    spend = rng.gamma(2.0, 10.0, 200)
    rows = [event(50, f"u{i}", "x", "purchase", float(spend[i])) for i in range(200)]
    # experiment-period revenue follows pre-period spend: CUPED takes most of its variance
    rows += [event(100 + i + 1, f"u{i}", "a", "click") for i in range(200)]
    rows += [
        event(100 + i + 2, f"u{i}", "a", "purchase", float(spend[i] + rng.normal(0, 2)))
        for i in range(200)
    ]
    events = pl.DataFrame(rows)
    exposures.write_parquet(tmp_path / "exposures.parquet")
    events.write_parquet(tmp_path / "events.parquet")
    argv = ["experiment", "report", "ranker-v2", "--exposures", str(tmp_path / "exposures.parquet")]
    argv += ["--events", str(tmp_path / "events.parquet"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--bootstrap", "300", "--cuped-days", "7"]) == 0
    effects = json.loads((tmp_path / "out" / "report.json").read_text())["effects"]["treatment"]
    by_name = {e["metric"]: e for e in effects}
    assert "revenue_per_user (bootstrap)" in by_name
    plain, adjusted = by_name["revenue_per_user"], by_name["revenue_per_user (CUPED)"]
    assert adjusted["high"] - adjusted["low"] < 0.5 * (plain["high"] - plain["low"])
