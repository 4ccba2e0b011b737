"""Diversity: reorder a relevance-ranked list so one category does not fill it.

Two standard ways, chosen by `PipelineConfig.diversity`:
- MMR (maximal marginal relevance, Carbonell & Goldstein 1998): pick greedily the item with
  the best (1 − λ)·relevance − λ·(largest similarity to an item already picked), relevance
  min-max scaled within the list; similarity 1 for the same category, 0.5 for the same
  top-level category, else 0. λ = 0 keeps the relevance order.
- Category cap: walk down the relevance order and skip an item once its category has `cap`
  items in the list; skipped items fill the end if the list would otherwise be short.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def category_similarity(categories: np.ndarray, top_categories: np.ndarray) -> np.ndarray:
    """(n, n) similarity of items by their category codes (0 = no category: similar to none)."""
    return _similarity(
        categories[:, None], top_categories[:, None], categories[None, :], top_categories[None, :]
    )


def _similarity(
    category: np.ndarray, top: np.ndarray, categories: np.ndarray, top_categories: np.ndarray
) -> np.ndarray:
    """1 for the same category, 0.5 for the same top-level category, else 0 (broadcast)."""
    same = (categories == category) & (category > 0)
    same_top = (top_categories == top) & (top > 0)
    return np.where(same, 1.0, np.where(same_top, 0.5, 0.0))


def mmr_order(relevance: np.ndarray, similarity: np.ndarray, k: int, strength: float) -> np.ndarray:
    """Positions (into `relevance`) of the k items MMR picks, in the order picked."""
    return _mmr(relevance, lambda best: similarity[best], k, strength)


def mmr_order_by_category(
    relevance: np.ndarray,
    categories: np.ndarray,
    top_categories: np.ndarray,
    k: int,
    strength: float,
) -> np.ndarray:
    """`mmr_order(relevance, category_similarity(categories, top_categories), k, strength)`,
    reading only the similarity rows of the items picked (k rows instead of an n × n matrix
    per list)."""
    return _mmr(
        relevance,
        lambda best: _similarity(
            categories[best], top_categories[best], categories, top_categories
        ),
        k,
        strength,
    )


def _mmr(
    relevance: np.ndarray, similar_to: Callable[[int], np.ndarray], k: int, strength: float
) -> np.ndarray:
    """MMR's greedy picks; `similar_to(i)`: every item's similarity to item i."""
    n = len(relevance)
    k = min(k, n)
    if strength <= 0 or n == 0:
        return np.argsort(-relevance, kind="stable")[:k]
    span = float(relevance.max() - relevance.min()) or 1.0
    rel = (relevance - relevance.min()) / span
    picked: list[int] = []
    closest = np.zeros(n)  # largest similarity of each item to anything picked so far
    free = np.ones(n, dtype=bool)
    for _ in range(k):
        gain = np.where(free, (1.0 - strength) * rel - strength * closest, -np.inf)
        best = int(np.argmax(gain))
        picked.append(best)
        free[best] = False
        closest = np.maximum(closest, similar_to(best))
    return np.array(picked, dtype=np.int64)


def capped_order(relevance: np.ndarray, categories: np.ndarray, k: int, cap: int) -> np.ndarray:
    """Positions of the k items kept under a per-category cap (uncategorised items: no cap)."""
    order = np.argsort(-relevance, kind="stable")
    kept: list[int] = []
    skipped: list[int] = []
    used: dict[int, int] = {}
    for pos in order:
        c = int(categories[pos])
        if c > 0 and used.get(c, 0) >= cap:
            skipped.append(int(pos))
            continue
        used[c] = used.get(c, 0) + 1
        kept.append(int(pos))
        if len(kept) == k:
            break
    return np.array((kept + skipped)[: min(k, len(order))], dtype=np.int64)
