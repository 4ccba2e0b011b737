"""Effect estimates with the user as the unit: hand-computed cases, scipy agreement, and their
error rates over many simulated tests (A/A false positives, interval coverage of a known lift)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from marketrec.core.errors import ConfigError
from marketrec.experiments.analysis import (
    bootstrap,
    cuped,
    ratio_delta,
    sample_ratio,
    welch,
)


def users(rng: np.random.Generator, n: int, lift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-user exposures and clicks: users differ in activity (Poisson of a gamma rate) and
    taste (beta CTR around 5 %), so clicks of one user are correlated; `lift` multiplies the
    click probability."""
    exposures = rng.poisson(rng.gamma(2.0, 5.0, n)) + 1
    ctr = np.clip(rng.beta(2.0, 38.0, n) * (1.0 + lift), 0.0, 1.0)
    return exposures, rng.binomial(exposures, ctr)


def test_delta_method_matches_a_hand_computed_case() -> None:
    clicks_c, views_c = np.array([1.0, 0.0, 3.0]), np.array([2.0, 2.0, 4.0])
    clicks_t, views_t = np.array([2.0, 1.0, 3.0]), np.array([2.0, 3.0, 3.0])
    effect = ratio_delta("ctr", clicks_c, views_c, clicks_t, views_t)
    # control: N̄ = 4/3, D̄ = 8/3, R = 0.5; var_N = 7/3, var_D = 4/3, cov = 5/3 (ddof 1)
    # Var(R) = (7/3 - 2·0.5·5/3 + 0.25·4/3) / (3 · (8/3)²) = 1 / (64/3) = 3/64
    # treatment: N̄ = 2, D̄ = 8/3, R = 0.75; var_N = 1, var_D = 1/3, cov = 0
    # Var(R) = (1 + 0.5625/3) / (64/3)
    se = math.sqrt(3 / 64 + (1 + 0.5625 / 3) / (64 / 3))
    assert effect.control == pytest.approx(0.5) and effect.treatment == pytest.approx(0.75)
    assert effect.difference == pytest.approx(0.25)
    assert effect.high - effect.difference == pytest.approx(1.959964 * se, rel=1e-5)
    assert effect.p_value == pytest.approx(2 * stats.norm.sf(0.25 / se))


def test_welch_agrees_with_scipy() -> None:
    rng = np.random.default_rng(3)
    c, t = rng.exponential(10.0, 400), rng.exponential(11.0, 300)
    effect = welch("revenue", c, t)
    reference = stats.ttest_ind(t, c, equal_var=False)
    assert effect.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    ci = reference.confidence_interval(0.95)
    assert (effect.low, effect.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_aa_tests_flag_about_alpha_of_the_time() -> None:
    rng = np.random.default_rng(11)
    positives = {"delta": 0, "welch": 0, "naive": 0}
    runs = 200
    for _ in range(runs):
        exposures, clicks = users(rng, 4000)
        group = rng.random(4000) < 0.5
        c, t = ~group, group
        positives["delta"] += ratio_delta(
            "ctr", clicks[c], exposures[c], clicks[t], exposures[t]
        ).significant
        positives["welch"] += welch("clicks", clicks[c], clicks[t]).significant
        # exposures as independent trials: the variance users share is ignored
        pc, pt = clicks[c].sum() / exposures[c].sum(), clicks[t].sum() / exposures[t].sum()
        se = math.sqrt(pc * (1 - pc) / exposures[c].sum() + pt * (1 - pt) / exposures[t].sum())
        positives["naive"] += abs(pt - pc) / se > 1.96
    assert 0.02 <= positives["delta"] / runs <= 0.08, positives
    assert 0.02 <= positives["welch"] / runs <= 0.08, positives
    assert positives["naive"] > positives["delta"]  # why the user is the unit


def test_the_interval_covers_a_known_lift() -> None:
    rng = np.random.default_rng(5)
    covered, positive, runs = 0, 0, 200
    true_ctr_c = 2.0 / 40.0  # the beta's mean; clipping at 1 never binds here
    true_lift = 0.10 * true_ctr_c
    for _ in range(runs):
        ec, cc = users(rng, 3000)
        et, ct = users(rng, 3000, lift=0.10)
        # the true difference of ratios of sums weights users by exposures; with CTR
        # independent of activity it equals the difference of mean CTRs
        effect = ratio_delta("ctr", cc, ec, ct, et)
        covered += effect.covers(true_lift)
        positive += effect.difference > 0
    assert covered / runs >= 0.90
    assert positive / runs > 0.9


def test_cuped_keeps_the_mean_and_cuts_the_variance() -> None:
    rng = np.random.default_rng(2)
    pre = rng.gamma(2.0, 10.0, 10_000)
    post = 0.8 * pre + rng.normal(0, 5, 10_000)
    adjusted = cuped(post, pre)
    assert adjusted.mean() == pytest.approx(post.mean())
    assert adjusted.var() < 0.25 * post.var()
    group = rng.random(10_000) < 0.5
    plain = welch("m", post[~group], post[group])
    tight = welch("m", adjusted[~group], adjusted[group])
    assert tight.high - tight.low < 0.5 * (plain.high - plain.low)
    with pytest.raises(ConfigError, match="pre-period"):
        cuped(post, pre[:10])


def test_bootstrap_agrees_with_welch_on_a_large_sample() -> None:
    rng = np.random.default_rng(8)
    c, t = rng.exponential(10.0, 3000), rng.exponential(10.5, 3000)
    boot, exact = bootstrap("revenue", c, t, resamples=1000), welch("revenue", c, t)
    assert boot.difference == pytest.approx(exact.difference)
    assert boot.low == pytest.approx(exact.low, abs=0.15)
    assert boot.high == pytest.approx(exact.high, abs=0.15)


def test_the_sample_ratio_check_flags_a_52_48_split() -> None:
    planned = {"control": 0.5, "treatment": 0.5}
    assert sample_ratio({"control": 52_000, "treatment": 48_000}, planned).mismatch
    rng = np.random.default_rng(0)
    n_t = int((rng.random(100_000) < 0.5).sum())
    assert not sample_ratio({"control": 100_000 - n_t, "treatment": n_t}, planned).mismatch
    three = {"a": 0.2, "b": 0.3, "c": 0.5}
    assert not sample_ratio({"a": 20_100, "b": 29_950, "c": 49_950}, three).mismatch
    with pytest.raises(ConfigError, match="planned"):
        sample_ratio({"control": 5, "other": 5}, planned)


def test_too_few_users_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="at least 2 users"):
        welch("m", np.array([1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ConfigError, match="denominator"):
        ratio_delta("ctr", np.zeros(3), np.zeros(3), np.ones(3), np.ones(3))
