"""What a baseline implements: typed parameters and a `Scorer` (fit, score, arrays, restore).

The shared path in `models.base` turns any scorer into a full recommender, so a new model is
one small module: how to learn from interactions and how to score items for known users.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from marketrec.data.schema import Dataset
from marketrec.features.interactions import Interactions


class Params(BaseModel):
    """Base of typed hyper-parameters: frozen, unknown keys refused with a clear message."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class TrainContext:
    """What a scorer may learn from: interactions plus each user's home region."""

    interactions: Interactions
    user_region: np.ndarray  # per user row: region index, or -1 when unknown
    region_names: tuple[str, ...]
    data: Dataset
    listed_at: np.ndarray  # per item column: listing time, epoch seconds (NaN = unknown)


class Scorer(Protocol):
    """Scores every item for users; the recommender filters, ranks and handles cold users."""

    params: Params

    def fit(self, ctx: TrainContext) -> None: ...

    def score(
        self,
        user_rows: np.ndarray,
        history: sp.csr_matrix,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        """(len(user_rows), n_items) float32 scores.

        `history` holds those users' interaction rows; `region_idx` their region (index into
        `TrainContext.region_names`, or len(region_names) when unknown); `at` each user's
        ranking moment in epoch seconds (NaN or None: just after the training data), which
        models without a notion of time ignore.
        """
        ...

    def arrays(self) -> dict[str, np.ndarray]: ...

    def restore(self, arrays: dict[str, np.ndarray]) -> None: ...
