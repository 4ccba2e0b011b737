"""ANN index speed and recall: faiss IVF-Flat against exact search on clustered vectors, one thread.

Builds the IVF index over `--items` normalised vectors drawn around 1,000 Gaussian cluster
centres (queries come from the same clusters), sweeps nprobe and keeps the smallest meeting
recall@10 ≥ 0.95, then measures single-query latency (p50/p99 over `--queries` queries), recall
@10 and @100 against `ExactIndex`, region-filtered and seen-item-excluding queries, upserts of
1,000 items and removal of 1,000 items (checking removed ids never come back). Exact
single-query latency at a few catalogue sizes gives the exact/faiss threshold of `build_index`.

    .venv/bin/python benchmarks/ann.py --items 1000000 --dim 64 --write docs/benchmarks.md
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy and faiss load their thread pools.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import gc
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from docs_section import write_section
from marketrec.retrieval.index import (
    EXACT_MAX_ITEMS,
    ExactIndex,
    FaissConfig,
    FaissIndex,
    auto_nlist,
    default_nprobe,
)

TARGET_RECALL = 0.95
TARGET_P99_MS = 0.5
TARGET_ADD_MS = 100.0


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float) -> np.ndarray:
    """n unit vectors, each a random centre plus Gaussian noise of `spread` per coordinate."""
    x = centres[rng.integers(0, len(centres), n)]
    x += rng.standard_normal(x.shape, dtype=np.float32) * spread
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def latencies(fn: Callable[[int], object], n: int) -> np.ndarray:
    """Wall and CPU milliseconds (2 × n) of fn(i) for i < n, after warm-up, collector off.

    CPU time is reported beside wall time: on a shared machine the wall p99 includes time the
    process waited for a CPU, which no index can help.
    """
    for i in range(min(n, 20)):
        fn(i)
    out = np.empty((2, n))
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            started, started_cpu = time.perf_counter(), time.thread_time()
            fn(i)
            out[:, i] = time.perf_counter() - started, time.thread_time() - started_cpu
    finally:
        gc.enable()
    return out * 1e3


def recall(found: list[list[str]], truth: list[list[str]], k: int) -> float:
    return float(
        np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)])
    )


def one_by_one(index, queries: np.ndarray, k: int, **kw) -> tuple[list[list[str]], np.ndarray]:
    found: list[list[str]] = []

    def run(i: int) -> None:
        found.append(index.search(queries[i : i + 1], k, **kw)[0][0])

    ms = latencies(run, len(queries))
    return found[-len(queries) :], ms


def machine() -> str:
    """CPU model, core count and load average: latency tails depend on all three."""
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f} at start"


def pct(ms: np.ndarray) -> str:
    """'p50 | p99 | CPU p99' of `latencies` output."""
    p50, p99 = np.percentile(ms[0], [50, 99])
    return f"{p50:.3f} | {p99:.3f} | {np.percentile(ms[1], 99):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.15, help="noise std per coordinate")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nlist", type=int, help="default: auto_nlist(items)")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[4, 8, 16, 24, 32, 48, 64])
    parser.add_argument(
        "--exact-sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args(argv)
    args.machine = machine()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        body = run(args)
    print(body)
    if args.write:
        write_section(args.write, "ann", body)
    return 0


def run(args: argparse.Namespace) -> str:
    rng = np.random.default_rng(args.seed)
    n, dim = args.items, args.dim
    centres = rng.standard_normal((args.clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(rng, n, centres, args.spread)
    ids = np.char.add("i", np.arange(n).astype(str)).tolist()
    # 60% of items sell everywhere, the rest in one of 8 regions (5% each).
    home = rng.integers(0, 20, n)
    regions = [None if h >= 8 else [f"r{h}"] for h in home]
    queries = clustered(rng, args.queries, centres, args.spread)
    seen = [[ids[j] for j in rng.choice(n, 50, replace=False)] for _ in range(args.queries)]
    steps: list[tuple[str, float]] = []

    def timed(label: str, fn: Callable[[], object]) -> object:
        started = time.perf_counter()
        value = fn()
        steps.append((label, time.perf_counter() - started))
        print(f"{label}: {steps[-1][1]:.2f} s", flush=True)
        return value

    # Exact: ground truth, and single-query latency by catalogue size (the auto threshold).
    exact = ExactIndex(dim)
    timed(f"exact index: add {n:,}", lambda: exact.add(ids, vectors, regions))
    truth = timed("exact ground truth (top-100, all queries)", lambda: exact.search(queries, 100))
    truth_r0 = exact.search(queries, 10, region="r0")[0]
    truth_seen = exact.search(queries, 10, exclude=seen)[0]
    exact_rows = []
    for size in sorted({*args.exact_sizes, n}):
        if size > n:
            continue
        sub = exact if size == n else ExactIndex(dim)
        if size < n:
            sub.add(ids[:size], vectors[:size])
        m = min(args.queries, 200 if size >= 500_000 else args.queries)
        _, ms = one_by_one(sub, queries[:m], 10)
        exact_rows.append(f"| exact | {size:,} | {pct(ms)} | 1.000 |")

    # IVF build.
    nlist = args.nlist or auto_nlist(n)
    ivf = FaissIndex(dim, FaissConfig(nlist=nlist))
    timed(f"faiss IVF: train k-means ({nlist} lists)", lambda: ivf.train(vectors))
    timed(f"faiss IVF: add {n:,}", lambda: ivf.add(ids, vectors, regions))

    # nprobe sweep: smallest meeting the recall target.
    sweep, chosen = [], None
    truth10 = [t[:10] for t in truth[0]]
    for nprobe in args.nprobes:
        ivf.config = replace(ivf.config, nprobe=nprobe)
        found, ms = one_by_one(ivf, queries, 10)
        r10 = recall(found, truth10, 10)
        sweep.append(f"| IVF nprobe={nprobe} | {n:,} | {pct(ms)} | {r10:.3f} |")
        print(sweep[-1], flush=True)
        if chosen is None and r10 >= TARGET_RECALL:
            chosen = nprobe
    chosen = chosen or args.nprobes[-1]
    ivf.config = replace(ivf.config, nprobe=chosen)

    found10, ms10 = one_by_one(ivf, queries, 10)
    found100, ms100 = one_by_one(ivf, queries, 100)
    found_r0, ms_r0 = one_by_one(ivf, queries, 10, region="r0")
    found_seen: list[list[str]] = []

    def run_seen(i: int) -> None:
        found_seen.append(ivf.search(queries[i : i + 1], 10, exclude=[seen[i]])[0][0])

    ms_seen = latencies(run_seen, args.queries)
    found_seen = found_seen[-args.queries :]
    leaks = sum(len(set(f) & set(s)) for f, s in zip(found_seen, seen, strict=True))
    short = sum(len(f) < 10 for f in found_seen)

    # Region filter alternative: a prebuilt IDSelectorBatch (a hash set of allowed labels).
    allowed = np.flatnonzero(
        np.unpackbits(ivf._cat.allowed("r0"), bitorder="little")[: ivf._cat.size]
    )
    batch_sel = faiss.IDSelectorBatch(len(allowed), faiss.swig_ptr(allowed))
    params = faiss.SearchParametersIVF(nprobe=chosen, sel=batch_sel)
    ms_batch = latencies(
        lambda i: ivf._ivf.search(queries[i : i + 1], 10, params=params), args.queries
    )

    # Upserts and removals.
    fresh = clustered(rng, 1000, centres, args.spread)
    new_ids = [f"new{i}" for i in range(1000)]
    started = time.perf_counter()
    ivf.add(new_ids, fresh)
    add_ms = (time.perf_counter() - started) * 1e3
    started = time.perf_counter()
    ivf.add(ids[:1000], clustered(rng, 1000, centres, args.spread))
    replace_ms = (time.perf_counter() - started) * 1e3
    found_new = ivf.search(fresh[:100], 1)[0]
    new_found = sum(f[:1] == [i] for f, i in zip(found_new, new_ids[:100], strict=True))
    victims = list(dict.fromkeys(f[0] for f in found10))[:1000]
    victims += [i for i in ids[2000:] if i not in set(victims)][: 1000 - len(victims)]
    started = time.perf_counter()
    removed = ivf.remove(victims)
    remove_ms = (time.perf_counter() - started) * 1e3
    after = ivf.search(queries, 100)[0]
    comebacks = sum(len(set(f) & set(victims)) for f in after)

    p99 = float(np.percentile(ms10[0], 99))
    r10, r100 = recall(found10, truth10, 10), recall(found100, truth[0], 100)
    verdict = "meets" if (p99 < TARGET_P99_MS and r10 >= TARGET_RECALL) else "misses"
    build = "\n".join(f"| {label} | {seconds:.2f} |" for label, seconds in steps)
    return f"""## ANN index

Command: `.venv/bin/python benchmarks/ann.py --items {n} --dim {dim} --write docs/benchmarks.md`
({datetime.now(UTC):%Y-%m-%d}; {args.machine}; one thread:
`OMP_NUM_THREADS=1`, `faiss.omp_set_num_threads(1)`, threadpoolctl; faiss {faiss.__version__},
NumPy {np.__version__}). {n:,} unit vectors of dim {dim} around {args.clusters:,} Gaussian
centres (noise std {args.spread} per coordinate); {args.queries:,} queries from the same
clusters, searched one at a time; recall against `ExactIndex`. 40% of items sell in one of 8
regions (5% each), the rest everywhere.

Single-query latency (ms) and recall@10, nprobe sweep (nlist {nlist}):

| index | items | p50 | p99 | CPU p99 | recall@10 |
|---|---:|---:|---:|---:|---:|
{chr(10).join(exact_rows)}
{chr(10).join(sweep)}

Chosen nprobe **{chosen}** (smallest with recall@10 ≥ {TARGET_RECALL}); it {verdict} the target
p99 < {TARGET_P99_MS} ms at recall@10 ≥ {TARGET_RECALL}:

| query (nprobe {chosen}) | p50 ms | p99 ms | CPU p99 ms | recall |
|---|---:|---:|---:|---:|
| top-10 | {pct(ms10)} | @10 {r10:.3f} |
| top-100 | {pct(ms100)} | @100 {r100:.3f} |
| top-10, region r0 (65% of items), `IDSelectorBitmap` | {pct(ms_r0)} | @10 \
{recall(found_r0, truth_r0, 10):.3f} |
| top-10, region r0, prebuilt `IDSelectorBatch` (alternative) | {pct(ms_batch)} | |
| top-10 excluding 50 seen ids (over-fetch) | {pct(ms_seen)} | @10 \
{recall(found_seen, truth_seen, 10):.3f} |

Seen ids returned: {leaks}; queries with fewer than 10 results: {short}.

| build step | seconds |
|---|---:|
{build}

| update | ms | check |
|---|---:|---|
| add 1,000 new items | {add_ms:.1f} | target < {TARGET_ADD_MS:.0f} ms; {new_found}/100 found as \
their own top-1 |
| replace 1,000 existing items | {replace_ms:.1f} | |
| remove 1,000 items (top-1 results of the queries) | {remove_ms:.1f} | {removed} removed; \
{comebacks} came back in {args.queries:,} top-100 searches right after |

`build_index(kind="auto")` uses the exact index below {EXACT_MAX_ITEMS:,} items: perfect recall
and no training, and the exact rows show its p99 crossing the {TARGET_P99_MS} ms target near
there (the threshold follows the slower of the machines measured). The default nprobe is
{default_nprobe(nlist)} at nlist {nlist}, a margin over the smallest that meets the target here.
"""


if __name__ == "__main__":
    raise SystemExit(main())
