"""The demo: generate the embedded marketplace, split it in time, train every baseline (tuned
on a validation cut of train), evaluate them side by side, then train the two-stage model on
every event for the service (`marketrec demo` serves it next). `make demo` runs this."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.table import Table

from marketrec.data.schema import Dataset
from marketrec.data.split import split_global
from marketrec.data.synthetic import SyntheticConfig, write_marketplace
from marketrec.evaluation.compare import ModelRun, comparison_table, run_models
from marketrec.models.registry import create
from marketrec.online.versions import record_training_data
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.ranking_stage import RankingParams
from marketrec.pipeline.recommender import Recommender


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("demo-output")
    users: int = 20_000
    items: int = 3_000
    days: int = 30
    seed: int = 0
    #: the world's first day; None: `days` before today (UTC midnight), so the world ends now
    #: and the events the demo's service takes in continue it (a world that ended months
    #: ago would meet every live event as a jump of months in time)
    start: datetime | None = None
    models: tuple[str, ...] = ("popularity", "region-popularity", "itemknn", "ease", "als", "bpr")
    tune: bool = True
    #: train the two-stage model on every event for serving (in `out`/model)
    serving_model: bool = True
    #: the demo's two-tower trains a few epochs with the hashed text encoder: minutes, not
    #: the quarter hour of the benchmark settings (MiniLM encodes tens of texts a second)
    tower_params: tuple[tuple[str, object], ...] = (("epochs", 5), ("text_encoder", "hashed"))


@dataclass(frozen=True)
class DemoResult:
    runs: list[ModelRun]
    table: Table
    summary: str
    model: Path | None = None  # the two-stage model folder, ready to serve
    #: a real user, the item on top of their list, a region and a category of the world,
    #: for example requests that work as printed
    example: dict[str, str] | None = None


def run_demo(config: DemoConfig, on_step: Callable[[str], None] | None = None) -> DemoResult:
    for name in config.models:
        create(name)  # unknown model names fail before any work
    step = on_step or (lambda _text: None)
    step("generating the marketplace")
    data = write_marketplace(
        config.out / "data",
        SyntheticConfig(
            users=config.users,
            items=config.items,
            days=config.days,
            seed=config.seed,
            start=config.start or _days_before_today(config.days),
        ),
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
    folder, example = None, None
    if config.serving_model:
        step("training the two-stage model on every event, for serving")
        folder = config.out / "model"
        model = train_serving_model(data, folder, dict(config.tower_params))
        record_training_data(folder, config.out / "data")  # for `marketrec retrain`
        example = _example(data, model)
    return DemoResult(runs, comparison_table(runs, title), summary, folder, example)


def _example(data: Dataset, model: Recommender) -> dict[str, str]:
    user = str(data.events.get_column("user_id").mode().sort()[0])
    item = model.recommend([user], 1).get_column("item_id")[0]
    region = data.users.get_column("region").drop_nulls().mode().sort()[0]
    category = data.items.get_column("category").drop_nulls().mode().sort()[0]
    return {"user": user, "item": str(item), "region": str(region), "category": str(category)}


def _days_before_today(days: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days)


def train_serving_model(data: Dataset, folder: Path, tower: dict[str, object]) -> Recommender:
    """Two-tower retrieval + re-ranker on `data`, saved to a fresh `folder` (an old folder's
    event log would replay onto the new model: it goes with it)."""
    if folder.exists():
        shutil.rmtree(folder)
    model = Recommender(create("two-tower", tower), PipelineConfig(), RankingParams())
    model.fit(data).save(folder)
    return model
