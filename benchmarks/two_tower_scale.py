"""Two-tower training time on a ~1M-event synthetic marketplace (issue: under 15 minutes on
the 2-core machine).

    .venv/bin/python benchmarks/two_tower_scale.py --users 400000 --items 20000 \
        --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from docs_section import write_section
from marketrec.data.split import split_global
from marketrec.data.synthetic import SyntheticConfig, generate_marketplace
from marketrec.evaluation.offline import evaluate_model
from marketrec.models.registry import create


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--text-encoder", default="hashed")
    parser.add_argument("--max-minutes", type=float, default=14.0)
    parser.add_argument("--training-threads", type=int, default=1)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    if args.training_threads < 1:
        parser.error("--training-threads must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    data, _ = generate_marketplace(SyntheticConfig(users=args.users, items=args.items, seed=2))
    split = split_global(data, quantile=0.9)
    params = {
        "text_encoder": args.text_encoder,
        "max_minutes": args.max_minutes,
        "training_threads": args.training_threads,
    }
    started = time.perf_counter()
    model = create("two-tower", params).fit(split.train)
    seconds = time.perf_counter() - started
    report = model.scorer._meta["report"]
    slices = evaluate_model(model, split, ks=(10, 100)).slices
    patience = model.scorer.params.patience
    ended = (
        "early stopping"
        if report["epochs_run"] - report["best_epoch"] >= patience
        else f"the {args.max_minutes:g}-minute budget"
        if report["epochs_run"] < model.scorer.params.epochs
        else "the planned epochs"
    )
    body = f"""## Two-tower training at 1M events

Command: `.venv/bin/python benchmarks/two_tower_scale.py --users {args.users} --items \
{args.items} --text-encoder {args.text_encoder} --max-minutes {args.max_minutes} \
--training-threads {args.training_threads} --write docs/benchmarks.md` \
({datetime.now(UTC):%Y-%m-%d}, {args.training_threads} torch thread(s) while training).

| events in train | epochs run | best epoch | training ended by | train seconds | test NDCG@10 | \
test Recall@100 |
|---|---|---|---|---|---|---|
| {split.train.events.height:,} | {report["epochs_run"]} | {report["best_epoch"]} | {ended} | \
{seconds:.0f} | {slices["all"]["NDCG@10"]:.4f} | {slices["all"]["Recall@100"]:.4f} |

`max_minutes` stops training after the epoch that crosses the budget (the best epoch's
weights are kept).
"""
    print(body)
    if args.write:
        write_section(args.write, "two_tower_scale", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
