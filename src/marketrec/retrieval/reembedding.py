"""A fine-tuned version's catalogue from the previous version's: re-embed only the items
whose vectors can have changed, and move only those rows in the serving index.

An item's vector is a function of the item tower's weights and of the item's inputs at the
model's "now": its id row, its catalogue fields, its age and trend inputs, and whether it
was ever a training target (untrained items are placed by content alone, plus a shift).
Fine-tuning with the shared item layers frozen (`training.WarmStart.item_layers`) changes
only the id rows that received gradients (the new targets, their sampled negatives and, under
the exact softmax of small catalogues, every row), so comparing those few things between the
two versions names every item whose vector changed, exactly: nothing is guessed from
neighbourhoods. The rest are copied, and keep their inverted lists in the index.

When a shared layer did change (a fine-tune that trained them too), or every item's inputs
moved (the trend inputs of a model with time features: an item's share of all recent events
changes with every event, its own or not), every item is re-embedded; the index still keeps
its centroids, so only the rows' nearest lists are looked up, and k-means is not run again
(most of an index build).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from marketrec.retrieval.index import ColumnIndex
from marketrec.retrieval.training import TwoTowerData, item_features, item_vectors

if TYPE_CHECKING:
    from collections.abc import Callable

    from marketrec.retrieval.towers import TwoTower

#: the item tower's tensors a fine-tune may change without re-embedding every item
_PER_ITEM = ("id.weight", "untrained_shift")


@dataclass(frozen=True)
class Catalogue:
    """One version's item vectors: the tower and inputs they came from, at `at`."""

    model: TwoTower
    data: TwoTowerData
    vectors: np.ndarray  # (n_items, dim + 1)
    at: float  # the version's "now" (epoch seconds)


@dataclass(frozen=True)
class TunedCatalogue:
    vectors: np.ndarray  # (n_items, dim + 1), new columns
    reembedded: np.ndarray  # (n_items,) bool: computed by the new tower, not copied
    index: ColumnIndex | None  # the previous index with the re-embedded rows moved


def changed_items(
    previous: Catalogue, model: TwoTower, data: TwoTowerData, at: float, previous_column: np.ndarray
) -> np.ndarray:
    """(n_items,) bool over the new columns: True where the vector may differ from the
    previous version's (`previous_column[i]`: the item's previous column, -1 = new)."""
    n = len(data.items.id_bucket)
    old_state, new_state = previous.model.items.state_dict(), model.items.state_dict()
    shared = [name for name in new_state if name not in _PER_ITEM]
    if any(not torch.equal(old_state[name], new_state[name]) for name in shared):
        return np.ones(n, dtype=bool)
    changed = previous_column < 0
    mapped = np.flatnonzero(~changed)
    old_rows = previous_column[mapped]
    new_inputs = item_features(data, mapped, np.full(len(mapped), at))
    old_inputs = item_features(previous.data, old_rows, np.full(len(mapped), previous.at))
    differs = np.zeros(len(mapped), dtype=bool)
    for name, tensor in new_inputs.items():
        unequal = (tensor != old_inputs[name]).numpy()
        differs |= unequal.reshape(len(mapped), -1).any(axis=1)
    trained = data.item_trained[mapped].astype(bool)
    differs |= trained != previous.data.item_trained[old_rows].astype(bool)
    rows = (new_state["id.weight"] != old_state["id.weight"]).any(dim=1).numpy()
    differs |= trained & rows[data.items.id_bucket[mapped]]  # the id part is masked off else
    if not torch.equal(new_state["untrained_shift"], old_state["untrained_shift"]):
        differs |= ~trained
    changed[mapped[differs]] = True
    return changed


def tuned_catalogue(
    previous: Catalogue,
    previous_index: ColumnIndex | None,
    model: TwoTower,
    data: TwoTowerData,
    at: float,
    previous_column: np.ndarray,
    scaled: Callable[[np.ndarray], np.ndarray],
) -> TunedCatalogue:
    """The new version's vectors over its columns: the previous ones where nothing changed
    (`changed_items`), the new tower's elsewhere; and, when the previous version had a
    serving index, that index with the changed and the new rows placed afresh (`scaled`
    turns item vectors into index rows)."""
    changed = changed_items(previous, model, data, at, previous_column)
    vectors = np.empty((len(changed), previous.vectors.shape[1]), dtype=np.float32)
    kept = np.flatnonzero(~changed)
    vectors[kept] = previous.vectors[previous_column[kept]]
    fresh = np.flatnonzero(changed)
    if len(fresh):
        vectors[fresh] = item_vectors(model, data, at, rows=fresh)
    index = None
    if previous_index is not None:
        index = previous_index.updated(scaled(vectors), np.where(changed, -1, previous_column))
    return TunedCatalogue(vectors, changed, index)
