"""Continuous learning on the synthetic marketplace: is a fine-tuned version as good as a full
retrain, at a fraction of its cost, and better than serving the stale model?

    .venv/bin/python benchmarks/finetune.py --write docs/benchmarks.md

The world (drifting tastes, new users and items arriving) is cut in time: the first 80 %
of events train the served two-stage model, the next 10 % arrive through the event log
(the micro-batch), the last 10 % are the test. Three versions then serve the test users
through `LiveRecommender`, the serving path, each with the log applied after the offset it
was trained up to, so every one sees the micro-batch at least as live history:

- stale: the served model, the micro-batch only replayed as live history;
- fine-tuned: `online.finetune.fine_tune` (towers from the served weights, 1 pass over
  the micro-batch at 0.1 × the training learning rate, and at 1 × for comparison; ranker
  from the served ranker on the lists the stale model served);
- retrained: `online.retrain.retrain` (both stages from scratch on everything).

Metrics over the test period's interest in items new to each user (CONTRACT §4 targets):
HR@10, NDCG@10, Recall@100.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import torch

from docs_section import write_section
from marketrec.data.split import split_global
from marketrec.data.synthetic import SyntheticConfig, generate_marketplace
from marketrec.evaluation.metrics import compute_metrics
from marketrec.evaluation.offline import build_targets
from marketrec.models.registry import create
from marketrec.online.finetune import fine_tune
from marketrec.online.live import LiveRecommender
from marketrec.online.log import SQLiteEventLog
from marketrec.online.records import parse_event_payloads
from marketrec.online.retrain import retrain
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.ranking_stage import RankingParams
from marketrec.pipeline.recommender import Recommender
from streaming import _event_objects

log = logging.getLogger("finetune-benchmark")


def payloads(events: pl.DataFrame) -> list[tuple[str, str, dict]]:
    """Event rows as the log's event records, through the conversion `POST /v1/events`
    applies (CONTRACT §5 objects, validated)."""
    parsed = parse_event_payloads(_event_objects(events), now=time.time())
    return [("event", p["user_id"], p) for p in parsed]


def evaluate(
    folder: Path, log_file: Path, users: list[str], targets: pl.DataFrame, catalogue: int
) -> tuple[dict[str, float], float]:
    live = LiveRecommender.open(folder, f"sqlite:///{log_file}")  # replays after its offset
    started = time.perf_counter()
    rows = []
    for user in users:
        for rank, item in enumerate(live.recommend(user, 100)["items"], 1):
            rows.append((user, item["item_id"], rank))
    seconds = time.perf_counter() - started
    live.close()
    recs = pl.DataFrame(rows, schema=["user_id", "item_id", "rank"], orient="row")
    metrics = compute_metrics(recs, targets, (10, 100), catalogue)
    return metrics, 1000 * seconds / max(len(users), 1)


def run(users: int, items: int, days: int, text_encoder: str, max_users: int) -> str:
    torch.set_num_threads(1)
    data, _ = generate_marketplace(SyntheticConfig(users=users, items=items, days=days, seed=1))
    outer = split_global(data, quantile=0.9)
    head, test = outer.train, outer.test
    inner = split_global(head, quantile=8 / 9)
    train, window = inner.train, inner.test
    work = Path(tempfile.mkdtemp(prefix="marketrec-finetune-"))
    started = time.perf_counter()
    model = Recommender(
        create("two-tower", {"text_encoder": text_encoder}),
        PipelineConfig(),
        RankingParams(window_mode="global"),
    )
    model.fit(train)
    base_s = time.perf_counter() - started
    served = model.save(work / "served")
    log_file = work / "events.sqlite"
    event_log = SQLiteEventLog(log_file)
    event_log.append(payloads(window.events))
    log.info("base fit %.0f s; %s events in the log", base_s, f"{window.events.height:,}")

    tuned = fine_tune(served, train, event_log, work / "fine-tuned")
    full_rate = fine_tune(served, train, event_log, work / "full-rate", learning_rate_scale=1.0)
    assert tuned is not None and full_rate is not None
    started = time.perf_counter()
    retrained, _ = retrain(served, train, event_log, work / "retrained")
    retrain_s = time.perf_counter() - started
    event_log.close()

    targets = build_targets(head, test)
    evaluated = targets.get_column("user_id").unique().sort().to_list()[:max_users]
    targets = targets.filter(pl.col("user_id").is_in(evaluated))
    rows = []
    for name, folder, seconds in (
        ("stale (served model + the micro-batch as live history)", served, 0.0),
        (
            "fine-tuned on the micro-batch (1 pass, 0.1 × learning rate)",
            tuned.folder,
            tuned.seconds,
        ),
        ("fine-tuned, 1 × learning rate", full_rate.folder, full_rate.seconds),
        ("retrained from scratch on everything", retrained, retrain_s),
    ):
        metrics, per_user_ms = evaluate(folder, log_file, evaluated, targets, data.items.height)
        rows.append(
            f"| {name} | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} | "
            f"{metrics['Recall@100']:.4f} | {seconds:.0f} | {per_user_ms:.1f} |"
        )
        log.info("%s", rows[-1])
    return (
        f"Synthetic marketplace ({users:,} users, {items:,} items, {days} days, seed 1; "
        f"two-stage: two-tower with the {text_encoder} text encoder + ranker, global ranker "
        f"window). Served model trained on {train.events.height:,} events (fit "
        f"{base_s:.0f} s); micro-batch: the next {window.events.height:,} events through the "
        f"event log; test: the last {test.events.height:,} events, {len(evaluated):,} users "
        "with interest in items new to them (train + micro-batch), k = 100 from "
        "`LiveRecommender.recommend`.\n\n"
        "| version | HR@10 | NDCG@10 | Recall@100 | training s | serve ms / user |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--text-encoder", default="hashed")
    parser.add_argument("--max-users", type=int, default=3000)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    started = time.perf_counter()
    part = run(args.users, args.items, args.days, args.text_encoder, args.max_users)
    body = (
        "## Continuous learning (fine-tuning on the event log)\n\n"
        f"Command: `.venv/bin/python benchmarks/finetune.py --write docs/benchmarks.md` "
        f"({datetime.now(UTC):%Y-%m-%d}, {time.perf_counter() - started:.0f} s in all; "
        f"{os.cpu_count()} cores, one torch thread).\n\n" + part
    )
    print(body, flush=True)
    if args.write:
        write_section(args.write, "finetune", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
