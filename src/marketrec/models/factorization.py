"""Matrix factorisation baselines from the `implicit` library: ALS and BPR.

ALS (Hu, Koren & Volinsky 2008) fits confidence-weighted implicit feedback, c = 1 + α·w; BPR
(Rendle et al. 2009) optimises pairwise ranking with sampled negatives. We keep only the learnt
factors, so scoring is one matrix product and the model folder holds plain arrays.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from threadpoolctl import threadpool_limits

from marketrec.features.interactions import weighted
from marketrec.models.scoring import Params, TrainContext

log = logging.getLogger(__name__)


class ALSParams(Params):
    factors: int = Field(default=64, gt=0)
    regularization: float = Field(default=0.05, ge=0)
    alpha: float = Field(default=10.0, gt=0)
    iterations: int = Field(default=15, gt=0)
    seed: int = 0


class BPRParams(Params):
    factors: int = Field(default=64, gt=0)
    learning_rate: float = Field(default=0.05, gt=0)
    regularization: float = Field(default=0.01, ge=0)
    iterations: int = Field(default=100, gt=0)
    seed: int = 0
    threads: int = Field(default=1, ge=0)
    """Hogwild SGD threads race, so only 1 is reproducible per seed; 0 = all cores."""


class _FactorScorer:
    """Scores are user factors · item factors."""

    params: Params
    #: users first seen live have no factors: the shared path gives them the fallback
    trained_rows_only = True

    def __init__(self) -> None:
        self._user_factors = np.zeros((0, 0), dtype=np.float32)
        self._item_factors = np.zeros((0, 0), dtype=np.float32)

    def score(
        self,
        user_rows: np.ndarray,
        history: sp.csr_matrix,
        region_idx: np.ndarray,
        at: np.ndarray | None = None,
    ) -> np.ndarray:
        return self._user_factors[user_rows] @ self._item_factors.T

    def arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self._user_factors, "item_factors": self._item_factors}

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._user_factors = arrays["user_factors"]
        self._item_factors = arrays["item_factors"]

    def _keep(self, model: object) -> None:
        self._user_factors = np.asarray(model.user_factors, dtype=np.float32)  # type: ignore[attr-defined]
        self._item_factors = np.asarray(model.item_factors, dtype=np.float32)  # type: ignore[attr-defined]


class ALSScorer(_FactorScorer):
    def __init__(self, params: ALSParams | None = None) -> None:
        super().__init__()
        self.params: ALSParams = params or ALSParams()

    def fit(self, ctx: TrainContext) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        p = self.params
        # implicit's solver is multi-threaded itself; a BLAS pool underneath only contends.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=p.factors,
                regularization=p.regularization,
                alpha=p.alpha,
                iterations=p.iterations,
                random_state=p.seed,
            )
            model.fit(ctx.interactions.matrix.astype(np.float32), show_progress=False)
        self._keep(model)


class BPRScorer(_FactorScorer):
    def __init__(self, params: BPRParams | None = None) -> None:
        super().__init__()
        self.params: BPRParams = params or BPRParams()

    def fit(self, ctx: TrainContext) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        p = self.params
        binary = weighted(ctx.interactions.matrix, binary=True)
        with threadpool_limits(1, "blas"):
            model = BayesianPersonalizedRanking(
                factors=p.factors,
                learning_rate=p.learning_rate,
                regularization=p.regularization,
                iterations=p.iterations,
                random_state=p.seed,
                num_threads=p.threads,
            )
            model.fit(binary, show_progress=False)
        self._keep(model)
