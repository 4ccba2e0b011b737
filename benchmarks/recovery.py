"""How long a restarted worker takes to be ready again: the log replayed from the newest
model it names (`LiveRecommender.recover`) against every record replayed through every
published version (`recover(from_newest_model=False)`, what a restart did before).

    .venv/bin/python benchmarks/recovery.py --write docs/benchmarks.md

The model is `service.py`'s (synthetic world, 100,000 items, two-tower + ranker), built into
`--workdir` on first use. The log (a fresh SQLite file) holds `--events` events of known
users on known items, in batches of 1,000, and `--versions` model records spread evenly
through it. Each names a version folder trained up to `--tail` events before its record:
hard-linked copies of the model with their `trained_log.json` (stand-ins with the same
weights: a real fine-tune at this size takes many minutes here, and what a restart does
with a version, load it and replay what came after its offset, does not depend on them).
Each recovery runs in a fresh process on one thread, the two taking turns `--rounds` times.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from docs_section import write_section

log = logging.getLogger("recovery-benchmark")

#: one recovery in a fresh process: seconds to open the model, to recover, and what it read
_RECOVER = """
import json, sys, time
import torch
torch.set_num_threads(1)
from marketrec.online.live import LiveRecommender
from marketrec.online.log import SQLiteEventLog
from marketrec.online.versions import model_version
from marketrec.pipeline.recommender import load_recommender
folder, log_file, shortcut = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
started = time.perf_counter()
live = LiveRecommender(load_recommender(folder), SQLiteEventLog(log_file),
                       version=model_version(folder))
opened = time.perf_counter()
report = live.recover(from_newest_model=shortcut)
done = time.perf_counter()
print(json.dumps({"open_s": opened - started, "recover_s": done - opened,
                  "records": report.records, "events": report.events, "noted": report.noted,
                  "version": live.version, "offset": live.offset}))
"""


def build_log(folder: Path, workdir: Path, events: int, versions: int, tail: int) -> Path:
    """A fresh log: `events` events with `versions` model records spread through it."""
    import service
    from marketrec.online.log import SQLiteEventLog
    from marketrec.online.records import parse_event_payloads
    from marketrec.online.versions import TRAINED_LOG, model_version

    users = service.read_ids(workdir, "users", 100_000)
    items = service.read_ids(workdir, "items", 100_000)
    runs = workdir / "recovery"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    event_log = SQLiteEventLog(runs / "events.sqlite")
    rng = random.Random(11)
    ts = float(json.loads((folder / "pipeline.json").read_text())["reference_ts"])
    kinds = ["view"] * 6 + ["click"] * 3 + ["purchase"]
    every = events // max(versions, 1)
    written = made = 0
    while written < events:
        body = []
        for _ in range(min(1_000, events - written)):
            ts += 0.05
            body.append(
                {
                    "user_id": rng.choice(users),
                    "item_id": rng.choice(items),
                    "event": rng.choice(kinds),
                    "ts": ts,
                }
            )
        payloads = parse_event_payloads(body, ts)
        offset = event_log.append([("event", p["user_id"], p) for p in payloads])
        written += len(body)
        if made < versions and written >= every * (made + 1):
            made += 1
            version = service.linked_copy(folder, runs / f"v{made}")
            (version / TRAINED_LOG).write_text(json.dumps({"offset": max(offset - tail, 0)}))
            event_log.append([("model", model_version(version), {"folder": str(version)})])
    event_log.close()
    return runs / "events.sqlite"


def recover_once(folder: Path, log_file: Path, shortcut: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _RECOVER, str(folder), str(log_file), "1" if shortcut else "0"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(workdir: Path, events: int, versions: int, tail: int, rounds: int) -> str:
    import service

    folder = service.build_model(workdir, 100_000)
    started = time.perf_counter()
    log_file = build_log(folder, workdir, events, versions, tail)
    log.info(
        "log of %d events and %d versions in %.0f s",
        events,
        versions,
        time.perf_counter() - started,
    )
    results: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(rounds):
        for shortcut in (True, False):
            results[shortcut].append(recover_once(folder, log_file, shortcut))
            log.info("%s: %s", "newest" if shortcut else "full", results[shortcut][-1])
    new, old = results[True], results[False]
    assert {r["version"] for r in new} == {r["version"] for r in old}, "different versions"
    assert {r["offset"] for r in new} == {r["offset"] for r in old}, "different offsets"

    def cell(rows: list[dict], key: str) -> str:
        return " / ".join(f"{r[key]:.1f}" for r in rows)

    return "\n".join(
        [
            "## Recovery: a restarted worker's time to ready",
            "",
            f"Command: `.venv/bin/python benchmarks/recovery.py --events {events} "
            f"--versions {versions} --tail {tail} --rounds {rounds} --write docs/benchmarks.md` "
            f"({datetime.now(UTC).date()}; {service.machine()}).",
            "",
            f"100,000-item model; a SQLite log of {events:,} events with {versions} model "
            f"records spread through it, each version trained up to {tail:,} events before "
            "its record (hard-linked copies of the model: the same weights, a real version's "
            "load and replay). Each recovery in a fresh process, one thread, the two taking "
            "turns; seconds of each round.",
            "",
            "| recovery | open the starting model s | recover s | records replayed into a model "
            "| records read only for users' recent events |",
            "|---|---|---|---|---|",
            f"| from the newest model (now) | {cell(new, 'open_s')} | {cell(new, 'recover_s')} "
            f"| {new[0]['records']:,} | {new[0]['noted']:,} |",
            f"| every record through every version (before) | {cell(old, 'open_s')} | "
            f"{cell(old, 'recover_s')} | {old[0]['records']:,} | {old[0]['noted']:,} |",
            "",
            f"Both end at offset {new[0]['offset']:,} serving {new[0]['version'].split('@')[0]}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/marketrec-bench-service"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--versions", type=int, default=8)
    parser.add_argument("--tail", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    if args.events < 1_000 or args.versions < 1 or args.tail < 0 or args.rounds < 1:
        parser.error("--events ≥ 1000, --versions ≥ 1, --tail ≥ 0 and --rounds ≥ 1 are needed")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    text = run(args.workdir, args.events, args.versions, args.tail, args.rounds)
    print(text)
    if args.write:
        write_section(args.write, "recovery", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
