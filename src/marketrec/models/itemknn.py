"""Item-based k-nearest neighbours with shrunk cosine similarity.

sim(i, j) = x_i·x_j / (‖x_i‖‖x_j‖ + shrink) over item columns of the interaction matrix; each
item keeps its `neighbours` most similar items, and a user's score for j is the sum of
similarities between j and the items in the user's history. Similarities are computed in
column blocks so memory stays at items × block, not items².
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from marketrec.features.interactions import weighted
from marketrec.models.scoring import Params, TrainContext

_BLOCK = 1024


class ItemKNNParams(Params):
    neighbours: int = Field(default=100, gt=0)
    shrink: float = Field(default=10.0, ge=0)
    binary: bool = True


class ItemKNNScorer:
    def __init__(self, params: ItemKNNParams | None = None) -> None:
        self.params = params or ItemKNNParams()
        self._similarity = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, ctx: TrainContext) -> None:
        x = weighted(ctx.interactions.matrix, self.params.binary).tocsc()
        n_items = x.shape[1]
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        xt = x.T.tocsr()
        k = min(self.params.neighbours, max(n_items - 1, 1))
        rows, cols, vals = [], [], []
        for start in range(0, n_items, _BLOCK):
            stop = min(start + _BLOCK, n_items)
            co = (xt @ x[:, start:stop]).toarray()  # items × block
            sim = co / (np.outer(norms, norms[start:stop]) + self.params.shrink + 1e-12)
            sim[np.arange(start, stop), np.arange(stop - start)] = 0.0
            top = (
                np.argpartition(-sim, k - 1, axis=0)[:k]
                if k < n_items
                else np.tile(np.arange(n_items)[:, None], (1, stop - start))
            )
            top_vals = np.take_along_axis(sim, top, axis=0)
            keep = top_vals > 0
            rows.append(top[keep])
            cols.append(np.broadcast_to(np.arange(start, stop), top.shape)[keep])
            vals.append(top_vals[keep])
        self._similarity = sp.csr_matrix(
            (
                np.concatenate(vals).astype(np.float32) if vals else np.zeros(0, np.float32),
                (
                    np.concatenate(rows) if rows else np.zeros(0, int),
                    np.concatenate(cols) if cols else np.zeros(0, int),
                ),
            ),
            shape=(n_items, n_items),
        )

    def score(
        self,
        user_rows: np.ndarray,
        history: sp.csr_matrix,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        scores = weighted(history, self.params.binary) @ self._similarity
        return np.asarray(scores.toarray(), dtype=np.float32)

    def item_to_item(self) -> sp.csr_matrix:
        """The kept similarities: an item's score is the sum of its column over the user's
        items."""
        return self._similarity

    def arrays(self) -> dict[str, np.ndarray]:
        s = self._similarity
        return {
            "data": s.data,
            "indices": s.indices,
            "indptr": s.indptr,
            "shape": np.array(s.shape),
        }

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._similarity = sp.csr_matrix(
            (arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(arrays["shape"])
        )
