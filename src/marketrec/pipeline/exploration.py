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
    """Impressions and clicks per item (model column index), fed by the online path.

    The arrays are read-only outside `add`, which counts every change in `version`: what is
    derived from them per request (`ExplorationPool`) is kept until the version moves."""

    impressions: np.ndarray
    clicks: np.ndarray
    version: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        self.impressions = np.array(self.impressions, dtype=np.int64)
        self.clicks = np.array(self.clicks, dtype=np.int64)
        self.impressions.flags.writeable = self.clicks.flags.writeable = False

    @classmethod
    def empty(cls, n_items: int) -> ExplorationStats:
        return cls(np.zeros(n_items, dtype=np.int64), np.zeros(n_items, dtype=np.int64))

    def record(self, shown: np.ndarray, clicked: np.ndarray | None = None) -> None:
        """Count one impression of each of `shown` and one click on each of `clicked`
        (column indices, repeats counted)."""
        self.add(shown, np.ones(len(shown), dtype=np.int64), clicked)

    def add(
        self,
        shown: np.ndarray,
        times: np.ndarray,
        clicked: np.ndarray | None = None,
        clicks: np.ndarray | None = None,
    ) -> None:
        """Add `times` impressions to the items `shown` and `clicks` (default one each) to
        the items `clicked` (column indices, repeats counted)."""
        for target, cols, counts in (
            (self.impressions, shown, times),
            (self.clicks, clicked, clicks),
        ):
            if cols is None or not len(cols):
                continue
            counts = np.ones(len(cols), dtype=np.int64) if counts is None else counts
            target.flags.writeable = True
            try:
                np.add.at(target, np.asarray(cols, dtype=np.int64), counts)
            finally:
                target.flags.writeable = False
            self.version += 1


@dataclass(frozen=True)
class ExplorationPool:
    """What exploration may pick from in one region at one moment, before each list's own
    exclusions (the user's seen items, the items already in the list): a mask over the item
    columns, the pool's items already shown (ascending) and how many were never shown. One
    pool serves every request of that region until the moment, the catalogue or the
    statistics change, so a request reads only the pool's shown items and its own
    exclusions, never a catalogue-sized array."""

    mask: np.ndarray  # read-only
    shown: np.ndarray
    never_shown: int

    @classmethod
    def build(cls, mask: np.ndarray, stats: ExplorationStats) -> ExplorationPool:
        mask = np.asarray(mask, dtype=bool).copy()
        mask.flags.writeable = False
        shown = np.flatnonzero(mask & (stats.impressions > 0))
        return cls(mask, shown, int(np.count_nonzero(mask)) - len(shown))


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
        """The n eligible items (`eligible`: a mask over the item columns) with the highest
        sampled click rates (`pick_from` with a pool of those items and nothing removed)."""
        return self.pick_from(
            ExplorationPool.build(eligible, self.stats), np.zeros(0, dtype=np.int64), n
        )

    def pick_from(self, pool: ExplorationPool, removed: np.ndarray, n: int) -> ExplorationPick:
        """The n items of `pool` outside `removed` (column indices) with the highest sampled
        click rates.

        Items never shown share the prior, so only the top n of their draws can matter:
        those are sampled directly (`_top_prior_draws`) instead of one draw per item, which
        with tens of thousands of new items was most of a request's time; which items hold
        them is a uniform draw from the never-shown eligible items (`_never_shown`)."""
        removed = np.unique(np.asarray(removed, dtype=np.int64))
        removed = removed[pool.mask[removed]] if len(removed) else removed
        seen = pool.shown[~np.isin(pool.shown, removed, assume_unique=True)]
        population = pool.never_shown - (len(removed) - (len(pool.shown) - len(seen)))
        if n <= 0 or (not len(seen) and population <= 0):
            return ExplorationPick(np.zeros(0, dtype=np.int64), np.zeros(0))
        a, b = self.prior
        clicks = self.stats.clicks[seen]
        misses = np.maximum(self.stats.impressions[seen] - clicks, 0)
        top = min(n, population)
        items = np.concatenate([seen, self._never_shown(pool, removed, top)])
        draws = np.concatenate(
            [self.rng.beta(a + clicks, b + misses), self._top_prior_draws(population, top)]
        )
        if len(items) > n:
            keep = np.argpartition(-draws, n - 1)[:n]
            items, draws = items[keep], draws[keep]
        order = np.argsort(-draws, kind="stable")
        return ExplorationPick(items[order], draws[order])

    def _never_shown(self, pool: ExplorationPool, removed: np.ndarray, count: int) -> np.ndarray:
        """`count` distinct items drawn uniformly from the pool's never-shown items outside
        `removed` (ascending).

        Drawn by rejection from all columns while that accepts often enough (new items are
        most of a young marketplace's catalogue), which reads a handful of entries instead
        of listing every such item; a uniform draw conditioned on acceptance is uniform over
        the accepted set, and duplicates are drawn again."""
        picked: list[int] = []
        if count <= 0:
            return np.zeros(0, dtype=np.int64)
        impressions, mask = self.stats.impressions, pool.mask
        for _ in range(_REJECTION_TRIES * count):
            item = int(self.rng.integers(len(mask)))
            if (
                mask[item]
                and impressions[item] == 0
                and item not in picked
                and not _holds(removed, item)
            ):
                picked.append(item)
                if len(picked) == count:
                    return np.array(picked, dtype=np.int64)
        # few such items: list them (the draw is still uniform over them)
        rest = np.flatnonzero(mask & (impressions == 0))
        rest = rest[~np.isin(rest, removed) & ~np.isin(rest, picked)]
        more = self.rng.choice(rest, count - len(picked), replace=False)
        return np.concatenate([np.array(picked, dtype=np.int64), more])

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


#: Rejection draws per wanted item before `_never_shown` lists the candidates instead.
_REJECTION_TRIES = 16


def _holds(ascending: np.ndarray, item: int) -> bool:
    """Whether the ascending array holds `item` (a binary search, not a pass over it)."""
    at = int(np.searchsorted(ascending, item))
    return at < len(ascending) and int(ascending[at]) == item


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
