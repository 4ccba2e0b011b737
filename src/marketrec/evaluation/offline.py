"""Offline evaluation of a train/test split: targets, slices and the report.

Targets are test interactions that show real interest (ratings ≥ `min_rating`, or commerce
events such as purchases, add-to-carts and clicks) on items the user did not touch in train.
The same metric code scores every slice: all users, warm users (with train events), cold users
(without), cold items (targets restricted to items without train events) and each region.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from rich.table import Table

from marketrec.core.errors import ConfigError
from marketrec.data.schema import Dataset
from marketrec.data.split import Split
from marketrec.evaluation.metrics import (
    METRIC_NAMES,
    check_ks,
    check_recommendations,
    compute_metrics,
)
from marketrec.features.regions import home_regions
from marketrec.models.base import Recommender

DEFAULT_KS = (10, 20, 100)


@dataclass(frozen=True)
class TargetConfig:
    """Which test events count as something the user wanted.

    `rating` events count when value ≥ `min_rating`; events named in `events` always count;
    `all_events=True` makes every test event with an item a target (implicit datasets).
    """

    min_rating: float = 4.0
    events: tuple[str, ...] = ("purchase", "add_to_cart", "click")
    all_events: bool = False

    def __post_init__(self) -> None:
        if not self.all_events and not self.events and self.min_rating is None:
            raise ConfigError("target configuration selects no events")


@dataclass(frozen=True)
class EvaluationReport:
    model: str
    split: str
    ks: tuple[int, ...]
    slices: dict[str, dict[str, float]]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split": self.split,
            "ks": list(self.ks),
            "slices": self.slices,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }

    def write_json(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2))
        return out

    def table(self) -> Table:
        """Rows = metric@K, columns = slices (user counts in the header)."""
        table = Table(title=f"{self.model} — {self.split}", title_justify="left")
        table.add_column("metric", style="bold")
        for name, values in self.slices.items():
            table.add_column(f"{name}\n({int(values['users']):,} users)", justify="right")
        for k in self.ks:
            for metric in METRIC_NAMES:
                key = f"{metric}@{k}"
                table.add_row(key, *(f"{v[key]:.4f}" for v in self.slices.values()))
        return table


def build_targets(
    train: Dataset, test: Dataset, config: TargetConfig | None = None
) -> pl.DataFrame:
    """(user_id, item_id) pairs the user showed interest in during test, minus train items."""
    cfg = config or TargetConfig()
    events = test.events.filter(pl.col("item_id").is_not_null())
    if not cfg.all_events:
        wanted = pl.col("event").is_in(list(cfg.events))
        if "value" in events.columns and cfg.min_rating is not None:
            wanted = wanted | ((pl.col("event") == "rating") & (pl.col("value") >= cfg.min_rating))
        events = events.filter(wanted)
    seen = train.events.select("user_id", "item_id").drop_nulls().unique()
    return (
        events.select("user_id", "item_id")
        .unique()
        .join(seen, on=["user_id", "item_id"], how="anti")
        .sort("user_id", "item_id")
    )


def slice_targets(
    split: Split, targets: pl.DataFrame, *, min_region_users: int = 1
) -> dict[str, pl.DataFrame]:
    """Targets per slice: all, warm users, cold users, cold items, region:<name>."""
    train_users = split.train.events.select("user_id").unique()
    train_items = split.train.events.select("item_id").drop_nulls().unique()
    slices = {
        "all": targets,
        "warm users": targets.join(train_users, on="user_id", how="semi"),
        "cold users": targets.join(train_users, on="user_id", how="anti"),
        "cold items": targets.join(train_items, on="item_id", how="anti"),
    }
    regions = home_regions(_merged_for_regions(split))
    if regions.height:
        with_region = targets.join(regions, on="user_id", how="inner")
        for (region,), part in sorted(with_region.partition_by("region", as_dict=True).items()):
            if part.get_column("user_id").n_unique() >= min_region_users:
                slices[f"region:{region}"] = part.drop("region")
    return slices


def evaluate_recommendations(
    recs: pl.DataFrame,
    split: Split,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    targets: TargetConfig | None = None,
    model: str = "recommendations",
    source: str = "recommendations",
) -> EvaluationReport:
    """Score a recommendation list (user_id, item_id, rank) against a split's test targets."""
    started = time.perf_counter()
    ks = check_ks(list(ks))
    recs = check_recommendations(recs, source)
    wanted = build_targets(split.train, split.test, targets)
    catalogue = pl.concat([split.train.item_ids(), split.test.item_ids()]).n_unique()
    results = {
        name: compute_metrics(recs, part, ks, catalogue)
        for name, part in slice_targets(split, wanted).items()
    }
    return EvaluationReport(model, split.description, ks, results, time.perf_counter() - started)


def evaluate_model(
    model: Recommender,
    split: Split,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    targets: TargetConfig | None = None,
) -> EvaluationReport:
    """Recommend top-max(K) for every user with targets, through the model's one serving path,
    then score the list."""
    started = time.perf_counter()
    ks = check_ks(list(ks))
    users = build_targets(split.train, split.test, targets).get_column("user_id").unique().sort()
    recs = model.recommend(users, max(ks), at=ranking_moments(split, users))
    report = evaluate_recommendations(recs, split, ks=ks, targets=targets, model=model.name)
    return EvaluationReport(
        report.model, report.split, report.ks, report.slices, time.perf_counter() - started
    )


def ranking_moments(split: Split, users: pl.Series) -> list[datetime | None] | None:
    """Per-user protocols rank each user just after their own last train event (1 s later);
    None (everyone at the model's "now") for a global cut."""
    if split.ranking_moment != "per-user":
        return None
    last = split.train.events.group_by("user_id").agg(pl.col("ts").max())
    moments = pl.DataFrame({"user_id": users}).join(
        last, on="user_id", how="left", maintain_order="left"
    ).get_column("ts") + timedelta(seconds=1)
    return moments.to_list()


def _merged_for_regions(split: Split) -> Dataset:
    """Profiles plus all events, so a cold user's region comes from their test events too."""
    events = pl.concat([split.train.events, split.test.events], how="diagonal_relaxed")
    return Dataset(events, split.train.items, split.train.users)
