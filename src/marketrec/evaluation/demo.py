"""The demo: generate the embedded marketplace, split it in time, train every baseline (tuned
on a validation cut of train), evaluate them side by side. `make demo` runs this."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from marketrec.data.split import split_global
from marketrec.data.synthetic import SyntheticConfig, write_marketplace
from marketrec.evaluation.compare import ModelRun, comparison_table, run_models
from marketrec.models.registry import create


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo-output")
    users: int = 20_000
    items: int = 3_000
    days: int = 30
    seed: int = 0
    models: tuple[str, ...] = ("popularity", "region-popularity", "itemknn", "ease", "als", "bpr")
    tune: bool = True


@dataclass(frozen=True)
class DemoResult:
    runs: list[ModelRun]
    table: Table
    summary: str


def run_demo(config: DemoConfig, on_step: Callable[[str], None] | None = None) -> DemoResult:
    for name in config.models:
        create(name)  # unknown model names fail before any work
    step = on_step or (lambda _text: None)
    step("generating the marketplace")
    data = write_marketplace(
        config.out / "data",
        SyntheticConfig(users=config.users, items=config.items, days=config.days, seed=config.seed),
    )
    split = split_global(data, quantile=0.8)
    split.save(config.out / "split")
    runs = run_models(
        split, config.models, tune_protocol="global" if config.tune else None, on_step=step
    )
    report = {
        run.name: {
            "params": run.params,
            "fallback": run.fallback,
            "fit_seconds": run.fit_seconds,
            "tune_seconds": run.tune_seconds,
            **run.report.to_dict(),
        }
        for run in runs
    }
    (config.out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    counts = data.summary()
    summary = (
        f"synthetic marketplace: {counts['events']:,} events, "
        f"{counts['users_with_events']:,} active users, {counts['catalogue_items']:,} "
        f"items; {split.description}"
    )
    title = "baselines on the synthetic marketplace (targets: clicks, add-to-carts, purchases)"
    return DemoResult(runs, comparison_table(runs, title), summary)
