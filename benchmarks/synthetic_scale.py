"""Scale and calibration check of the synthetic marketplace generator.

Generates a ~1M-event world (400k users, 20k items, 30 days by default), times it, and prints
a markdown snippet with the numbers to compare against RetailRocket's public log
(add_to_cart/view ≈ 0.026, purchase/view ≈ 0.0084, ≈ 1.9 views per visitor).

    python benchmarks/synthetic_scale.py --users 400000 --items 20000 --days 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from docs_section import write_section
from marketrec.data.synthetic import SyntheticConfig, generate_marketplace

_RETAILROCKET = {
    "views per visitor": 2_664_312 / 1_407_580,
    "add_to_cart / view": 69_332 / 2_664_312,
    "purchase / view": 22_457 / 2_664_312,
    "purchase / add_to_cart": 22_457 / 69_332,
}


def main(argv: list[str] | None = None) -> None:
    """Parse sizes, generate (and optionally save) the world, print the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--save", action="store_true", help="also time Dataset.save into a temporary folder"
    )
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args(argv)

    config = SyntheticConfig(users=args.users, items=args.items, days=args.days, seed=args.seed)
    began = time.perf_counter()
    dataset, _ = generate_marketplace(config)
    generate_s = time.perf_counter() - began
    save_s = None
    if args.save:
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            dataset.save(Path(tmp) / "world")
            save_s = time.perf_counter() - began

    events = dataset.events
    counts = dict(events.group_by("event").len().iter_rows())
    views = counts.get("view", 0)
    visitors = events["user_id"].n_unique()
    sessions = events.group_by("user_id").agg(pl.col("session_id").n_unique().alias("n"))["n"]
    measured = {
        "views per visitor": views / max(visitors, 1),
        "add_to_cart / view": counts.get("add_to_cart", 0) / max(views, 1),
        "purchase / view": counts.get("purchase", 0) / max(views, 1),
        "purchase / add_to_cart": counts.get("purchase", 0) / max(counts.get("add_to_cart", 1), 1),
    }

    lines = [
        f"### Synthetic marketplace: {args.users:,} users, {args.items:,} items, "
        f"{args.days} days, seed {args.seed}\n",
        "| event | count |",
        "|---|---:|",
        *(
            f"| {name} | {counts.get(name, 0):,} |"
            for name in ("search", "view", "click", "add_to_cart", "purchase")
        ),
        f"| **total** | **{events.height:,}** |\n",
        "| metric | synthetic | RetailRocket |",
        "|---|---:|---:|",
        *(
            f"| {name} | {value:.4f} | {_RETAILROCKET[name]:.4f} |"
            for name, value in measured.items()
        ),
        f"| click / view | {counts.get('click', 0) / max(views, 1):.4f} | – |",
        f"| visitors | {visitors:,} | 1,407,580 |",
        f"| events per user | {events.height / args.users:.2f} | – |",
        f"| single-session visitors | {(sessions == 1).mean():.1%} | – |",
        f"| sessions per visitor (mean / p99 / max) | {sessions.mean():.2f} / "
        f"{sessions.quantile(0.99):.0f} / {sessions.max()} | – |",
        f"| generation seconds | {generate_s:.1f} | – |",
    ]
    if save_s is not None:
        lines.append(f"| save seconds (Parquet) | {save_s:.1f} | – |")
    body = "\n".join(lines)
    print(body)
    if args.write:
        command = (
            f"`.venv/bin/python benchmarks/synthetic_scale.py --users {args.users} "
            f"--items {args.items} --days {args.days} --save --write docs/benchmarks.md`"
        )
        write_section(
            args.write,
            "synthetic",
            f"## Synthetic marketplace: calibration and speed\n\nCommand: {command}\n\n{body}",
        )


if __name__ == "__main__":
    main()
