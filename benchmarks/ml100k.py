"""Baselines on real MovieLens 100K under protocols P1u and P1g (CONTRACT §4).

Imports ml-100k, splits it both ways, tunes every baseline on a validation cut of its train
(per-user cut for P1u, global temporal cut for P1g), refits on all of train and evaluates on
test through the same `marketrec` code the CLI uses. Writes the tables into
docs/benchmarks.md with `--write`.

    .venv/bin/python benchmarks/ml100k.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from docs_section import write_section
from marketrec.data.importers import import_movielens
from marketrec.data.split import split_global, split_per_user
from marketrec.evaluation.compare import ModelRun, comparison_markdown, run_models

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "ml-100k"
MODELS = ["popularity", "region-popularity", "itemknn", "ease", "als", "bpr"]


def region_table(runs: list[ModelRun]) -> str:
    regions = sorted(s for s in runs[0].report.slices if s.startswith("region:"))
    header = (
        "| model | "
        + " | ".join(f"{r} ({int(runs[0].report.slices[r]['users'])})" for r in regions)
        + " |"
    )
    lines = [header, "|" + "---|" * (len(regions) + 1)]
    for run in runs:
        values = " | ".join(f"{run.report.slices[r]['NDCG@10']:.4f}" for r in regions)
        lines.append(f"| {run.name} | {values} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args(argv)
    if not (args.src / "u.data").exists():
        print(f"ml-100k not found at {args.src}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    data = import_movielens(args.src)
    p1u = split_per_user(data)
    runs_u = run_models(p1u, args.models, tune_protocol="per-user")
    p1g = split_global(data, quantile=0.8)
    runs_g = run_models(p1g, args.models, tune_protocol="global")
    seconds = time.perf_counter() - started

    by_name_u = {r.name: r.report.slices for r in runs_u}
    by_name_g = {r.name: r.report.slices for r in runs_g}
    anchors = []
    if "ease" in by_name_u:
        ease = by_name_u["ease"]["all"]
        anchors.append(
            f"- P1u EASE: NDCG@10 **{ease['NDCG@10']:.4f}** (anchor ≈ 0.175), "
            f"Recall@100 **{ease['Recall@100']:.4f}** (anchor ≈ 0.53)."
        )
    if "popularity" in by_name_g:
        cold = by_name_g["popularity"]["cold users"]
        anchors.append(
            f"- P1g popularity, cold users: NDCG@10 **{cold['NDCG@10']:.4f}** (anchor ≈ 0.33)."
        )
    fallback = runs_g[0].fallback if runs_g else None
    body = f"""## MovieLens 100K baselines (protocols P1u and P1g)

Command: `.venv/bin/python benchmarks/ml100k.py --write docs/benchmarks.md`
({datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {seconds:.0f} s for everything below,
tuning included). Targets: test ratings ≥ 4 on items the user had not rated in train. Every
model is tuned on a validation cut of its train split (P1u: each user's last 20 % of train;
P1g: the last 20 % of train in time) by NDCG@10, then refitted on all of train. Cold users
(no train events) get per-region popularity from every model; its half-life and regional
prior are tuned on the cold users of the validation cut (P1g: {fallback}).

{chr(10).join(anchors)}

### P1u ({p1u.description})

{comparison_markdown(runs_u)}

### P1g ({p1g.description})

{comparison_markdown(runs_g)}

P1g, NDCG@10 per user region (region from the zip code):

{region_table(runs_g)}
"""
    print(body)
    if args.write:
        write_section(args.write, "ml100k", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
