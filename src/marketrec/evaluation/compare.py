"""Several models trained and judged on one split, side by side (demo and benchmarks)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from marketrec.data.split import Split
from marketrec.evaluation.offline import (
    DEFAULT_KS,
    EvaluationReport,
    TargetConfig,
    evaluate_model,
)
from marketrec.evaluation.tuning import tune, tune_fallback
from marketrec.models.base import CollaborativeRecommender
from marketrec.models.registry import create

log = logging.getLogger(__name__)

#: Columns of the comparison table: (slice, metric@K).
HEADLINE = (
    ("all", "NDCG@10"),
    ("all", "Recall@20"),
    ("all", "Recall@100"),
    ("all", "MRR@10"),
    ("all", "Coverage@100"),
    ("warm users", "NDCG@10"),
    ("cold users", "NDCG@10"),
    ("cold items", "Recall@100"),
)


@dataclass(frozen=True)
class ModelRun:
    name: str
    params: dict[str, Any]
    fallback: dict[str, Any] | None
    report: EvaluationReport
    fit_seconds: float
    tune_seconds: float
    model: CollaborativeRecommender
    """The fitted model, so callers can ask more of it without fitting it again."""


def run_models(
    split: Split,
    names: Sequence[str],
    *,
    tune_protocol: str | None = "global",
    ks: Sequence[int] = DEFAULT_KS,
    targets: TargetConfig | None = None,
    on_step: Callable[[str], None] | None = None,
    save_to: Path | None = None,
    grids: Mapping[str, Mapping[str, list[Any]]] | None = None,
) -> list[ModelRun]:
    """For each model: tune on a validation cut of train (unless `tune_protocol` is None),
    refit on all of train, evaluate on test; with `save_to`, keep each model in
    `save_to/<name>`. `grids` replaces the registry's tuning grid for the models it names."""
    runs = []
    fallback = None
    if tune_protocol is not None:
        if on_step:
            on_step("tuning the cold-user fallback")
        fallback = tune_fallback(split.train, targets=targets)
    for name in names:
        params: dict[str, Any] = {}
        started = time.perf_counter()
        if tune_protocol is not None:
            if on_step:
                on_step(f"tuning {name}")
            params = tune(
                name,
                split.train,
                protocol=tune_protocol,
                targets=targets,
                fallback=fallback,
                grid=(grids or {}).get(name),
            ).best_params
        tuned = time.perf_counter()
        if on_step:
            on_step(f"training {name}")
        model = create(name, params, fallback=fallback).fit(split.train)
        fitted = time.perf_counter()
        if on_step:
            on_step(f"evaluating {name}")
        report = evaluate_model(model, split, ks=ks, targets=targets)
        if save_to is not None:
            model.save(save_to / name)
        runs.append(
            ModelRun(name, params, fallback, report, fitted - tuned, tuned - started, model)
        )
    return runs


def _columns(runs: Sequence[ModelRun]) -> list[tuple[str, str]]:
    """Headline (slice, metric) pairs every run has, skipping slices without users."""
    return [
        (s, m)
        for s, m in HEADLINE
        if all(s in r.report.slices and m in r.report.slices[s] for r in runs)
        and runs
        and runs[0].report.slices[s]["users"] > 0
    ]


def comparison_table(runs: Sequence[ModelRun], title: str) -> Table:
    """One row per model with the headline metrics; the best of each column in bold."""
    table = Table(title=title, title_justify="left")
    table.add_column("model", style="bold")
    columns = _columns(runs)
    for slice_name, metric in columns:
        users = int(runs[0].report.slices[slice_name]["users"]) if runs else 0
        table.add_column(f"{metric}\n{slice_name}\n({users:,})", justify="right")
    best = {c: max(r.report.slices[c[0]][c[1]] for r in runs) for c in columns} if runs else {}
    for run in runs:
        cells = []
        for c in columns:
            value = run.report.slices[c[0]][c[1]]
            cells.append(f"[bold green]{value:.4f}[/]" if value == best[c] else f"{value:.4f}")
        table.add_row(run.name, *cells)
    return table


def comparison_markdown(runs: Sequence[ModelRun]) -> str:
    """The comparison as a Markdown table (for docs/benchmarks.md)."""
    columns = _columns(runs)
    header = (
        "| model | params | "
        + " | ".join(f"{m} {s} ({int(runs[0].report.slices[s]['users']):,})" for s, m in columns)
        + " |"
    )
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for run in runs:
        params = ", ".join(f"{k}={v}" for k, v in sorted(run.params.items())) or "defaults"
        values = " | ".join(f"{run.report.slices[s][m]:.4f}" for s, m in columns)
        lines.append(f"| {run.name} | {params} | {values} |")
    return "\n".join(lines)
