"""Popularity with time decay, global or per region: the baseline every model must beat and
the answer for users without history.

An event of age a (days before the latest training event) counts w·2^(−a/half_life), where w is
its event weight, so yesterday's purchases outweigh last quarter's views. Per-region scores are
shrunk towards the global ones, p_r = (c_r + m·p_g) / (N_r + m), so a small region does not
recommend the few items its handful of users happened to touch.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field

from marketrec.models.scoring import Params, TrainContext


class PopularityParams(Params):
    half_life_days: float | None = Field(default=None, gt=0)
    """None = no decay (all-time popularity)."""
    per_region: bool = False
    region_prior: float = Field(default=100.0, ge=0)
    """m above: weight of the global distribution in each region's scores."""


class PopularityScorer:
    """Item scores are the same for every user of a region."""

    def __init__(self, params: PopularityParams | None = None) -> None:
        self.params = params or PopularityParams()
        self._table = np.zeros((1, 0), dtype=np.float32)  # (n_regions + 1, n_items)

    def fit(self, ctx: TrainContext) -> None:
        inter = ctx.interactions
        n_regions, n_items = len(ctx.region_names), len(inter.items)
        events = inter.events
        weight = events.get_column("weight").to_numpy().astype(np.float64)
        if self.params.half_life_days is not None and inter.reference_time is not None:
            age_days = (
                inter.reference_time - events.get_column("ts")
            ).dt.total_seconds().to_numpy() / 86_400.0
            weight = weight * np.exp2(-age_days / self.params.half_life_days)
        items = events.get_column("item_idx").to_numpy()
        counts = np.bincount(items, weights=weight, minlength=n_items)
        table = np.zeros((n_regions + 1, n_items), dtype=np.float64)
        table[n_regions] = counts / max(counts.sum(), 1e-12)
        if self.params.per_region and n_regions:
            region = ctx.user_region[events.get_column("user_idx").to_numpy()]
            known = region >= 0
            by_region = sp.coo_matrix(
                (weight[known], (region[known], items[known])), shape=(n_regions, n_items)
            ).toarray()
            m = self.params.region_prior
            totals = by_region.sum(axis=1, keepdims=True)
            table[:n_regions] = (by_region + m * table[n_regions]) / np.maximum(totals + m, 1e-12)
        else:
            table[:n_regions] = table[n_regions]
        self._table = table.astype(np.float32)

    def score(
        self,
        user_rows: np.ndarray,
        history: sp.csr_matrix,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        return self._table[region_idx]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"table": self._table}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._table = arrays["table"]

    def ranking(self) -> pl.DataFrame:
        """Global scores per item index (for inspection and tests)."""
        return pl.DataFrame({"item_idx": np.arange(self._table.shape[1]), "score": self._table[-1]})
