"""EASE (Steck, WWW 2019): a closed-form item-item linear autoencoder.

B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹. Strong on dense-ish catalogues and hard to beat
on MovieLens, but it inverts an items × items matrix, so it refuses catalogues above
`max_items` instead of exhausting memory.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field

from marketrec.core.errors import ConfigError
from marketrec.features.interactions import weighted
from marketrec.models.scoring import Params, TrainContext


class EASEParams(Params):
    l2: float = Field(default=500.0, gt=0)
    binary: bool = True
    """Use 1 for every interaction instead of its event weight."""
    max_items: int = Field(default=30_000, gt=0)


class EASEScorer:
    def __init__(self, params: EASEParams | None = None) -> None:
        self.params = params or EASEParams()
        self._weights = np.zeros((0, 0), dtype=np.float32)

    def fit(self, ctx: TrainContext) -> None:
        x = weighted(ctx.interactions.matrix, self.params.binary)
        n_items = x.shape[1]
        if n_items > self.params.max_items:
            raise ConfigError(
                f"EASE: {n_items:,} items exceed max_items={self.params.max_items:,}"
                " (an items × items inverse); use itemknn or als instead"
            )
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices(n_items)] += self.params.l2
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        b = p / (-np.diag(p))
        b[np.diag_indices(n_items)] = 0.0
        self._weights = b.astype(np.float32)

    def score(
        self,
        user_rows: np.ndarray,
        history: sp.csr_matrix,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        return np.asarray(weighted(history, self.params.binary) @ self._weights, dtype=np.float32)

    def item_to_item(self) -> np.ndarray:
        """B: an item's score for a user is the sum of its column over the user's items."""
        return self._weights

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self._weights}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._weights = arrays["weights"]
