"""Data-plane and evaluation speed at scale: 10M events validated, loaded and turned into an
interaction matrix; top-100 lists for 100k users scored (CONTRACT §3).

    .venv/bin/python benchmarks/scale.py --events 10000000 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from docs_section import write_section
from marketrec.data.schema import load_dataset, make_dataset
from marketrec.evaluation.metrics import compute_metrics
from marketrec.features.interactions import build_interactions


def timed(results: list[tuple[str, float]], label: str, fn):
    started = time.perf_counter()
    value = fn()
    results.append((label, time.perf_counter() - started))
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--eval-users", type=int, default=100_000)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.events
    results: list[tuple[str, float]] = []
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    raw = pl.DataFrame(
        {
            "user_id": pl.Series(rng.integers(0, args.users, n)).cast(pl.String),
            "item_id": pl.Series(rng.zipf(1.3, n) % args.items).cast(pl.String),
            "ts": pl.Series(start + rng.integers(0, 90 * 86_400 * 10**6, n)).cast(
                pl.Datetime("us", "UTC")
            ),
            "event": pl.Series(
                rng.choice(
                    ["view", "click", "add_to_cart", "purchase"], n, p=[0.8, 0.15, 0.035, 0.015]
                )
            ),
        }
    )
    items = pl.DataFrame({"item_id": pl.Series(np.arange(args.items)).cast(pl.String)})
    data = timed(results, f"validate {n:,} events (make_dataset)", lambda: make_dataset(raw, items))
    with tempfile.TemporaryDirectory() as tmp:
        data.save(tmp)
        timed(results, f"load + validate {n:,} events from Parquet", lambda: load_dataset(tmp))
    inter = timed(
        results, f"interaction matrix from {n:,} events", lambda: build_interactions(data)
    )
    k = 100
    users = pl.Series(np.arange(args.eval_users)).cast(pl.String)
    recs = pl.DataFrame(
        {
            "user_id": users.gather(np.repeat(np.arange(args.eval_users), k)),
            "item_id": pl.Series(rng.integers(0, args.items, args.eval_users * k)).cast(pl.String),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), args.eval_users),
        }
    ).unique(["user_id", "item_id"], keep="first")
    targets = pl.DataFrame(
        {
            "user_id": users.gather(rng.integers(0, args.eval_users, args.eval_users * 3)),
            "item_id": pl.Series(rng.integers(0, args.items, args.eval_users * 3)).cast(pl.String),
        }
    )
    timed(
        results,
        f"metrics @10/20/100 for {args.eval_users:,} users × top-{k}",
        lambda: compute_metrics(recs, targets, (10, 20, 100), args.items),
    )
    lines = ["| step | seconds |", "|---|---:|"]
    lines += [f"| {label} | {seconds:.1f} |" for label, seconds in results]
    body = f"""## Data plane and evaluation at scale

Command: `.venv/bin/python benchmarks/scale.py --events {n} --write docs/benchmarks.md`
({datetime.now(UTC):%Y-%m-%d}; random events over {args.users:,} users and {args.items:,}
items; the interaction matrix has {inter.matrix.nnz:,} non-zeros).

{chr(10).join(lines)}
"""
    print(body)
    if args.write:
        write_section(args.write, "scale", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
