"""Business rules: what may never be shown to a user.

Items not sellable in the user's region and delisted items are left out by the retrieval
model itself (`CollaborativeRecommender.sellable`); here: items the user already had, per
event type, so a marketplace can show a viewed item again while never re-offering a purchase.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import scipy.sparse as sp

from marketrec.core.errors import ConfigError


@dataclass(frozen=True)
class SeenItems:
    """Per event type, a users × items boolean matrix of what each user did that to."""

    by_event: dict[str, sp.csr_matrix]
    shape: tuple[int, int]
    #: union matrices per choice of event types, built on first use (a request then slices
    #: one matrix instead of adding one per event type)
    _unions: dict[tuple[str, ...] | None, sp.csr_matrix] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def build(cls, events: pl.DataFrame, user_ids: pl.Series, item_ids: pl.Series) -> SeenItems:
        """`events`: user_id, item_id, event; ids outside the vocabularies are ignored."""
        users = pl.DataFrame({"user_id": user_ids, "u": np.arange(user_ids.len())})
        items = pl.DataFrame({"item_id": item_ids, "i": np.arange(item_ids.len())})
        pairs = (
            events.filter(pl.col("item_id").is_not_null())
            .select("user_id", "item_id", "event")
            .join(users, on="user_id")
            .join(items, on="item_id")
            .unique(["u", "i", "event"])
        )
        shape = (user_ids.len(), item_ids.len())
        by_event = {}
        for (event,), part in pairs.group_by("event"):
            u, i = part.get_column("u").to_numpy(), part.get_column("i").to_numpy()
            by_event[str(event)] = sp.csr_matrix((np.ones(len(u), dtype=bool), (u, i)), shape)
        return cls(by_event, shape)

    def exclusion(self, user_rows: np.ndarray, events: tuple[str, ...] | None) -> sp.csr_matrix:
        """(len(user_rows), n_items) items to leave out for these users (-1 rows: nothing):
        what they did any of `events` to (None: any event at all)."""
        key = None if events is None else tuple(sorted(set(events)))
        if key not in self._unions:
            chosen = [e for e in (self.by_event if key is None else key) if e in self.by_event]
            union = sp.csr_matrix(self.shape, dtype=np.float32)
            for event in chosen:  # an event type nobody had excludes nothing
                union = union + self.by_event[event].astype(np.float32)
            union.data[:] = 1.0
            self._unions[key] = union.tocsr()
        return _take_rows(self._unions[key], user_rows)

    def with_events(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        events: list[str],
        n_users: int,
        n_items: int | None = None,
    ) -> SeenItems:
        """These seen items plus live events (user rows, item columns, event names) for
        `n_users` user rows and `n_items` item columns (products listed live): a user's
        next list leaves out what they just did. The union matrices already built are
        updated, not rebuilt (a rebuild reads every pair)."""
        shape = (max(n_users, self.shape[0]), max(n_items or 0, self.shape[1]))
        kinds = np.array(events, dtype=object)

        def added(mask: np.ndarray) -> sp.csr_matrix:
            return sp.csr_matrix(
                (np.ones(int(mask.sum()), dtype=bool), (rows[mask], cols[mask])), shape=shape
            )

        by_event = {e: _grown(m, shape) for e, m in self.by_event.items()}
        for event in dict.fromkeys(events):
            more = added(kinds == event)
            by_event[event] = (by_event[event] + more if event in by_event else more).tocsr()
        unions = {}
        for key, union in self._unions.items():
            mask = np.ones(len(kinds), bool) if key is None else np.isin(kinds, list(key))
            grown = (_grown(union, shape) + added(mask).astype(np.float32)).tocsr()
            grown.data[:] = 1.0
            unions[key] = grown
        return SeenItems(by_event, shape, unions)

    def grown(self, n_users: int, n_items: int) -> SeenItems:
        """The same seen items over `n_users` rows and `n_items` columns (users and products
        first seen live, with nothing seen yet)."""
        empty = np.zeros(0, dtype=np.int64)
        return self.with_events(empty, empty, [], n_users, n_items)

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"shape": np.array(self.shape)}
        for event, m in self.by_event.items():
            coo = m.tocoo()
            out[f"{event}/rows"], out[f"{event}/cols"] = coo.row, coo.col
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SeenItems:
        if "shape" not in arrays:
            raise ConfigError("seen-items arrays lack their shape")
        shape = (int(arrays["shape"][0]), int(arrays["shape"][1]))
        events = {k.split("/")[0] for k in arrays if "/" in k}
        by_event = {
            e: sp.csr_matrix(
                (
                    np.ones(len(arrays[f"{e}/rows"]), dtype=bool),
                    (arrays[f"{e}/rows"], arrays[f"{e}/cols"]),
                ),
                shape,
            )
            for e in events
        }
        return cls(by_event, shape)


def _grown(matrix: sp.csr_matrix, shape: tuple[int, int]) -> sp.csr_matrix:
    """`matrix` with more (empty) rows and columns, when `shape` has more."""
    if matrix.shape == shape:
        return matrix
    out = matrix.copy()
    out.resize(shape)
    return out


def _take_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows of a CSR matrix (-1: an empty row), each with its stored entries in order: what
    `matrix[rows]` gives, without scipy's general fancy indexing (a one-user request's
    fixed cost)."""
    rows = np.asarray(rows, dtype=np.int64)
    safe = np.maximum(rows, 0)
    starts = matrix.indptr[safe]
    lengths = np.where(rows >= 0, matrix.indptr[safe + 1] - starts, 0)
    indptr = np.r_[0, np.cumsum(lengths)]
    positions = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
    return sp.csr_matrix(
        (matrix.data[positions], matrix.indices[positions], indptr),
        shape=(len(rows), matrix.shape[1]),
    )
