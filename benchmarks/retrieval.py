"""The retrieval stage (two-tower) against the tuned baselines, on every acceptance dataset.

    .venv/bin/python benchmarks/retrieval.py --sections ml100k toys synthetic ann \
        --write docs/benchmarks.md

Each dataset's table goes into its own section of docs/benchmarks.md (retrieval_<name>), so
one dataset can be rerun alone.

- ml100k: P1u (warm-user Recall@100) and P1g (cold-user NDCG@10, cold items' Recall@100),
  baselines tuned on a validation cut of train as in benchmarks/ml100k.py.
- toys: Amazon Toys under P3; baselines with the parameters the tuned run of
  benchmarks/amazon_toys.py chose (tuning them again takes 13 minutes).
- synthetic: the generated marketplace under P1g, plus Recall@100 on items listed after the
  split, each such target ranked at its own event's moment (before it, the item was not listed).
- ann: recall@100 of the faiss IVF index against exact search on trained item vectors.
Each model's training time is measured in the same run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import polars as pl

from docs_section import write_section
from marketrec.data.importers import import_movielens, import_sequences
from marketrec.data.split import Split, split_global, split_leave_one_out, split_per_user
from marketrec.data.synthetic import SyntheticConfig, generate_marketplace
from marketrec.evaluation.compare import run_models
from marketrec.evaluation.offline import (
    TargetConfig,
    build_targets,
    evaluate_model,
)
from marketrec.models.registry import create

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BASELINES = ["region-popularity", "itemknn", "ease", "als"]
log = logging.getLogger("retrieval-benchmark")


def fit_timed(
    name: str,
    split: Split,
    params: dict[str, Any] | None = None,
    fallback: dict[str, Any] | None = None,
) -> tuple[Any, float]:
    started = time.perf_counter()
    model = create(name, params, fallback=fallback).fit(split.train)
    return model, time.perf_counter() - started


def row(
    name: str, slices: dict[str, dict[str, float]], columns: list[tuple[str, str]], seconds: float
) -> str:
    cells = " | ".join(f"{slices[s][m]:.4f}" if s in slices else "–" for s, m in columns)
    return f"| {name} | {cells} | {seconds:.0f} |"


def header(columns: list[tuple[str, str]], slices: dict[str, dict[str, float]]) -> str:
    names = " | ".join(
        f"{m} {s} ({int(slices[s]['users']) if s in slices else 0:,})" for s, m in columns
    )
    return f"| model | {names} | train s |\n|---|" + "---|" * (len(columns) + 1)


def ml100k_section(params: dict[str, Any], seeds: int = 1) -> str:
    """`seeds` > 1: the two-tower is also trained with seeds 1, 2, ... (rows of their own and
    a mean row): small slices such as P1g's 192 new users move by about ±0.015 NDCG@10
    between fits that differ only in the seed or in float rounding."""
    data = import_movielens(SHARED / "ml-100k")
    parts = []
    for protocol, split, columns in (
        (
            "P1u",
            split_per_user(data),
            [("warm users", "Recall@100"), ("warm users", "NDCG@10"), ("warm users", "Recall@20")],
        ),
        (
            "P1g",
            split_global(data, quantile=0.8),
            [
                ("all", "NDCG@10"),
                ("warm users", "Recall@100"),
                ("cold users", "NDCG@10"),
                ("cold items", "Recall@100"),
            ],
        ),
    ):
        runs = run_models(
            split, BASELINES, tune_protocol="per-user" if protocol == "P1u" else "global"
        )
        model, seconds = fit_timed("two-tower", split, params)
        tower = evaluate_model(model, split).slices
        lines = [header(columns, tower)]
        lines += [row(f"{r.name} (tuned)", r.report.slices, columns, r.fit_seconds) for r in runs]
        lines.append(row("**two-tower**", tower, columns, seconds))
        if seeds > 1:
            fits = [(tower, seconds)]
            for seed in range(1, seeds):
                other, other_seconds = fit_timed("two-tower", split, {**params, "seed": seed})
                fits.append((evaluate_model(other, split).slices, other_seconds))
                lines.append(row(f"two-tower, seed {seed}", fits[-1][0], columns, other_seconds))
            mean = {
                s: {m: float(np.mean([f[0][s][m] for f in fits])) for m in fits[0][0][s]}
                for s in tower
            }
            spread = ", ".join(
                f"{m} {s} ±{np.std([f[0][s][m] for f in fits]):.4f}" for s, m in columns
            )
            lines.append(
                row(
                    f"two-tower, mean of {seeds} seeds",
                    mean,
                    columns,
                    np.mean([f[1] for f in fits]),
                )
            )
            lines.append(f"\nStandard deviation over the seeds: {spread}.")
        parts.append(f"### ml-100k {protocol} ({split.description})\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def toys_section(params: dict[str, Any]) -> str:
    data = import_sequences(SHARED / "amazon-toys-s3rec")
    split = split_leave_one_out(data)
    targets = TargetConfig(all_events=True)
    columns = [("all", "HR@10"), ("all", "NDCG@10"), ("all", "Recall@100")]
    fixed = {
        "als": {"alpha": 20.0, "factors": 128, "regularization": 0.01},
        "ease": {"l2": 200.0},
        "itemknn": {"neighbours": 20, "shrink": 10.0},
    }
    lines = []
    first = None
    for name, p in [*fixed.items(), ("two-tower", params)]:
        model, seconds = fit_timed(name, split, p)
        slices = evaluate_model(model, split, ks=(10, 100), targets=targets).slices
        first = first or slices
        label = f"**{name}**" if name == "two-tower" else f"{name} ({p})"
        lines.append(row(label, slices, columns, seconds))
    return (
        f"### Amazon Toys P3 ({split.description})\n\nAnchors: tuned ALS 0.204, EASE 0.189 "
        "Recall@100.\n\n" + header(columns, first) + "\n" + "\n".join(lines)
    )


def synthetic_section(params: dict[str, Any], users: int, items: int) -> tuple[str, Any]:
    data, _ = generate_marketplace(SyntheticConfig(users=users, items=items, days=30, seed=1))
    split = split_global(data, quantile=0.8)
    cut = split.test.events.get_column("ts").min()
    new_items = data.items.filter(pl.col("created_at") >= cut).select("item_id")
    columns = [
        ("all", "NDCG@10"),
        ("warm users", "Recall@100"),
        ("cold users", "NDCG@10"),
        ("cold items", "Recall@100"),
    ]
    runs = run_models(split, BASELINES, tune_protocol="global")
    model, seconds = fit_timed("two-tower", split, params)
    tower = evaluate_model(model, split).slices
    targets = build_targets(split.train, split.test).join(new_items, on="item_id", how="semi")

    first_seen = split.test.events.group_by("user_id", "item_id").agg(pl.col("ts").min())
    moments = targets.select("user_id", "item_id").join(first_seen, on=["user_id", "item_id"])

    def listed_after(m: Any) -> float:
        """Share of these targets in the user's top 100 ranked at the target event's moment:
        a product listed after the split does not exist at the split, only once listed."""
        hits = 0
        for user, item, ts in moments.iter_rows():
            recs = m.recommend([user], 100, at=[ts])
            hits += item in set(recs.get_column("item_id").to_list())
        return hits / max(moments.height, 1)

    lines = [
        header(columns, tower)
        .replace(
            " | train s |",
            f" | Recall@100 items listed after the split ({targets.height:,} targets) | train s |",
        )
        .replace("---|\n", "---|---|\n", 1)
    ]
    for r in runs:
        lines.append(
            row(f"{r.name} (tuned)", r.report.slices, columns, r.fit_seconds).replace(
                f" | {r.fit_seconds:.0f} |",
                f" | {listed_after(r.model):.4f} | {r.fit_seconds:.0f} |",
            )
        )
    lines.append(
        row("**two-tower**", tower, columns, seconds).replace(
            f" | {seconds:.0f} |", f" | {listed_after(model):.4f} | {seconds:.0f} |"
        )
    )
    text = (
        f"### Synthetic marketplace P1g ({users:,} users, {items:,} items, 30 days; "
        f"{data.events.height:,} events; {split.description})\n\n" + "\n".join(lines)
    )
    return text, model


def ann_section(model: Any) -> str:
    from marketrec.retrieval.index import ExactIndex, FaissConfig, FaissIndex

    vectors = model.scorer.index_vectors().astype(np.float32)
    ids = [f"i{j}" for j in range(len(vectors))]
    rng = np.random.default_rng(0)
    n_users = len(model._users)
    rows = rng.choice(n_users, min(2000, n_users), replace=False)
    users = model.scorer.user_vectors(rows, np.full(len(rows), len(model._regions)))
    queries = np.hstack([users, np.ones((len(users), 1))]).astype(np.float32)
    exact = ExactIndex(vectors.shape[1])
    exact.add(ids, vectors)
    truth, _ = exact.search(queries, 100)
    lines = ["| nlist | nprobe | recall@100 vs exact | recall@10 vs exact |", "|---|---|---|---|"]
    for nprobe in (4, 8, 16, 32, None):
        index = FaissIndex(vectors.shape[1], FaissConfig(nprobe=nprobe))
        index.add(ids, vectors)
        found, _ = index.search(queries, 100)
        nprobe = nprobe or f"default for k=100: {index.probes_for(100)}"
        r100 = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(found, truth, strict=True)])
        r10 = np.mean(
            [len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(found, truth, strict=True)]
        )
        lines.append(f"| {index.nlist} | {nprobe} | {r100:.4f} | {r10:.4f} |")
    return (
        f"### ANN on trained two-tower vectors ({len(vectors):,} items, "
        f"{len(queries):,} user vectors as queries)\n\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["ml100k", "toys", "synthetic", "ann"])
    parser.add_argument("--synthetic-users", type=int, default=100_000)
    parser.add_argument("--synthetic-items", type=int, default=5_000)
    parser.add_argument("--text-encoder", default="auto")
    parser.add_argument("--seeds", type=int, default=1, help="ml100k: two-tower fits per split")
    parser.add_argument(
        "--training-threads",
        type=int,
        default=1,
        help="torch threads while the two-tower trains (serving stays at one)",
    )
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.training_threads < 1:
        parser.error("--seeds and --training-threads must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    params = {"text_encoder": args.text_encoder, "training_threads": args.training_threads}
    started = time.perf_counter()
    parts: dict[str, str] = {}
    synthetic_model = None
    if "ml100k" in args.sections:
        parts["ml100k"] = ml100k_section(params, args.seeds)
    if "toys" in args.sections:
        # the S3-Rec items have no text (anonymised attribute ids only): hashed is enough;
        # the importer's clock is only each user's order, so no time features
        parts["toys"] = toys_section({**params, "text_encoder": "hashed", "time_features": False})
    if "synthetic" in args.sections or "ann" in args.sections:
        parts["synthetic"], synthetic_model = synthetic_section(
            params, args.synthetic_users, args.synthetic_items
        )
    if "ann" in args.sections and synthetic_model is not None:
        parts["ann"] = ann_section(synthetic_model)
    command = (
        f"Command: `.venv/bin/python benchmarks/retrieval.py --sections "
        f"{' '.join(args.sections)} --text-encoder {args.text_encoder} --seeds {args.seeds} "
        "--training-threads "
        f"{args.training_threads} --write docs/benchmarks.md` ({datetime.now(UTC):%Y-%m-%d}, "
        f"{time.perf_counter() - started:.0f} s in all; {args.training_threads} torch "
        "thread(s) while the two-tower trains, one otherwise; train s = fit time on this "
        "machine, tuning excluded)."
    )
    for name, part in parts.items():
        body = f"## Retrieval stage ({name}): two-tower vs tuned baselines\n\n{command}\n\n{part}"
        print(body)
        if args.write:
            write_section(args.write, f"retrieval_{name}", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
