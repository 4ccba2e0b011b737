"""Error rates of the experiment analysis over many simulated tests.

    .venv/bin/python benchmarks/experiments.py --write docs/benchmarks.md

Users are drawn from a heterogeneous model (activity: Poisson of a gamma rate, so users
differ in exposures; taste: a beta click rate around 5 %, so one user's clicks are
correlated), assigned 50/50 by `experiments.assignment` (hashing their ids, as the service
does), and analysed with `experiments.analysis`. This is a statistical check of the
estimators and of the assignment, not the marketplace simulator of issue 6 (not built yet).

- A/A: no difference; the share of tests called significant at α = 0.05 should be near
  0.05 (issue 6: between 0.02 and 0.08), for the delta-method CTR and the Welch per-user
  clicks, next to the exposure-level z-test that ignores the user as the unit.
- A/B with a known 10 % CTR lift: how often the 95 % interval covers the true lift (≥ 90 %)
  and how often the lift is found.
- SRM: an injected 52/48 split of 100k users, and honest 50/50 ones.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from docs_section import write_section
from marketrec.experiments.analysis import ratio_delta, sample_ratio, welch
from marketrec.experiments.assignment import Assigner, RequestContext, parse_experiments

CONFIG = {
    "experiments": [
        {
            "name": "test",
            "variants": [
                {"name": "control", "allocation": 50},
                {"name": "treatment", "allocation": 50},
            ],
        }
    ]
}


def population(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    exposures = rng.poisson(rng.gamma(2.0, 5.0, n)) + 1
    ctr = rng.beta(2.0, 38.0, n)
    return exposures, ctr


def split(run: int, n: int) -> np.ndarray:
    """True for treatment: the assignment of users `run-<run>-<i>` (fresh ids per run)."""
    assigner = Assigner(parse_experiments(CONFIG))
    return np.array(
        [
            assigner.assign(RequestContext(user_id=f"run-{run}-{i}"))[0].variant == "treatment"
            for i in range(n)
        ]
    )


def run(runs: int, users: int, lift: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hits = {"delta": 0, "welch": 0, "naive": 0, "covered": 0, "positive": 0}
    for r in range(runs):
        exposures, ctr = population(rng, users)
        treated = split(r + seed * 10_000, users)
        p = np.clip(ctr * np.where(treated, 1.0 + lift, 1.0), 0, 1)
        clicks = rng.binomial(exposures, p)
        c, t = ~treated, treated
        effect = ratio_delta("ctr", clicks[c], exposures[c], clicks[t], exposures[t])
        hits["delta"] += effect.significant
        hits["welch"] += welch("clicks", clicks[c], clicks[t]).significant
        pc, pt = clicks[c].sum() / exposures[c].sum(), clicks[t].sum() / exposures[t].sum()
        se = math.sqrt(pc * (1 - pc) / exposures[c].sum() + pt * (1 - pt) / exposures[t].sum())
        hits["naive"] += abs(pt - pc) / se > 1.959964
        # the true difference of ratios of sums: CTR independent of activity, so the
        # mean click rate times the lift
        hits["covered"] += effect.covers(lift * 2.0 / 40.0)
        hits["positive"] += effect.difference > 0
    return {k: v / runs for k, v in hits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    aa = run(args.runs, args.users, 0.0, seed=1)
    ab = run(args.runs, args.users, 0.10, seed=2)
    planned = {"control": 0.5, "treatment": 0.5}
    skewed = sample_ratio({"control": 52_000, "treatment": 48_000}, planned)
    honest = split(-1, 100_000)
    fair = sample_ratio({"control": int((~honest).sum()), "treatment": int(honest.sum())}, planned)
    ok = 0.02 <= aa["delta"] <= 0.08 and 0.02 <= aa["welch"] <= 0.08
    body = (
        "## Experiment analysis: error rates over simulated tests\n\n"
        f"Command: `.venv/bin/python benchmarks/experiments.py --write docs/benchmarks.md` "
        f"({datetime.now(UTC):%Y-%m-%d}, {time.perf_counter() - started:.0f} s).\n\n"
        f"{args.runs} tests of {args.users:,} users each, assigned 50/50 by the service's "
        "hash assignment; users differ in activity and click rate (see the script). A "
        "statistical check of the estimators, not the marketplace simulator.\n\n"
        "| check | target (issue 6) | measured |\n|---|---|---|\n"
        f"| A/A false-positive rate, CTR by the delta method | 0.02–0.08 | {aa['delta']:.3f} |\n"
        f"| A/A false-positive rate, clicks per user (Welch) | 0.02–0.08 | {aa['welch']:.3f} |\n"
        f"| A/A false-positive rate, exposure-level z-test (user ignored) | – | "
        f"{aa['naive']:.3f} |\n"
        f"| 10 % CTR lift: 95 % interval covers the true lift | ≥ 0.90 | {ab['covered']:.3f} |\n"
        f"| 10 % CTR lift: estimated lift positive | positive | {ab['positive']:.3f} |\n"
        f"| 10 % CTR lift: significant (power) | – | {ab['delta']:.3f} |\n"
        f"| SRM: 52/48 of 100k users flagged | flagged | p = {skewed.p_value:.2g}, "
        f"{'flagged' if skewed.mismatch else 'NOT flagged'} |\n"
        f"| SRM: the hash assignment of 100k users | not flagged | p = {fair.p_value:.2g}, "
        f"{'flagged' if fair.mismatch else 'not flagged'} |\n\n"
        f"False-positive targets {'met' if ok else 'NOT met'} on these simulated users; the "
        "issue's version runs through the marketplace simulator, not built yet.\n"
    )
    print(body, flush=True)
    if args.write:
        write_section(args.write, "experiments_error_rates", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
