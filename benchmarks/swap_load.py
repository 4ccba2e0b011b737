"""Serving latency while new model versions are swapped in: what the continuous-learning
loop costs the requests it does not fail.

    .venv/bin/python benchmarks/swap_load.py --write docs/benchmarks.md

`marketrec serve --workers 2` on a fresh SQLite log serves `service.py`'s 100,000-item
two-stage model under its open-loop generator at `--rate` requests/s for `--seconds` s, while
a `model` record naming a new version is appended every `--every` s (as the fine-tuner's
publish does). Each worker then loads the version in a background thread of the process that
serves, catches it up with the log, warms it up and swaps it in. The versions are hard-linked
copies of the model (the same weights; what a worker does with a version does not depend on
them), either carrying the networks' ONNX exports (`onnx/`, what `marketrec train`, `retrain`
and the fine-tuner write now) or without them (every worker exports its networks on every
swap, as all versions did before), the two taking turns `--rounds` times. Latency is reported
for the requests scheduled within `--window` s after a publish and for the others.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

import service
from docs_section import write_section

log = logging.getLogger("swap-benchmark")


def make_versions(folder: Path, workdir: Path, count: int, exports: bool, run: str) -> list[Path]:
    """`count` hard-linked copies of the model folder, with or without its ONNX exports."""
    ignore = None if exports else shutil.ignore_patterns("onnx")
    kind = "onnx" if exports else "plain"
    return [
        service.linked_copy(folder, workdir / "swap-versions" / f"{run}-{kind}-v{i}", ignore)
        for i in range(1, count + 1)
    ]


def publisher(
    log_file: Path, versions: list[Path], every: float, started: float, published: list[float]
) -> threading.Thread:
    """Appends one model record per version, `every` s apart from `started`."""
    from marketrec.online.log import SQLiteEventLog
    from marketrec.online.versions import model_version

    def publish_all() -> None:
        event_log = SQLiteEventLog(log_file)
        for i, version in enumerate(versions, start=1):
            time.sleep(max(0.0, started + i * every - time.monotonic()))
            event_log.append([("model", model_version(version), {"folder": str(version)})])
            published.append(time.monotonic())
        event_log.close()

    return threading.Thread(target=publish_all, daemon=True)


def one_run(
    model: Path, workdir: Path, users: list[str], args: argparse.Namespace, exports: bool, seed: int
) -> dict:
    versions = make_versions(
        model, workdir, int(args.seconds // args.every) - 1, exports, str(seed)
    )
    store = service.new_store("sqlite", workdir)
    log_file = Path(store.args[1].removeprefix("sqlite:///"))
    with service.serving(model, store, workdir, workers=2) as (server,):
        asyncio.run(service.open_loop(server.url, 20, 5, users, seed, args.timeout))  # warm-up
        published: list[float] = []
        started = time.monotonic()
        thread = publisher(log_file, versions, args.every, started, published)
        thread.start()
        step = asyncio.run(
            service.open_loop(server.url, args.rate, args.seconds, users, seed + 1, args.timeout)
        )
        thread.join()
        # every worker ends on the last version (fresh connections reach either worker)
        from marketrec.online.versions import model_version

        last = model_version(versions[-1])
        deadline = time.monotonic() + 120
        served: set[str] = set()
        while time.monotonic() < deadline:
            served = set()
            for i in range(8):
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    body = client.get("/v1/recommendations", params={"user_id": users[i], "k": 3})
                    served.add(body.json()["model_version"])
            if served == {last}:
                break
            time.sleep(0.5)
    latencies = np.asarray(step.latencies_ms)
    sent = np.asarray(step.scheduled_at)
    near = np.zeros(len(sent), dtype=bool)
    for at in published:
        near |= (sent >= at) & (sent < at + args.window)
    return {
        "exports": exports,
        "all": service.percentiles(latencies),
        "near": service.percentiles(latencies[near]),
        "far": service.percentiles(latencies[~near]),
        "near_n": int(near.sum()),
        "errors": sum(step.errors.values()),
        "swaps": len(published),
        "ended_on_last": served == {last},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/marketrec-bench-service"))
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=12.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    if not (args.rate > 0 and args.every > 0 and args.window > 0 and args.rounds >= 1):
        parser.error("--rate, --every and --window must be positive, --rounds at least 1")
    if args.seconds < 2 * args.every:
        parser.error("--seconds must hold at least two --every periods")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started = time.perf_counter()
    model = service.build_model(args.workdir, 100_000)
    if not (model / "onnx").is_dir():
        raise SystemExit(f"{model} carries no ONNX exports: build it again (delete the folder)")
    users = service.read_ids(args.workdir, "users", 100_000)
    results = []
    for round_ in range(args.rounds):
        for exports in (True, False):
            result = one_run(model, args.workdir, users, args, exports, 100 * round_ + 7)
            log.info("%s", result)
            results.append(result)
    shutil.rmtree(args.workdir / "swap-versions", ignore_errors=True)

    def row(r: dict) -> str:
        a, n, f = r["all"], r["near"], r["far"]
        kind = "with exports (now)" if r["exports"] else "without (before)"
        return (
            f"| {kind} | {r['swaps']} | {service.ms(n['p50'])} / {service.ms(n['p99'])} / "
            f"{service.ms(n['max'])} ({r['near_n']:,}) | {service.ms(f['p50'])} / "
            f"{service.ms(f['p99'])} | {service.ms(a['p50'])} / {service.ms(a['p99'])} | "
            f"{r['errors']} | {'yes' if r['ended_on_last'] else 'no'} |"
        )

    text = "\n".join(
        [
            "## Serving while versions are swapped in",
            "",
            f"Command: `.venv/bin/python benchmarks/swap_load.py --rate {args.rate:g} "
            f"--seconds {args.seconds:g} --every {args.every:g} --window {args.window:g} "
            f"--rounds {args.rounds} --write docs/benchmarks.md` ({datetime.now(UTC).date()}, "
            f"{time.perf_counter() - started:.0f} s in all; {service.machine()}).",
            "",
            f"`marketrec serve --workers 2`, SQLite, the 100,000-item two-stage model at "
            f"{args.rate:g} requests/s for {args.seconds:g} s (`service.py`'s open-loop "
            f"generator, 10 % new users) while a new version is published every "
            f"{args.every:g} s; each worker loads it in the background and swaps it in. "
            f"Versions: hard-linked copies of the model with or without the networks' ONNX "
            f"exports, taking turns. `after a publish`: requests scheduled within "
            f"{args.window:g} s after one (their count in brackets); `ended on the last`: "
            "every worker answered with the last version afterwards.",
            "",
            "| versions | swaps | after a publish p50 / p99 / max ms | other times p50 / p99 "
            "ms | all p50 / p99 ms | errors | ended on the last |",
            "|---|---|---|---|---|---|---|",
            *[row(r) for r in results],
        ]
    )
    print(text)
    if args.write:
        write_section(args.write, "swap_load", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
