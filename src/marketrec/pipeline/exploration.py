"""Exploration: a share of slots for new items, chosen by Thompson sampling.

A new item has no history, so no model can rank it well; without exposure it never gets any.
Each new item's click rate gets a Beta posterior, Beta(α + clicks, β + impressions − clicks);
every request draws one sample per eligible item and shows the highest draws. Items that
earned clicks are drawn high more often; items shown many times without a click fade out.

The number of exploration slots in a list of k is ⌊share·k⌋ plus one more with probability
equal to the fraction left over, so over many requests exactly `share` of the slots explore.
Explored items go to evenly spaced positions below the top one, not to the head of the list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import betaincinv


@dataclass
class ExplorationStats:
    """Impressions and clicks per item (model column index), fed by the online path."""

    impressions: np.ndarray
    clicks: np.ndarray

    @classmethod
    def empty(cls, n_items: int) -> ExplorationStats:
        return cls(np.zeros(n_items, dtype=np.int64), np.zeros(n_items, dtype=np.int64))

    def record(self, shown: np.ndarray, clicked: np.ndarray | None = None) -> None:
        """Count impressions of `shown` and clicks on `clicked` (column indices)."""
        np.add.at(self.impressions, shown, 1)
        if clicked is not None:
            np.add.at(self.clicks, clicked, 1)


@dataclass(frozen=True)
class ExplorationPick:
    items: np.ndarray  # column indices, best draw first
    draws: np.ndarray  # the sampled click rates


@dataclass
class ThompsonExplorer:
    prior: tuple[float, float]
    stats: ExplorationStats
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def slots(self, k: int, share: float) -> int:
        """How many of k slots explore in this request (randomised rounding of share·k)."""
        expected = share * k
        whole = int(np.floor(expected))
        return min(k, whole + int(self.rng.random() < expected - whole))

    def pick(self, eligible: np.ndarray, n: int) -> ExplorationPick:
        """The n eligible items (column indices) with the highest sampled click rates.

        Items never shown share the prior, so only the top n of their draws can matter:
        those are sampled directly (`_top_prior_draws`) instead of one draw per item, which
        with tens of thousands of new items was most of a request's time."""
        if n <= 0 or len(eligible) == 0:
            return ExplorationPick(np.zeros(0, dtype=np.int64), np.zeros(0))
        a, b = self.prior
        impressions = self.stats.impressions[eligible]
        shown = impressions > 0
        seen = eligible[shown]
        clicks = self.stats.clicks[seen]
        misses = np.maximum(impressions[shown] - clicks, 0)
        unseen = eligible[~shown]
        top = min(n, len(unseen))
        items = np.concatenate([seen, self.rng.choice(unseen, top, replace=False)])
        draws = np.concatenate(
            [self.rng.beta(a + clicks, b + misses), self._top_prior_draws(len(unseen), top)]
        )
        if len(items) > n:
            keep = np.argpartition(-draws, n - 1)[:n]
            items, draws = items[keep], draws[keep]
        order = np.argsort(-draws, kind="stable")
        return ExplorationPick(items[order], draws[order])

    def _top_prior_draws(self, population: int, top: int) -> np.ndarray:
        """The `top` largest of `population` independent Beta(α, β) draws, largest first,
        drawn exactly without the rest: the largest of m uniforms is V^(1/m), the next is
        that times V'^(1/(m-1)), and so on (Rényi); the prior's inverse CDF maps them. Which
        items hold them is a uniform random subset (drawn by the caller)."""
        if top <= 0:
            return np.zeros(0)
        exponents = 1.0 / np.arange(population, population - top, -1, dtype=np.float64)
        uniforms = np.cumprod(self.rng.random(top) ** exponents)
        return betaincinv(*self.prior, uniforms)


def exploration_positions(k: int, n: int) -> np.ndarray:
    """0-based list positions for n explored items in a list of k: evenly spaced, never the
    first slot while k > 1."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if k == 1:
        return np.zeros(1, dtype=np.int64)
    spots = np.round(np.arange(1, n + 1) * k / (n + 1)).astype(np.int64)
    spots = np.clip(spots, 1, k - 1)
    # distinct positions even when n is close to k
    for j in range(1, len(spots)):
        spots[j] = max(spots[j], spots[j - 1] + 1)
    return spots[spots < k] if n < k else np.arange(k, dtype=np.int64)
