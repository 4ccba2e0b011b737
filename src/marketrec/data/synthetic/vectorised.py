"""Time units, ids and small vectorised helpers shared by every stage of the generator.

Timestamps are handled as int64 microseconds since the Unix epoch so that whole columns can be
shifted and compared with NumPy; they become Polars UTC datetimes only when a frame is built.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

_US = 1_000_000
_HOUR_US = 3600 * _US
_DAY_US = 24 * _HOUR_US
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: relative traffic per UTC hour: quiet at night, peaks at lunch and in the evening
_DIURNAL = np.array(
    [
        1.2,
        0.8,
        0.5,
        0.4,
        0.4,
        0.6,
        1.2,
        2.2,
        3.2,
        3.8,
        4.0,
        4.2,
        4.6,
        4.4,
        4.0,
        3.9,
        4.0,
        4.4,
        5.2,
        6.0,
        6.4,
        5.6,
        4.0,
        2.4,
    ]
)
_DIURNAL = _DIURNAL / _DIURNAL.sum()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


sigmoid = _sigmoid


def calibrated_intercept(
    z: np.ndarray, slope: float, target: float, weights: np.ndarray | None = None
) -> float:
    """The intercept `a` (bisection) for which the mean, or the `weights`-weighted mean, of
    sigmoid(a + slope · z) equals `target`: a rate calibrated, the order by z kept."""
    lo, hi = -40.0, 40.0
    total = None if weights is None else max(float(weights.sum()), 1e-12)
    for _ in range(60):
        mid = (lo + hi) / 2
        p = _sigmoid(mid + slope * z)
        mean = p.mean() if weights is None else float((weights * p).sum()) / total
        if mean < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix (inverse CDF, vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1)


def _diurnal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Offsets into a day (µs) that follow the daily traffic curve."""
    hour = rng.choice(24, size=n, p=_DIURNAL)
    return hour.astype(np.int64) * _HOUR_US + rng.integers(0, _HOUR_US, n)


def _ids(prefix: str, n: int, min_width: int) -> pl.Series:
    """Zero-padded string ids ("u000123") so that string order is numeric order."""
    width = max(min_width, len(str(max(n - 1, 0))))
    digits = pl.int_range(0, n, eager=True, dtype=pl.Int64).cast(pl.String).str.zfill(width)
    return (prefix + digits).alias("id")


def _to_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _to_datetime(us: np.ndarray) -> pl.Series:
    return (
        pl.Series(np.asarray(us, dtype=np.int64))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
