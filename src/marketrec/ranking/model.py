"""The re-ranker network: DCN-v2 over feature embeddings, with target attention.

Categorical features get embeddings; numeric ones are standardised (mean and spread of the
training rows, stored with the model) and clipped to ±5 spreads, so a value no training row
came near (a brand-new user against a window of active ones) cannot dominate the logit. The
candidate attends over the user's recent items (DIN-style target attention: weights from the
candidate, each recent item's embedding and their product), so "similar to what I just
looked at" is learned per candidate. A DCN-v2 cross
network (x_{l+1} = x_0 ⊙ (W x_l + b) + x_l) learns explicit feature crosses beside a deep MLP;
one logit comes out, trained with binary cross-entropy.

The logit is the retrieval score (standardised within the list) times a learned weight plus
what the network adds; the network's output layer starts at zero, so training starts from the
retrieval order and moves away from it only where the features say so. Started from random
outputs instead, the ranker spent its few epochs relearning what retrieval already knew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marketrec.ranking.features import CATEGORICAL, NUMERIC


class TargetAttention(nn.Module):
    """Pools the recent items' embeddings with weights that depend on the candidate."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, candidate: Tensor, recent: Tensor, pad: Tensor) -> Tensor:
        """candidate (B, D), recent (B, R, D), pad (B, R) true where empty → (B, D); or
        recent (1, R, D) and pad (1, R): one history shared by every row (a request's
        candidates), whose own terms are then computed once."""
        # the first layer over [c, r, c * r, c - r], block by block: (W1 + W4) c once per row
        # and (W2 - W4) r + W3 (c * r) per recent item, the same function without the
        # (B, R, 4D) concatenation, which was a fifth of a request's ranker pass
        first, second = self.score[0], self.score[2]
        w = first.weight.view(first.out_features, 4, -1)
        own = F.linear(candidate, w[:, 0] + w[:, 3], first.bias)[:, None, :]
        hidden = (
            own
            + F.linear(recent, w[:, 1] - w[:, 3])
            + F.linear(candidate[:, None] * recent, w[:, 2])
        )
        logits = second(F.relu(hidden)).squeeze(-1)
        logits = logits.masked_fill(pad, -1e4)
        weights = torch.softmax(logits, dim=-1) * (~pad).float()
        if len(recent) == 1:
            return weights @ recent[0]
        return (weights[..., None] * recent).sum(1)


class CrossNetwork(nn.Module):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = torch.addcmul(x, x0, layer(x))  # x0 * layer(x) + x in one op
        return x


class Ranker(nn.Module):
    #: standardised numeric features are clipped to ±clip training standard deviations
    clip = 5.0

    def __init__(
        self,
        cardinality: dict[str, int],
        dim: int = 16,
        hidden: int = 128,
        cross_layers: int = 2,
        dropout: float = 0.1,
        embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding_dropout = embedding_dropout
        self.embeddings = nn.ModuleList(
            nn.Embedding(cardinality[name], dim) for name in CATEGORICAL
        )
        self.item_index = CATEGORICAL.index("item_bucket")
        self.category_index = CATEGORICAL.index("category")
        self.attention = TargetAttention(dim)
        self.register_buffer("mean", torch.zeros(len(NUMERIC)))
        self.register_buffer("scale", torch.ones(len(NUMERIC)))
        width = dim * (len(CATEGORICAL) + 1) + len(NUMERIC)
        self.cross = CrossNetwork(width, cross_layers)
        self.deep = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(width + hidden // 2, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.retrieval_index = NUMERIC.index("retrieval_z")
        self.retrieval_weight = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(-3.0))  # most candidates are not chosen

    def forward(
        self, numeric: Tensor, categorical: Tensor, recent: Tensor, recent_category: Tensor
    ) -> Tensor:
        """→ (B,) logits."""
        embedded = [table(categorical[:, j]) for j, table in enumerate(self.embeddings)]
        item_table = self.embeddings[self.item_index]
        category_table = self.embeddings[self.category_index]
        candidate = embedded[self.item_index] + embedded[self.category_index]
        if len(recent) > 1 and _one_history(recent, recent_category):
            # every row has the same recent items (one user's candidates): embed them once
            recent, recent_category = recent[:1], recent_category[:1]
        history = item_table(recent) + category_table(recent_category)
        pooled = self.attention(candidate, history, recent == 0)
        # clipped: a value the training rows never came near (a brand-new user's 365 days
        # since a last event, against a training window of active users: z ≈ 5,900 where
        # the spread was 0.001) took the logits to millions and ordered a list at random
        standardised = ((numeric - self.mean) / self.scale).clamp(-self.clip, self.clip)
        if self.training and self.embedding_dropout > 0:
            # whole embeddings blanked per row (and the pooled history with them), so the
            # ranker cannot lean on memorised item or category identities alone
            codes = torch.stack([*embedded, pooled], dim=1)  # (B, groups, D)
            keep = torch.rand(codes.shape[:2], device=codes.device) >= self.embedding_dropout
            codes = codes * keep[..., None] / (1.0 - self.embedding_dropout)
            x0 = torch.cat([codes.flatten(1), standardised], dim=-1)
        else:  # the same layout in one concatenation (a request's pass counts its ops)
            x0 = torch.cat([*embedded, pooled, standardised], dim=-1)
        # the head over [cross, deep] as two products: no concatenation of the two
        width = x0.shape[1]
        head = self.head.weight
        residual = F.linear(self.cross(x0), head[:, :width], self.head.bias) + F.linear(
            self.deep(x0), head[:, width:]
        )
        residual = residual.squeeze(-1)
        prior = self.retrieval_weight * numeric[:, self.retrieval_index] + self.bias
        return prior + residual


def _one_history(recent: Tensor, recent_category: Tensor) -> bool:
    """Whether every row holds the first row's recent items and their categories."""
    return bool((recent == recent[:1]).all()) and bool(
        (recent_category == recent_category[:1]).all()
    )
