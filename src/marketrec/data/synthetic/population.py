"""Users: demographics, latent tastes, home region, sign-up time, devices and activity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from marketrec.data.synthetic.config import SyntheticConfig
from marketrec.data.synthetic.vectorised import (
    _DAY_US,
    _diurnal,
    _ids,
    _sample_rows,
    _softmax,
    _to_datetime,
)
from marketrec.data.synthetic.world import _World

_DEVICES = ("mobile", "desktop", "tablet")
_DEVICE_SHARE = (0.58, 0.34, 0.08)
_AGES = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_SHARE = (0.17, 0.29, 0.22, 0.16, 0.10, 0.06)
_GENDERS = ("female", "male", "other")
_GENDER_SHARE = (0.51, 0.46, 0.03)
_CHANNELS = ("organic", "ads", "referral", "social", "email")
_CHANNEL_SHARE = (0.42, 0.25, 0.12, 0.15, 0.06)
#: channel -> activity multiplier: referred users come back more, ad-acquired ones less
_CHANNEL_ACTIVITY = (1.0, 0.7, 1.5, 0.9, 1.2)


@dataclass(frozen=True, eq=False)
class _Users:
    frame: pl.DataFrame
    ids: pl.Series
    taste: np.ndarray  # (U, D) float32
    category_weights: np.ndarray  # (U, K) float32, rows sum to 1
    region: np.ndarray  # (U,) region index
    signup_us: np.ndarray
    device: np.ndarray  # preferred device index
    activity: np.ndarray  # expected extra sessions
    browsing: np.ndarray  # views-per-session multiplier


def _make_users(cfg: SyntheticConfig, world: _World, rng: np.random.Generator) -> _Users:
    n, k, d = cfg.users, cfg.categories, cfg.latent_dim
    region = rng.choice(cfg.regions, size=n, p=world.region_share)
    age = rng.choice(len(_AGES), size=n, p=np.array(_AGE_SHARE))
    gender = rng.choice(len(_GENDERS), size=n, p=np.array(_GENDER_SHARE))
    channel = rng.choice(len(_CHANNELS), size=n, p=np.array(_CHANNEL_SHARE))

    # Demographics shift which category a user loves: a cold-start signal, not a rule.
    age_effect = rng.normal(0.0, 0.8, (len(_AGES), k))
    gender_effect = rng.normal(0.0, 0.8, (len(_GENDERS), k))
    logits = np.log(world.category_share)[None, :] + age_effect[age] + gender_effect[gender]
    primary = _sample_rows(rng, _softmax(logits))
    secondary = (primary + rng.integers(1, max(k, 2), n)) % k
    has_second = (rng.random(n) < 0.5) & (k > 1)
    w_primary = np.where(has_second, rng.uniform(0.55, 0.85, n), 1.0)
    explore = 0.12
    weights = np.full((n, k), explore / k)
    rows = np.arange(n)
    weights[rows, primary] += (1 - explore) * w_primary
    weights[rows, secondary] += (1 - explore) * (1 - w_primary)

    scale = 1.0 / math.sqrt(d)
    taste = (
        w_primary[:, None] * world.centroids[primary]
        + (1 - w_primary)[:, None] * world.centroids[secondary]
        + rng.standard_normal((n, d)) * scale * 1.5
    ).astype(np.float32)

    # Sign-up: a share existed before the window; the rest sign up on a day of the window.
    old = rng.random(n) < cfg.initial_user_share
    before = (rng.random(n) * 730 * _DAY_US).astype(np.int64) + 1
    day = rng.integers(0, cfg.days, n)
    signup = np.where(
        old, world.start_us - before, world.start_us + day * _DAY_US + _diurnal(rng, n)
    ).astype(np.int64)

    device = rng.choice(len(_DEVICES), size=n, p=np.array(_DEVICE_SHARE))
    sigma = cfg.activity_sigma
    activity = (
        np.exp(rng.normal(-sigma * sigma / 2, sigma, n)) * np.array(_CHANNEL_ACTIVITY)[channel]
    )
    browsing = np.exp(rng.normal(-0.125, 0.5, n))

    ids = _ids("u", n, 6)
    frame = pl.DataFrame(
        {
            "user_id": ids,
            "region": pl.Series(list(world.region_names)).gather(region),
            "signup_at": _to_datetime(signup),
            "age": pl.Series(list(_AGES)).gather(age),
            "gender": pl.Series(list(_GENDERS)).gather(gender),
            "signup_channel": pl.Series(list(_CHANNELS)).gather(channel),
        }
    )
    return _Users(
        frame, ids, taste, weights.astype(np.float32), region, signup, device, activity, browsing
    )
