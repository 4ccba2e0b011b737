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
        """The n eligible items (column indices) with the highest sampled click rates."""
        if n <= 0 or len(eligible) == 0:
            return ExplorationPick(np.zeros(0, dtype=np.int64), np.zeros(0))
        a, b = self.prior
        clicks = self.stats.clicks[eligible]
        misses = np.maximum(self.stats.impressions[eligible] - clicks, 0)
        draws = self.rng.beta(a + clicks, b + misses)
        best = np.argsort(-draws, kind="stable")[:n]
        return ExplorationPick(eligible[best], draws[best])


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
