"""A second model's opinion of each candidate: item-to-item weights of EASE or item-kNN.

Retrieval models that learn different things make different mistakes. On ml-100k P1u, the
reciprocal-rank blend of the two-tower's and EASE's lists scored NDCG@10 0.210 where either
alone scored 0.189 and 0.177. A re-ranker that sees both scores can learn that blend, and
more: in which users and items to trust which. The companion is an item-to-item model, so
its score of a candidate is a sum of weights from the items of the user's history. That
sum is read from the ranking state's events as of each row's moment, so it is point in time
and a live event changes it on the next request, like the ranker's other user features.

The weights are frozen between retrains, like the co-occurrence table. The training lists
read a companion fitted on the events before the ranker's window, and serving reads one
fitted on every event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

#: rows × items of one dense block of history @ weights (float32: 80 MB)
_BLOCK_CELLS = 20_000_000


@dataclass(frozen=True)
class Companion:
    """Item-to-item weights (dense for EASE, CSR for item-kNN) over the retrieval model's
    item columns; the score of item j for a history H is the sum of weights[h, j] over the
    distinct items h of H. Items listed after the fit score 0."""

    name: str
    weights: np.ndarray | sparse.csr_matrix

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[0])

    def scores(self, history: sparse.csr_matrix, run: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Score of each row's item (`items` (R,)) for its run's history (`history`: runs ×
        at least `n_items` items, binary; `run` (R,): the row's history row)."""
        out = np.zeros(len(items), dtype=np.float32)
        n = self.n_items
        history = history[:, :n]  # items listed after the fit have no weights
        known = items < n
        if not known.any() or history.nnz == 0:
            return out
        rows, cols = run[known], items[known]
        block = max(1, _BLOCK_CELLS // max(n, 1))
        values = np.zeros(len(rows), dtype=np.float32)
        for start in range(0, history.shape[0], block):
            stop = min(start + block, history.shape[0])
            inside = np.flatnonzero((rows >= start) & (rows < stop))
            if not len(inside):
                continue
            part = history[start:stop] @ self.weights
            if sparse.issparse(part):
                picked = np.asarray(part[rows[inside] - start, cols[inside]]).ravel()
            else:
                picked = np.asarray(part)[rows[inside] - start, cols[inside]]
            values[inside] = picked
        out[known] = values
        return out

    # ----------------------------------------------------------------- persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        w = self.weights
        if sparse.issparse(w):
            return {
                "name": np.array(self.name),
                "data": w.data,
                "indices": w.indices,
                "indptr": w.indptr,
                "shape": np.array(w.shape),
            }
        return {"name": np.array(self.name), "dense": w}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Companion:
        if "dense" in a:
            return cls(str(a["name"]), a["dense"])
        shape = tuple(int(s) for s in a["shape"])
        return cls(
            str(a["name"]), sparse.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=shape)
        )
