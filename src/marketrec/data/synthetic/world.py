"""The world: names, category centroids, brand styles, regions, price levels and trends.

Everything the catalogue and the population are drawn around; built first, from the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from marketrec.data.synthetic.config import SyntheticConfig
from marketrec.data.synthetic.vectorised import _to_us
from marketrec.data.synthetic.vocabulary import _BRANDS, _REGION_NAMES, _TAXONOMY, _trait_words


@dataclass(frozen=True, eq=False)
class _World:
    start_us: int
    end_us: int
    region_names: tuple[str, ...]
    region_multipliers: np.ndarray  # (R,)
    region_share: np.ndarray  # (R,) users per region
    top_names: tuple[str, ...]  # (K,)
    sub_names: tuple[tuple[str, ...], ...]  # (K, S)
    nouns: tuple[tuple[tuple[str, ...], ...], ...]  # (K, S, nouns)
    brands: tuple[tuple[str, ...], ...]  # (K, B)
    trait_words: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (D, 2, W)
    centroids: np.ndarray  # (K, D)
    sub_centroids: np.ndarray  # (K, S, D)
    brand_styles: np.ndarray  # (K, B, D)
    category_share: np.ndarray  # (K,) catalogue share per top category
    sub_price: np.ndarray  # (K, S) typical price
    trends: np.ndarray  # (K, days) popularity multiplier per top category and day

    @classmethod
    def build(cls, cfg: SyntheticConfig, rng: np.random.Generator) -> _World:
        k, s, d = cfg.categories, cfg.subcategories, cfg.latent_dim
        scale = 1.0 / math.sqrt(d)
        centroids = rng.standard_normal((k, d)) * scale * 2.0
        sub_centroids = centroids[:, None, :] + rng.standard_normal((k, s, d)) * scale
        brand_styles = rng.standard_normal((k, cfg.brands_per_category, d)) * scale
        multipliers = np.round(rng.uniform(0.8, 1.25, cfg.regions), 2)
        multipliers[0] = 1.0  # the reference market
        region_share = rng.dirichlet(np.full(cfg.regions, 4.0))
        category_share = rng.dirichlet(np.full(k, 6.0))
        sub_price = np.exp(rng.normal(3.3, 0.9, (k, s)))
        return cls(
            start_us=_to_us(cfg.start),
            end_us=_to_us(cfg.end),
            region_names=_region_names(cfg.regions),
            region_multipliers=multipliers,
            region_share=region_share,
            top_names=tuple(name for name, _ in _TAXONOMY[:k]),
            sub_names=tuple(tuple(sub for sub, _ in subs[:s]) for _, subs in _TAXONOMY[:k]),
            nouns=tuple(tuple(n for _, n in subs[:s]) for _, subs in _TAXONOMY[:k]),
            brands=tuple(b[: cfg.brands_per_category] for b in _BRANDS[:k]),
            trait_words=_trait_words(d),
            centroids=centroids.astype(np.float32),
            sub_centroids=sub_centroids.astype(np.float32),
            brand_styles=brand_styles.astype(np.float32),
            category_share=category_share,
            sub_price=sub_price,
            trends=_trends(cfg, rng),
        )


def _region_names(n: int) -> tuple[str, ...]:
    """Deterministic names: compass points first, then numbered regions."""
    names = list(_REGION_NAMES[:n])
    names += [f"region-{i + 1}" for i in range(len(names), n)]
    return tuple(names)


def _trends(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Per top category and day: a drift (one category rises, another fades) plus a wave."""
    k = cfg.categories
    day = np.arange(cfg.days, dtype=np.float64)
    frac = day / max(cfg.days - 1, 1) - 0.5
    drift = rng.permutation(np.linspace(-1.2, 1.2, k)) if k > 1 else np.zeros(1)
    amplitude = rng.uniform(0.1, 0.35, k)
    period = rng.uniform(7.0, 21.0, k)
    phase = rng.uniform(0.0, 2 * math.pi, k)
    log_trend = drift[:, None] * frac[None, :] + amplitude[:, None] * np.sin(
        2 * math.pi * day[None, :] / period[:, None] + phase[:, None]
    )
    return np.exp(cfg.trend_strength * log_trend)
