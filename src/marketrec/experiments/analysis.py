"""Effects of an A/B test with the user as the unit of analysis.

Requests, exposures and clicks of one user are correlated, so treating each exposure as an
independent trial understates the variance and flags too many tests. Every estimate here
starts from one row per user:

- per-user means (revenue per user, conversion, return rate): Welch's t interval (unequal
  variances);
- ratio metrics (CTR = clicks / exposures, add-to-cart rate): the ratio of the variant's
  sums, with its variance from the delta method over the per-user numerators and
  denominators (Deng et al., "Applying the delta method in metric analytics", 2018);
- CUPED (Deng et al., 2013): a per-user metric adjusted by its pre-period value with the
  pooled θ = cov(Y, X) / var(X), the same mean with less variance when the pre-period
  predicts the metric;
- a percentile bootstrap over users as the distribution-free option;
- the sample-ratio-mismatch check: a chi-square of users per variant against the planned
  allocation; a mismatch means the assignment or the logging is broken, and no effect
  from that test should be trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from marketrec.core.errors import ConfigError

#: p-value under which a sample ratio mismatch is flagged (strict: the check runs on every
#: test, and a true mismatch gives p far below this at any useful size)
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Effect:
    """Treatment minus control, with a two-sided (1 - alpha) interval."""

    metric: str
    method: str
    control: float
    treatment: float
    difference: float
    low: float
    high: float
    p_value: float
    users_control: int
    users_treatment: int

    @property
    def relative(self) -> float:
        """The lift relative to control (difference / control)."""
        return self.difference / self.control if self.control else math.nan

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class SampleRatio:
    observed: dict[str, int]
    expected_share: dict[str, float]
    chi2: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < SRM_ALPHA


def welch(metric: str, control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> Effect:
    """Difference of per-user means, Welch's t interval and p-value."""
    c, t = _values(control, "control"), _values(treatment, "treatment")
    vc, vt = c.var(ddof=1) / len(c), t.var(ddof=1) / len(t)
    se = math.sqrt(vc + vt)
    diff = float(t.mean() - c.mean())
    dof = (vc + vt) ** 2 / (vc**2 / (len(c) - 1) + vt**2 / (len(t) - 1)) if se > 0 else 1.0
    return _effect(metric, "welch", c.mean(), t.mean(), diff, se, stats.t(dof), alpha, c, t)


def ratio_delta(
    metric: str,
    numerator_control: np.ndarray,
    denominator_control: np.ndarray,
    numerator_treatment: np.ndarray,
    denominator_treatment: np.ndarray,
    alpha: float = 0.05,
) -> Effect:
    """Difference of ratios of sums (clicks / exposures) per variant, delta-method
    variance over users, normal interval."""
    rc, var_c = _ratio(numerator_control, denominator_control, "control")
    rt, var_t = _ratio(numerator_treatment, denominator_treatment, "treatment")
    se = math.sqrt(var_c + var_t)
    return _effect(
        metric,
        "delta",
        rc,
        rt,
        rt - rc,
        se,
        stats.norm(),
        alpha,
        np.asarray(numerator_control),
        np.asarray(numerator_treatment),
    )


def cuped(values: np.ndarray, pre_period: np.ndarray) -> np.ndarray:
    """`values` - θ (pre - mean(pre)), θ pooled over every user of the test (so both variants
    are adjusted alike and the difference of means stays unbiased)."""
    y, x = np.asarray(values, dtype=float), np.asarray(pre_period, dtype=float)
    if y.shape != x.shape:
        raise ConfigError(f"CUPED needs one pre-period value per user: {x.shape} vs {y.shape}")
    var = x.var()
    theta = float(np.cov(y, x, ddof=0)[0, 1] / var) if var > 0 else 0.0
    return y - theta * (x - x.mean())


def bootstrap(
    metric: str,
    control: np.ndarray,
    treatment: np.ndarray,
    alpha: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
) -> Effect:
    """Difference of per-user means, percentile interval from resampling users."""
    c, t = _values(control, "control"), _values(treatment, "treatment")
    rng = np.random.default_rng(seed)
    diffs = np.array(
        [rng.choice(t, len(t)).mean() - rng.choice(c, len(c)).mean() for _ in range(resamples)]
    )
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    diff = float(t.mean() - c.mean())
    # two-sided p-value: how often the resampled difference falls on the other side of 0
    p = min(1.0, 2 * min((diffs <= 0).mean(), (diffs >= 0).mean()))
    return Effect(metric, "bootstrap", c.mean(), t.mean(), diff, low, high, p, len(c), len(t))


def sample_ratio(observed: dict[str, int], expected_share: dict[str, float]) -> SampleRatio:
    """Chi-square of users per variant against the planned shares."""
    if set(observed) != set(expected_share):
        raise ConfigError(
            f"sample ratio check: variants {sorted(observed)} vs planned {sorted(expected_share)}"
        )
    names = sorted(observed)
    counts = np.array([observed[n] for n in names], dtype=float)
    shares = np.array([expected_share[n] for n in names], dtype=float)
    expected = counts.sum() * shares / shares.sum()
    chi2, p = stats.chisquare(counts, expected)
    return SampleRatio(dict(observed), dict(expected_share), float(chi2), float(p))


def _values(values: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        raise ConfigError(f"{name}: an effect needs at least 2 users, got {len(a)}")
    return a


def _ratio(numerator: np.ndarray, denominator: np.ndarray, name: str) -> tuple[float, float]:
    """Ratio of sums and its delta-method variance:
    Var(N̄/D̄) ≈ (σ²_N − 2 R σ_ND + R² σ²_D) / (n D̄²)."""
    n_, d_ = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if n_.shape != d_.shape or len(n_) < 2:
        raise ConfigError(f"{name}: a ratio needs matching per-user arrays of 2+ users")
    mean_d = d_.mean()
    if mean_d <= 0:
        raise ConfigError(f"{name}: the ratio's denominator sums to zero")
    r = n_.mean() / mean_d
    cov = np.cov(n_, d_, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (len(n_) * mean_d**2)
    return float(r), float(max(var, 0.0))


def _effect(
    metric: str,
    method: str,
    control: float,
    treatment: float,
    diff: float,
    se: float,
    dist: stats.rv_continuous,
    alpha: float,
    c: np.ndarray,
    t: np.ndarray,
) -> Effect:
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
        return Effect(metric, method, control, treatment, diff, diff, diff, p, len(c), len(t))
    z = float(dist.ppf(1 - alpha / 2))
    p = float(2 * dist.sf(abs(diff) / se))
    return Effect(
        metric,
        method,
        float(control),
        float(treatment),
        diff,
        diff - z * se,
        diff + z * se,
        p,
        len(c),
        len(t),
    )


__all__ = [
    "SRM_ALPHA",
    "Effect",
    "SampleRatio",
    "bootstrap",
    "cuped",
    "ratio_delta",
    "sample_ratio",
    "welch",
]
