"""What a new model version costs a worker and the fine-tuner at 100k items: loading a folder
that carries its serving index against building that index, and a fine-tuned version's index
taken from the previous one (same centroids, rows placed afresh) against a new build.

    .venv/bin/python benchmarks/versions.py --write docs/benchmarks.md

The model is `service.py`'s (synthetic world, 100,000 items, two-tower + ranker), built into
`--workdir` on first use. A fine-tune moves item vectors a little; here every index row is
moved by Gaussian noise of `--noise` times its mean absolute entry (a stand-in: a real
fine-tune at this size takes many minutes here), and `--share` of the rows in the partial case.
Recall@100 of each index is measured against the exact top 100 of the moved vectors, for the
query vectors of `--users` known users (nprobe as served). One thread throughout.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import polars as pl

from docs_section import write_section

log = logging.getLogger("versions-benchmark")


def best_of(runs: int, work: Callable[[], object]) -> tuple[float, object]:
    """Fastest of `runs` timings (this shared machine's noise only ever adds time)."""
    best, out = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        out = work()
        best = min(best, time.perf_counter() - started)
    return best, out


def recall(index, queries: np.ndarray, matrix: np.ndarray, k: int = 100) -> float:
    rows, _ = index.search(queries, k)
    exact = np.argpartition(-(queries @ matrix.T), k, axis=1)[:, :k]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(rows, exact, strict=True)]))


def run(workdir: Path, users: int, noise: float, share: float) -> str:
    import service
    from marketrec.core import onnx_forward
    from marketrec.pipeline.recommender import Recommender, load_recommender
    from marketrec.retrieval.index import ColumnIndex

    folder = service.build_model(workdir, 100_000)
    model = load_recommender(folder)
    assert isinstance(model, Recommender)
    with_index = workdir / "model-100000-with-index"
    model.warm_up()  # makes the networks' ONNX exports, which the folder then carries
    model.save(with_index)  # a folder written now carries its index (older ones did not)
    load_s, loaded = best_of(3, lambda: load_recommender(with_index))
    warm_s = {True: float("inf"), False: float("inf")}
    for _ in range(3):  # taking turns: with the folder's exports, and making them afresh
        for saved in (True, False):
            fresh = load_recommender(with_index)
            assert isinstance(fresh, Recommender)
            if not saved:
                for network in fresh.networks().values():
                    onnx_forward._saved.pop(network, None)
            started = time.perf_counter()
            fresh.warm_up()
            warm_s[saved] = min(warm_s[saved], time.perf_counter() - started)
    scorer = loaded.retrieval.scorer  # type: ignore[union-attr]
    index = scorer.serving_index()
    assert index is not None
    build_s, _ = best_of(3, lambda: ColumnIndex(scorer.index_vectors(), index.config))

    rng = np.random.default_rng(0)
    matrix = scorer.index_vectors()
    moved = matrix + rng.standard_normal(matrix.shape).astype(np.float32) * (
        noise * float(np.abs(matrix).mean())
    )
    known = (workdir / "users-100000.txt").read_text().split()  # written by build_model
    picked = random.Random(1).sample(known, min(users, len(known)))
    rows = loaded.retrieval.user_rows(pl.Series("user_id", picked))
    regions = loaded.retrieval.regions_of(rows, None)
    queries = scorer.query_vectors(rows, regions)
    # user queries sit where the catalogue is dense; random directions probe its sparse parts
    directions = rng.standard_normal((users, matrix.shape[1] - 1)).astype(np.float32)
    hard = np.hstack([directions, np.ones((users, 1), dtype=np.float32)])
    fresh_s, fresh = best_of(3, lambda: ColumnIndex(moved, index.config))
    all_s, updated_all = best_of(3, lambda: index.updated(moved, np.full(len(moved), -1)))
    partial = matrix.copy()
    changed = rng.random(len(matrix)) < share
    partial[changed] = moved[changed]
    kept = np.where(changed, -1, np.arange(len(matrix)))
    part_s, updated_part = best_of(3, lambda: index.updated(partial, kept))
    rows_out = [
        ("new build (k-means, then every row assigned)", fresh_s, fresh, moved),
        ("previous index, every row placed afresh", all_s, updated_all, moved),
        (
            f"previous index, {share:.0%} of the rows moved and placed afresh",
            part_s,
            updated_part,
            partial,
        ),
    ]
    table = "\n".join(
        f"| {name} | {s:.2f} | {recall(ix, queries, m):.4f} | {recall(ix, hard, m):.4f} |"
        for name, s, ix, m in rows_out
    )
    return (
        f"Model: `service.py`'s 100,000-item two-stage model ({index.nlist} inverted lists, "
        f"nprobe as served). Fastest of three runs each, one thread.\n\n"
        f"| loading a version | seconds |\n|---|---|\n"
        f"| the folder, its index read from it | {load_s:.2f} |\n"
        f"| building that index instead (what every load cost before) | {build_s:.2f} |\n"
        f"| its first requests (`warm_up`), the networks' ONNX exports read from it | "
        f"{warm_s[True]:.2f} |\n"
        f"| the same, exporting the networks instead (what every load cost before) | "
        f"{warm_s[False]:.2f} |\n\n"
        f"Index of a fine-tuned version (vectors moved by noise of {noise:g} × their mean "
        f"absolute entry); recall@100 against the exact top 100, for {users} known users' "
        f"queries and for {users} random directions:\n\n"
        f"| index | seconds | recall@100, users | recall@100, random |\n|---|---|---|---|\n"
        f"{table}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/marketrec-bench-service"))
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    if args.users < 1 or not args.noise > 0 or not 0 < args.share <= 1:
        parser.error("--users must be positive, --noise above 0 and --share in (0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    started = time.perf_counter()
    part = run(args.workdir, args.users, args.noise, args.share)
    body = (
        "## Model versions: loading one, and a fine-tuned version's index\n\n"
        f"Command: `.venv/bin/python benchmarks/versions.py --write docs/benchmarks.md` "
        f"({datetime.now(UTC):%Y-%m-%d}, {time.perf_counter() - started:.0f} s in all; "
        f"{os.cpu_count()} cores).\n\n" + part
    )
    print(body, flush=True)
    if args.write:
        write_section(args.write, "version_swap", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
