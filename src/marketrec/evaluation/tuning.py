"""Hyper-parameters chosen on a validation cut of the training data, never on test.

The cut mirrors the protocol being measured: a global temporal cut of train for P1g-style
evaluation, a per-user holdout of train for P1u, each user's last train event for P3. Every
grid point is fitted on the validation train, scored through the same evaluation code as the
final test, and the best by `metric` wins; the caller then refits on all of train.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from marketrec.core.errors import ConfigError
from marketrec.data.schema import Dataset
from marketrec.data.split import Split, split_global, split_leave_one_out, split_per_user
from marketrec.evaluation.offline import TargetConfig, evaluate_model
from marketrec.features.interactions import InteractionConfig
from marketrec.models.registry import create, make_params, spec

log = logging.getLogger(__name__)

Protocol = Literal["global", "per-user", "leave-one-out"]
PROTOCOLS: tuple[str, ...] = ("global", "per-user", "leave-one-out")


@dataclass(frozen=True)
class Trial:
    params: dict[str, Any]
    score: float


@dataclass(frozen=True)
class TuningResult:
    model: str
    metric: str
    best_params: dict[str, Any]
    best_score: float
    trials: tuple[Trial, ...]


def validation_split(train: Dataset, protocol: str, fraction: float = 0.2) -> Split:
    """Cut `train` the way the test protocol cuts the full data (`fraction` is ignored by
    leave-one-out, which holds out each user's last train event)."""
    if protocol == "global":
        return split_global(train, quantile=1.0 - fraction)
    if protocol == "per-user":
        return split_per_user(train, test_fraction=fraction)
    if protocol == "leave-one-out":
        return split_leave_one_out(train)
    raise ConfigError(
        f"unknown validation protocol '{protocol}' (choose from: {', '.join(PROTOCOLS)})"
    )


def grid_points(name: str, grid: Mapping[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Every combination of the model's grid (or `grid`), each validated."""
    grid = dict(spec(name).grid if grid is None else grid)
    keys = sorted(grid)
    points = [
        dict(zip(keys, values, strict=True))
        for values in itertools.product(*(grid[k] for k in keys))
    ]
    for point in points:
        make_params(name, point)
    return points or [{}]


def tune(
    name: str,
    train: Dataset,
    *,
    protocol: str = "global",
    metric: str = "NDCG@10",
    grid: Mapping[str, list[Any]] | None = None,
    base_params: Mapping[str, Any] | None = None,
    fallback: Mapping[str, Any] | None = None,
    interactions: InteractionConfig | None = None,
    targets: TargetConfig | None = None,
    slice_name: str = "all",
    on_trial: Callable[[Trial], None] | None = None,
) -> TuningResult:
    """Grid search for model `name` on a validation cut of `train`, judged on `slice_name`."""
    metric_name, _, k_text = metric.partition("@")
    if not k_text.isdigit() or int(k_text) <= 0:
        raise ConfigError(f"tuning metric must look like NDCG@10, got '{metric}'")
    k = int(k_text)
    cut = validation_split(train, protocol)
    trials = []
    for point in grid_points(name, grid):
        params = {**dict(base_params or {}), **point}
        model = create(name, params, fallback=fallback, interactions=interactions).fit(cut.train)
        report = evaluate_model(model, cut, ks=(k,), targets=targets)
        if slice_name not in report.slices:
            raise ConfigError(f"unknown slice '{slice_name}' (have: {', '.join(report.slices)})")
        score = report.slices[slice_name].get(metric)
        if score is None:
            raise ConfigError(f"unknown tuning metric '{metric_name}' (e.g. NDCG@10, Recall@100)")
        trial = Trial(params, score)
        trials.append(trial)
        log.debug("%s %s: %s = %.4f", name, params, metric, score)
        if on_trial is not None:
            on_trial(trial)
    best = max(trials, key=lambda t: t.score if not math.isnan(t.score) else -1.0)
    log.info(
        "%s: best %s = %.4f with %s (%d trials, %s validation)",
        name,
        metric,
        best.score,
        best.params,
        len(trials),
        protocol,
    )
    return TuningResult(name, metric, best.params, best.score, tuple(trials))


def tune_fallback(
    train: Dataset,
    *,
    metric: str = "NDCG@10",
    interactions: InteractionConfig | None = None,
    targets: TargetConfig | None = None,
) -> dict[str, Any] | None:
    """Per-region popularity parameters for cold users, chosen on the cold users of a global
    validation cut; None when that cut has no cold users (then defaults stay)."""
    cut = validation_split(train, "global")
    if not cut.test.events.join(
        cut.train.events.select("user_id").unique(), on="user_id", how="anti"
    ).height:
        return None
    fallback_grid = spec("region-popularity").grid
    trials = []
    for point in grid_points("region-popularity", fallback_grid):
        model = create("popularity", fallback=point, interactions=interactions).fit(cut.train)
        report = evaluate_model(model, cut, ks=(10,), targets=targets)
        trials.append(Trial(point, report.slices["cold users"].get(metric, 0.0)))
    best = max(trials, key=lambda t: t.score)
    log.info("cold-user fallback: best %s = %.4f with %s", metric, best.score, best.params)
    return best.params
