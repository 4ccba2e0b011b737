"""The two-stage pipeline (retrieval → re-ranker → rules → diversity → exploration) against
retrieval alone and the tuned baselines, on the acceptance datasets of the ranking issue.

    .venv/bin/python benchmarks/two_stage.py --sections ml100k toys synthetic latency \
        --write docs/benchmarks.md

- ml100k: P1u (warm-user NDCG@10) and P1g (all, warm and cold users); EASE tuned on a
  validation cut of train and the cold-user fallback tuned as in benchmarks/ml100k.py.
  Two retrieval models feed the pipeline: the two-tower and the tuned EASE.
- toys: Amazon Toys under P3 (HR@10, NDCG@10), EASE with the tuned l2 of
  benchmarks/amazon_toys.py.
- synthetic: the generated marketplace under P1g with an ablation (retrieval only, + ranker,
  + rules, + diversity, + exploration): NDCG@10, coverage@10, share of shown items that are new
  and of shown items the user had already bought.
- latency: in-process `recommend_detailed` for one user at a time, 100k items, 300 candidates,
  one thread.
- candidates (not in the default sections): what the number of ranked candidates buys and
  costs: ml-100k P1u NDCG@10 with the ranker trained and served at 100, 150 and 300
  candidates over one two-tower, and the 100k-item pipeline's in-process latency at each.
Each section goes to its own part of docs/benchmarks.md (two_stage_<name>). `--ranked N`
runs toys and synthetic with N candidates ranked and trained on instead of 300, into
two_stage_toys_N and two_stage_synthetic_N.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import polars as pl
import torch

from docs_section import write_section
from marketrec.data.importers import import_movielens, import_sequences
from marketrec.data.split import Split, split_global, split_leave_one_out, split_per_user
from marketrec.data.synthetic import SyntheticConfig, generate_marketplace
from marketrec.evaluation.compare import run_models
from marketrec.evaluation.metrics import compute_metrics
from marketrec.evaluation.offline import (
    TargetConfig,
    build_targets,
    evaluate_model,
    slice_targets,
)
from marketrec.models.registry import create
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.ranking_stage import RankingParams, fit_ranking_stage, stage_summary
from marketrec.pipeline.recommender import Recommender

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
log = logging.getLogger("two-stage-benchmark")


def fitted(
    retrieval: str,
    params: dict[str, Any],
    split: Split,
    ranking: RankingParams | None,
    fallback: dict[str, Any] | None = None,
    config: PipelineConfig | None = None,
) -> tuple[Recommender, float]:
    started = time.perf_counter()
    model = Recommender(create(retrieval, params, fallback=fallback), config, ranking)
    model.fit(split.train)
    return model, time.perf_counter() - started


def variant(model: Recommender, config: PipelineConfig, ranked: bool = True) -> Recommender:
    """The same fitted stages under other pipeline settings (or without the ranker)."""
    other = Recommender(model.retrieval, config, model.ranking_params if ranked else None)
    other._seen, other._items, other.stats = model._seen, model._items, model.stats
    other._reference_ts = model._reference_ts
    other.ranking = model.ranking if ranked else None
    return other


def served(candidates: int, **settings: Any) -> PipelineConfig:
    """Pipeline settings ranking `candidates` per user (the ranker's training lists hold as
    many: `RankingParams(candidates=...)`)."""
    return PipelineConfig(candidates=candidates, **settings)


def ranked_note(candidates: int) -> str:
    """A heading's note when a section ranks another count than the default 300."""
    return "" if candidates == 300 else f"; {candidates} candidates ranked and trained on"


def cells(slices: dict[str, dict[str, float]], columns: list[tuple[str, str]]) -> str:
    return " | ".join(f"{slices[s][m]:.4f}" if s in slices else "–" for s, m in columns)


def table(
    rows: list[tuple[str, dict[str, dict[str, float]], float, str]],
    columns: list[tuple[str, str]],
) -> str:
    first = rows[0][1]
    names = " | ".join(
        f"{m} {s} ({int(first[s]['users']) if s in first else 0:,})" for s, m in columns
    )
    lines = [f"| model | {names} | train s | ranker |", "|---|" + "---|" * (len(columns) + 2)]
    for name, slices, seconds, note in rows:
        lines.append(f"| {name} | {cells(slices, columns)} | {seconds:.0f} | {note} |")
    return "\n".join(lines)


def ranker_note(model: Recommender) -> str:
    if model.ranking is None:
        return "–"
    s = stage_summary(model.ranking)
    state = "kept" if model.ranking.active else "dropped (retrieval order served)"
    return (
        f"validation NDCG@10 {s['validation_ndcg@10']:.3f} vs retrieval order "
        f"{s['validation_ndcg@10_retrieval_order']:.3f} (gain t {s['validation_gain_t']:.2f}), "
        f"{s['epochs_run']} epochs; {state}"
    )


def ml100k_section(text_encoder: str) -> str:
    data = import_movielens(SHARED / "ml-100k")
    parts = []
    for protocol, split, window, columns in (
        (
            "P1u",
            split_per_user(data),
            "per-user",
            [("warm users", "NDCG@10"), ("warm users", "Recall@100")],
        ),
        (
            "P1g",
            split_global(data, quantile=0.8),
            "global",
            [("all", "NDCG@10"), ("warm users", "NDCG@10"), ("cold users", "NDCG@10")],
        ),
    ):
        tune = "per-user" if protocol == "P1u" else "global"
        runs = run_models(split, ["region-popularity", "ease"], tune_protocol=tune)
        ease = next(r for r in runs if r.name == "ease")
        fallback = dict(ease.fallback) if ease.fallback is not None else None
        rows: list[tuple[str, dict[str, dict[str, float]], float, str]] = [
            (f"{r.name} (tuned {r.params})", r.report.slices, r.fit_seconds, "–") for r in runs
        ]
        ranking = RankingParams(window_mode=window)  # type: ignore[arg-type]
        for retrieval, params in (
            ("ease", ease.params),
            ("two-tower", {"text_encoder": text_encoder}),
        ):
            model, seconds = fitted(retrieval, params, split, ranking, fallback)
            alone = variant(model, PipelineConfig(), ranked=False)
            rows.append(
                (f"{retrieval} retrieval alone", evaluate_model(alone, split).slices, 0, "–")
            )
            rows.append(
                (
                    f"**two-stage ({retrieval} → ranker)**",
                    evaluate_model(model, split).slices,
                    seconds,
                    ranker_note(model),
                )
            )
        parts.append(f"### ml-100k {protocol} ({split.description})\n\n" + table(rows, columns))
    return "\n\n".join(parts)


TOYS_RETRIEVAL = {
    "ease": {"l2": 200.0},
    "itemknn": {"neighbours": 20, "shrink": 10.0},  # tuned in benchmarks/amazon_toys.py
    "two-tower": {"text_encoder": "hashed", "time_features": False},
}


def toys_section(retrievals: list[str], candidates: int = 300) -> str:
    data = import_sequences(SHARED / "amazon-toys-s3rec")
    split = split_leave_one_out(data)
    targets = TargetConfig(all_events=True)
    columns = [("all", "HR@10"), ("all", "NDCG@10"), ("all", "Recall@100")]
    # the clock-reading ranker features stay on although the sequence clock is only each
    # user's order: without them (time_features = false) the ranker's validation NDCG@10 fell
    # to 0.1765 vs 0.1858 with them (retrieval order 0.1831); either way the gate drops it
    ranking = RankingParams(window_mode="leave-one-out", candidates=candidates)
    rows = []
    for retrieval in retrievals:
        model, seconds = fitted(
            retrieval, TOYS_RETRIEVAL[retrieval], split, ranking, config=served(candidates)
        )
        alone = variant(model, served(candidates), ranked=False)
        rows.append(
            (
                f"{retrieval} retrieval alone",
                evaluate_model(alone, split, ks=(10, 100), targets=targets).slices,
                0,
                "–",
            )
        )
        rows.append(
            (
                f"**two-stage ({retrieval} → ranker)**",
                evaluate_model(model, split, ks=(10, 100), targets=targets).slices,
                seconds,
                ranker_note(model),
            )
        )
    return (
        f"### Amazon Toys P3 ({split.description}){ranked_note(candidates)}\n\n"
        "Anchors (tuned): EASE HR@10 0.085, "
        "NDCG@10 0.050; ALS 0.076, 0.043.\n\n" + table(rows, columns)
    )


def synthetic_section(users: int, items: int, text_encoder: str, candidates: int = 300) -> str:
    data, _ = generate_marketplace(SyntheticConfig(users=users, items=items, days=30, seed=1))
    split = split_global(data, quantile=0.8)
    baselines = run_models(split, ["region-popularity", "ease"], tune_protocol="global")
    ranking = RankingParams(window_mode="global", candidates=candidates)
    model, seconds = fitted(
        "two-tower", {"text_encoder": text_encoder}, split, ranking, config=served(candidates)
    )
    targets = build_targets(split.train, split.test)
    evaluated = targets.get_column("user_id").unique().sort()
    cold_targets = slice_targets(split, targets)["cold users"]
    catalogue = data.items.height
    bought = split.train.events.filter(pl.col("event") == "purchase").select("user_id", "item_id")
    moment = split.train.events.get_column("ts").max()
    new_items = data.items.filter(
        (pl.col("created_at") > moment - timedelta(days=7))
        | ~pl.col("item_id").is_in(split.train.events.get_column("item_id").unique().implode())
    ).select("item_id")
    steps = [
        ("retrieval only (no rules)", served(candidates, exclude_events=()), False),
        ("+ ranker", served(candidates, exclude_events=()), True),
        ("+ rules (no bought or seen items)", served(candidates), True),
        ("+ diversity (MMR λ=0.3)", served(candidates, diversity_strength=0.3), True),
        (
            "+ exploration (10% of slots)",
            served(candidates, diversity_strength=0.3, exploration_share=0.1),
            True,
        ),
    ]
    cold_users = cold_targets.get_column("user_id").n_unique()
    lines = [
        f"| pipeline | NDCG@10 ({evaluated.len():,} users) | NDCG@10 new users ({cold_users:,}) "
        "| coverage@10 | new items shown | already-bought items shown |",
        "|---|---|---|---|---|---|",
    ]

    def line(name: str, recs: pl.DataFrame) -> str:
        metrics = compute_metrics(recs, targets, (10,), catalogue)
        cold = compute_metrics(recs, cold_targets, (10,), catalogue)
        new_share = recs.join(new_items, on="item_id", how="semi").height / max(recs.height, 1)
        rebought = recs.join(bought, on=["user_id", "item_id"], how="semi").height / max(
            recs.height, 1
        )
        return (
            f"| {name} | {metrics['NDCG@10']:.4f} | {cold['NDCG@10']:.4f} | "
            f"{metrics['Coverage@10']:.4f} | {new_share:.4f} | {rebought:.4f} |"
        )

    for run in baselines:
        lines.append(line(f"{run.name} (tuned {run.params})", run.model.recommend(evaluated, 10)))
    for name, config, ranked in steps:
        lines.append(line(name, variant(model, config, ranked).recommend(evaluated, 10)))
    return (
        f"### Synthetic marketplace P1g ablation ({users:,} users, {items:,} items, 30 days; "
        f"{split.description}; two-tower retrieval; two-stage fit {seconds:.0f} s; ranker: "
        f"{ranker_note(model)}){ranked_note(candidates)}\n\n"
        "New items: listed in the 7 days before the split or never "
        "interacted with in train. New users: no event in train. The tuned baselines' lists "
        "are scored the same way (their new users get the tuned region popularity).\n\n"
        + "\n".join(lines)
    )


#: Consecutive requests of one kind in the latency section.
_LATENCY_BLOCK = 50


def timed_in_blocks(
    calls: list[tuple[Callable[[], None] | None, Callable[[str], Any]]], users: list[str]
) -> list[list[float]]:
    """Milliseconds of each call per user: (set-up, call) pairs, each warmed up on the first
    20 users, then taking turns in blocks of `_LATENCY_BLOCK` consecutive users (their order
    rotating per block), so a busy machine slows all of them alike; the set-up (not timed)
    runs before each block of its call."""
    for setup, call in calls:
        if setup is not None:
            setup()
        for user in users[:20]:
            call(user)
    timings: list[list[float]] = [[] for _ in calls]
    for round_, start in enumerate(range(0, len(users), _LATENCY_BLOCK)):
        for j in np.roll(np.arange(len(calls)), -round_):
            setup, call = calls[j]
            if setup is not None:
                setup()
            for user in users[start : start + _LATENCY_BLOCK]:
                began = time.perf_counter()
                call(user)
                timings[j].append((time.perf_counter() - began) * 1000)
    return timings


def latency_pipeline(items: int) -> tuple[Recommender, Split, float]:
    """The latency sections' pipeline: a synthetic world with `items` products, two-tower
    and ranker one epoch each (latency does not depend on quality), 300 candidates, MMR and
    10 % exploration, the ranker on whatever one epoch learned (the full path)."""
    data, _ = generate_marketplace(
        SyntheticConfig(users=20_000, items=items, days=10, seed=2, initial_item_share=0.9)
    )
    split = split_global(data, quantile=0.9)
    model, seconds = fitted(
        "two-tower",
        {"text_encoder": "hashed", "epochs": 1, "validation_fraction": 0.0},
        split,
        RankingParams(window_mode="global", epochs=1),
        config=PipelineConfig(candidates=300, diversity_strength=0.3, exploration_share=0.1),
    )
    assert model.ranking is not None
    model.ranking.active = True
    return model, split, seconds


def latency_section(requests: int, items: int) -> str:
    torch.set_num_threads(1)
    model, split, seconds = latency_pipeline(items)
    users = split.train.events.get_column("user_id").unique().sort().to_list()
    rng = np.random.default_rng(0)
    chosen = [users[i] for i in rng.integers(0, len(users), requests)] + ["never-seen"] * 20
    scorer = model.retrieval.scorer
    through_index = scorer.params
    exact = through_index.model_copy(update={"ann_min_items": None})

    def scoring(params: Any) -> Any:
        def use() -> None:
            scorer.params = params

        return use

    # (name, call, retrieval mode): each call serves blocks of consecutive users, the calls
    # taking turns block by block (their order rotating), so a busy machine slows all of them
    # alike; per user they alternated before, and the exact call's pass over the whole
    # catalogue (26 MB) left the next indexed request to reload its data and weights from
    # memory, which a service answering one kind of request does not do
    calls = [
        ("`recommend`", lambda user: model.recommend([user], 10), scoring(through_index)),
        (
            "`recommend_detailed` (with explanations)",
            lambda user: model.recommend_detailed([user], 10),
            scoring(through_index),
        ),
        (
            "`recommend`, exact retrieval (every item scored, no serving index)",
            lambda user: model.recommend([user], 10),
            scoring(exact),
        ),
    ]
    rng.shuffle(chosen)  # the never-seen user's calls spread over the blocks
    timings = timed_in_blocks([(mode, call) for _, call, mode in calls], chosen)
    lines = []
    for (name, _, _), values in zip(calls, timings, strict=True):
        t = np.array(values)
        lines.append(
            f"| {name} | {len(t)} | {np.percentile(t, 50):.1f} | {np.percentile(t, 90):.1f} | "
            f"{np.percentile(t, 99):.1f} | {t.max():.1f} |"
        )
    # the serving index's candidates against exact search, per user
    retrieval = model.retrieval
    ids = pl.Series(sorted(set(chosen)))
    rows = retrieval.user_rows(ids)
    region = retrieval.regions_of(rows)
    exclude = model._seen.exclusion(rows, model.config.exclude_events)
    found = {}
    for label, params in (("index", through_index), ("exact", exact)):
        scorer.params = params
        found[label] = [
            retrieval.top_items(rows[u : u + 1], region[u : u + 1], 300, None, exclude[u : u + 1])
            for u in range(len(rows))
        ]
    scorer.params = through_index
    recall, head = [], []
    for (ic, isc), (ec, esc) in zip(found["index"], found["exact"], strict=True):
        want = ec[0][np.isfinite(esc[0])]
        got = ic[0][np.isfinite(isc[0])]
        recall.append(len(np.intersect1d(want, got)) / max(len(want), 1))
        head.append(len(np.intersect1d(want[:100], got)) / max(min(len(want), 100), 1))
    index = scorer.serving_index()
    route = (
        f"goes through the two-tower's serving index (faiss IVF, {index.nlist:,} lists, "
        f"{index.probes_for(300)} scanned for 300 candidates; catalogues of at least "
        f"{through_index.ann_min_items:,} items) unless the row says exact"
        if index is not None
        else f"is exact in every row (no serving index below {through_index.ann_min_items:,} items)"
    )
    return (
        f"### In-process recommend latency ({model.retrieval.item_ids.len():,} items, "
        f"{len(users):,} users, 300 candidates, ranker + MMR + 10% exploration, one thread)\n\n"
        f"One user per call, k = 10; 20 of the calls are for a user never seen. The calls "
        f"take turns in blocks of {_LATENCY_BLOCK} consecutive users (their order rotating "
        f"per block), each call serving every user once. Retrieval {route}.\n\n"
        "| call | requests | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n"
        + "\n".join(lines)
        + f"\n\nServing index vs exact search, {len(rows):,} users: recall@300 of the "
        f"candidates {np.mean(recall):.4f} (lowest {np.min(recall):.3f}); share of the exact "
        f"top 100 among the index's 300 {np.mean(head):.4f}. One epoch leaves the vectors "
        "crowded around popular items, which makes this easy: better-trained vectors spread "
        "more, and their recall is not measured here."
        + f"\n\n(fit {seconds:.0f} s, one epoch each: latency does not depend on quality)"
    )


#: Candidate counts the candidates section compares (300: the pipeline's default).
CANDIDATE_COUNTS = (100, 150, 300)


def candidates_section(text_encoder: str, requests: int, items: int, seeds: list[int]) -> str:
    """What the number of ranked candidates buys and costs: ml-100k P1u NDCG@10 with the
    ranker trained and served at each count (per seed: one two-tower retrieval, fitted once,
    under every count), and the in-process latency of the 100k-item pipeline served at each
    count."""
    split = split_per_user(import_movielens(SHARED / "ml-100k"))
    lines = [
        "| seed | candidates | NDCG@10 | Recall@10 | fit s | ranker |",
        "|---|---|---|---|---|---|",
    ]
    ndcg: dict[int | str, list[float]] = {}
    most = max(CANDIDATE_COUNTS)
    for seed in seeds:
        # the two-tower fitted once per seed, with the ranker of the largest count
        started = time.perf_counter()
        base = Recommender(
            create("two-tower", {"text_encoder": text_encoder, "seed": seed}),
            served(most),
            RankingParams(window_mode="per-user", candidates=most, seed=seed),
        ).fit(split.train)
        base_seconds = time.perf_counter() - started
        alone = evaluate_model(variant(base, PipelineConfig(), ranked=False), split).slices
        ndcg.setdefault("retrieval alone", []).append(alone["warm users"]["NDCG@10"])
        quality: list[tuple[int | str, dict[str, dict[str, float]], float | None, str]] = [
            ("retrieval alone", alone, None, "–")
        ]
        for n in sorted(CANDIDATE_COUNTS, reverse=True):
            if n == most:
                model, seconds = base, base_seconds
            else:
                started = time.perf_counter()
                ranking = RankingParams(window_mode="per-user", candidates=n, seed=seed)
                model = variant(base, served(n), ranked=False)
                model.ranking_params = ranking
                model.ranking = fit_ranking_stage(base.retrieval, split.train, ranking)
                seconds = time.perf_counter() - started
            slices = evaluate_model(model, split).slices
            ndcg.setdefault(n, []).append(slices["warm users"]["NDCG@10"])
            quality.append((n, slices, seconds, ranker_note(model)))
        for n, slices, seconds, note in quality:
            warm = slices["warm users"]
            fit = "–" if seconds is None else f"{seconds:.0f}"
            lines.append(
                f"| {seed} | {n} | {warm['NDCG@10']:.4f} | {warm['Recall@10']:.4f} | {fit} | "
                f"{note} |"
            )
    means = " · ".join(f"{name}: {np.mean(values):.4f}" for name, values in ndcg.items())
    # latency of the 100k-item pipeline (the latency section's) served at each count
    big, world, _ = latency_pipeline(items)
    users = world.train.events.get_column("user_id").unique().sort().to_list()
    rng = np.random.default_rng(0)
    chosen = [users[i] for i in rng.integers(0, len(users), requests)]

    def serving_at(n: int) -> Any:
        config = big.config.model_copy(update={"candidates": n})
        return lambda user: big.recommend_one(user, 10, config=config)

    timings = timed_in_blocks([(None, serving_at(n)) for n in CANDIDATE_COUNTS], chosen)
    speed = ["| candidates | requests | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|---|"]
    for n, values in zip(CANDIDATE_COUNTS, timings, strict=True):
        t = np.array(values)
        speed.append(
            f"| {n} | {len(t)} | {np.percentile(t, 50):.1f} | {np.percentile(t, 90):.1f} | "
            f"{np.percentile(t, 99):.1f} |"
        )
    return (
        f"### Ranked candidates: quality on ml-100k P1u ({split.description})\n\n"
        "Per seed, one two-tower retrieval (fitted with the 300-candidate ranker); a ranker "
        "trained on lists of each count and served at it (its gate decides, as in the other "
        "sections). Warm users.\n\n"
        + "\n".join(lines)
        + f"\n\nMean NDCG@10 over seeds {', '.join(map(str, seeds))}: {means}"
        + f"\n\n### Ranked candidates: in-process latency ({items:,} items)\n\n"
        "`recommend_one` (the service's call), one user per call, k = 10, the latency "
        f"section's pipeline (ranker forced on, MMR, 10 % exploration) served at each count; "
        f"the counts take turns in blocks of {_LATENCY_BLOCK} users.\n\n" + "\n".join(speed)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["ml100k", "toys", "synthetic", "latency"],
        choices=["ml100k", "toys", "synthetic", "latency", "candidates"],
    )
    parser.add_argument("--synthetic-users", type=int, default=100_000)
    parser.add_argument("--synthetic-items", type=int, default=5_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--toys-retrieval", nargs="+", default=list(TOYS_RETRIEVAL), choices=list(TOYS_RETRIEVAL)
    )
    parser.add_argument("--latency-items", type=int, default=100_000)
    parser.add_argument("--text-encoder", default="auto")
    parser.add_argument("--candidate-seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--ranked",
        type=int,
        default=300,
        help="candidates ranked per user (and per training list) in the toys and synthetic "
        "sections; other than 300 they write to their own docs sections",
    )
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    if args.ranked < 1:
        parser.error(f"--ranked must be a positive number of candidates, got {args.ranked}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    torch.set_num_threads(1)
    started = time.perf_counter()
    parts: dict[str, str] = {}
    if "ml100k" in args.sections:
        parts["ml100k"] = ml100k_section(args.text_encoder)
    if "toys" in args.sections:
        parts["toys"] = toys_section(args.toys_retrieval, args.ranked)
    if "synthetic" in args.sections:
        parts["synthetic"] = synthetic_section(
            args.synthetic_users, args.synthetic_items, args.text_encoder, args.ranked
        )
    if "latency" in args.sections:
        parts["latency"] = latency_section(args.requests, args.latency_items)
    if "candidates" in args.sections:
        parts["candidates"] = candidates_section(
            args.text_encoder, args.requests, args.latency_items, args.candidate_seeds
        )
    command = (
        f"Command: `.venv/bin/python benchmarks/two_stage.py --sections "
        f"{' '.join(args.sections)} --text-encoder {args.text_encoder}"
        + (f" --toys-retrieval {' '.join(args.toys_retrieval)}" if "toys" in args.sections else "")
        + (
            f" --candidate-seeds {' '.join(map(str, args.candidate_seeds))}"
            if "candidates" in args.sections
            else ""
        )
        + (f" --ranked {args.ranked}" if args.ranked != 300 else "")
        + " --write "
        f"docs/benchmarks.md` ({datetime.now(UTC):%Y-%m-%d}, "
        f"{time.perf_counter() - started:.0f} s in all; one torch thread)."
    )
    for name, part in parts.items():
        if args.ranked != 300 and name in ("toys", "synthetic"):
            name = f"{name}_{args.ranked}"  # beside the default count's section
        body = f"## Two-stage pipeline ({name})\n\n{command}\n\n{part}"
        print(body)
        if args.write:
            write_section(args.write, f"two_stage_{name}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
