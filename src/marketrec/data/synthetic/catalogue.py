"""Items: latent traits, popularity, brand, price, listing and delisting, regions sold in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from marketrec.data.synthetic.config import SyntheticConfig
from marketrec.data.synthetic.text import _item_frame
from marketrec.data.synthetic.vectorised import _DAY_US, _diurnal, _ids
from marketrec.data.synthetic.world import _World


@dataclass(frozen=True, eq=False)
class _Items:
    frame: pl.DataFrame
    ids: pl.Series
    latent: np.ndarray  # (I, D) float32
    popularity: np.ndarray  # (I,)
    top: np.ndarray  # (I,) top category index
    sub: np.ndarray  # (I,) sub-category index within top
    price: np.ndarray
    created_us: np.ndarray
    delisted_us: np.ndarray  # int64, max int64 = never
    region_mask: np.ndarray  # int64 bit mask of regions where sold


def _make_items(cfg: SyntheticConfig, world: _World, rng: np.random.Generator) -> _Items:
    n, d, k, s = cfg.items, cfg.latent_dim, cfg.categories, cfg.subcategories
    top = rng.choice(k, size=n, p=world.category_share)
    sub = rng.integers(0, s, n)
    latent = world.sub_centroids[top, sub] + rng.standard_normal((n, d)).astype(np.float32) * (
        1.0 / math.sqrt(d)
    )
    latent = latent.astype(np.float32)
    popularity = np.exp(rng.normal(0.0, cfg.popularity_sigma, n))

    # Brand follows style: items pick the brand of their category whose style they match.
    styles = world.brand_styles[top]  # (n, B, D)
    brand_logit = np.matmul(styles, latent[:, :, None])[..., 0] * 3.0 + rng.gumbel(
        size=(n, cfg.brands_per_category)
    )
    brand = np.argmax(brand_logit, axis=1)

    # Price: the sub-category's level, nudged by the "luxury" trait (dimension 4 if present).
    lux = latent[:, 4 % d] * math.sqrt(d)
    raw = world.sub_price[top, sub] * np.exp(0.35 * rng.standard_normal(n) + 0.25 * lux)
    price = np.maximum(np.floor(raw), 0.0) + 0.99

    # Listing: a share exists at start (listed up to 180 days before), the rest arrive daily.
    old = rng.random(n) < cfg.initial_item_share
    before = (rng.random(n) * 180 * _DAY_US).astype(np.int64) + 1
    day = rng.integers(0, cfg.days, n)
    created = np.where(
        old, world.start_us - before, world.start_us + day * _DAY_US + _diurnal(rng, n)
    ).astype(np.int64)
    delisted = rng.random(n) < cfg.delisted_share
    since = np.maximum(created, world.start_us)
    delist_at = since + (rng.random(n) * (world.end_us - since)).astype(np.int64)
    never = np.iinfo(np.int64).max
    delisted_us = np.where(delisted, delist_at, never).astype(np.int64)

    # Regions: most items everywhere (mask all ones), some in a random non-empty subset.
    r = cfg.regions
    everywhere = (1 << r) - 1
    regional = rng.random(n) < cfg.regional_item_share
    bits = rng.random((n, r)) < 0.5
    bits[np.arange(n), rng.integers(0, r, n)] = True
    subset = (bits.astype(np.int64) << np.arange(r, dtype=np.int64)).sum(axis=1)
    mask = np.where(regional & (subset != everywhere), subset, everywhere).astype(np.int64)

    ids = _ids("i", n, 5)
    frame = _item_frame(
        cfg, world, rng, ids, latent, top, sub, brand, price, created, delisted, mask
    )
    return _Items(frame, ids, latent, popularity, top, sub, price, created, delisted_us, mask)
