"""Baselines on Amazon Toys_and_Games (S3-Rec sequences) under protocol P3 (CONTRACT §4).

Imports the S3-Rec item sequences, holds out each user's last item (leave-one-out), tunes every
baseline on the leave-one-out cut of train (each user's last train item) by NDCG@10, refits on
all of train and ranks the whole catalogue for every user through the same `marketrec` code the
CLI uses. Every interaction is a target (implicit data). Writes the table into
docs/benchmarks.md with `--write`.

    .venv/bin/python benchmarks/amazon_toys.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from docs_section import write_section
from marketrec.data.importers import import_sequences
from marketrec.data.split import split_leave_one_out
from marketrec.evaluation.compare import ModelRun, run_models
from marketrec.evaluation.offline import TargetConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "amazon-toys-s3rec"
MODELS = ["popularity", "itemknn", "ease", "als", "bpr"]
KS = (10, 100)

#: Grids that differ from the registry's, to keep the run under ~15 minutes on 2 cores.
#: Popularity: time decay is meaningless on the synthetic timestamps of a sequence file.
#: EASE: one fit + full ranking on 11,924 items takes ~50 s, so 4 values instead of 7.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "popularity": {"half_life_days": [None]},
    "ease": {"l2": [200.0, 500.0, 1000.0, 2000.0]},
}

#: Published anchors (tuned baselines, Recall@100 under P3) for orientation.
ANCHORS = {"als": 0.204, "ease": 0.189}


def results_table(runs: list[ModelRun]) -> str:
    users = int(runs[0].report.slices["all"]["users"]) if runs else 0
    lines = [
        "| model | params | HR@10 | NDCG@10 | Recall@100 (= HR@100) | users | tune s | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        a = run.report.slices["all"]
        params = ", ".join(f"{k}={v}" for k, v in sorted(run.params.items())) or "defaults"
        lines.append(
            f"| {run.name} | {params} | {a['HR@10']:.4f} | {a['NDCG@10']:.4f} | "
            f"{a['Recall@100']:.4f} | {users:,} | {run.tune_seconds:.0f} | "
            f"{run.fit_seconds:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args(argv)
    if not args.src.exists():
        print(f"amazon-toys-s3rec not found at {args.src}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    data = import_sequences(args.src)
    counts = data.summary()
    p3 = split_leave_one_out(data)
    targets = TargetConfig(all_events=True)
    runs = run_models(
        p3,
        args.models,
        tune_protocol="leave-one-out",
        ks=KS,
        targets=targets,
        grids=GRIDS,
        on_step=lambda step: logging.info("%s", step),
    )
    seconds = time.perf_counter() - started

    by_name = {r.name: r.report.slices["all"] for r in runs}
    anchors = [
        f"- {name.upper()}: Recall@100 "
        f"**{by_name[name]['Recall@100']:.4f}** (published tuned baseline ≈ {value})."
        for name, value in ANCHORS.items()
        if name in by_name
    ]
    grids = "; ".join(f"{name} {grid}" for name, grid in GRIDS.items() if name in args.models)
    body = f"""## Amazon Toys (protocol P3)

Command: `.venv/bin/python benchmarks/amazon_toys.py --write docs/benchmarks.md`
({datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {seconds:.0f} s for everything below,
tuning included). Data: S3-Rec's `Toys_and_Games.txt` (Amazon 5-core item sequences,
{counts["users_with_events"]:,} users, {counts["items_with_events"]:,} items,
{counts["events"]:,} interactions; no timestamps, so `ts` is the position in each user's
sequence). Split: {p3.description}. Every model ranks all items for every user (items in the
user's train sequence excluded); every held-out interaction is a target, so Recall@100 equals
HR@100. Each model is tuned on the leave-one-out cut of its train split (each user's last train
item) by NDCG@10, then refitted on all of train. Registry grids except: {grids}.

{chr(10).join(anchors)}

{results_table(runs)}
"""
    print(body)
    if args.write:
        write_section(args.write, "amazon_toys", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
