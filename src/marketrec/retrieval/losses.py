"""Sampled softmax for retrieval: in-batch and random negatives, logQ correction,
accidental-hit masking, per-example weights.

Row i's positive is candidate column i. In-batch candidates are other rows' positives, so
popular items appear as negatives far more often than uniform sampling would; subtracting
log of each candidate's expected count in the sample (logQ, Yi et al. 2019) keeps the softmax
an unbiased estimate of the full one. A candidate that is the row's own positive item under
another column (an "accidental hit") is removed, not punished.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def sampled_softmax_loss(
    users: Tensor,
    candidates: Tensor,
    positive_items: Tensor,
    candidate_items: Tensor,
    log_q: Tensor | None,
    temperature: float,
    weights: Tensor | None = None,
    unavailable: Tensor | None = None,
) -> Tensor:
    """Weighted mean cross-entropy of each row's positive against all candidates.

    users: (B, D); candidates: (C, D), or (C, D + 1) with each item's bias last (added to
    the logit after the temperature), the first B being the rows' positives in order;
    positive_items: (B,) item index per row; candidate_items: (C,) item index per column;
    log_q: (C,) log expected count of each candidate in the sample, or None; weights: (B,);
    unavailable: (B, C) true where a candidate was not in the catalogue at the row's moment
    (listed later): masked like an accidental hit, since no user could have chosen it then
    and, left in, it would teach the towers that "just listed" means "never chosen".
    """
    batch = users.shape[0]
    if candidates.shape[1] == users.shape[1] + 1:
        logits = users @ candidates[:, :-1].T / temperature + candidates[:, -1][None, :]
    else:
        logits = users @ candidates.T / temperature
    if log_q is not None:
        logits = logits - log_q[None, :]
    same_item = positive_items[:, None] == candidate_items[None, :]
    own_column = torch.zeros_like(same_item)
    own_column[:, :batch] = torch.eye(batch, dtype=torch.bool, device=users.device)
    masked = same_item
    if unavailable is not None:
        masked = masked | unavailable
    logits = logits.masked_fill(masked & ~own_column, float("-inf"))
    target = torch.arange(batch, device=users.device)
    losses = F.cross_entropy(logits, target, reduction="none")
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum().clamp(min=1e-12)


def mixed_log_q(
    positive_items: Tensor,
    random_items: Tensor,
    item_probability: Tensor,
    n_items: int,
) -> Tensor:
    """log Q for [in-batch positives, uniform random negatives]: B·p(item) for the in-batch
    columns (they were drawn as training targets), R/n_items for the uniform ones."""
    batch, randoms = positive_items.shape[0], random_items.shape[0]
    in_batch = torch.log(batch * item_probability[positive_items]).clamp(min=-30.0)
    uniform = torch.full(
        (randoms,),
        torch.log(torch.tensor(randoms / max(n_items, 1))).item(),
        device=positive_items.device,
    )
    return torch.cat([in_batch, uniform])


def full_softmax_loss(
    users: Tensor,
    catalogue: Tensor,
    positive_items: Tensor,
    temperature: float,
    weights: Tensor | None = None,
    masked: Tensor | None = None,
) -> Tensor:
    """Weighted mean cross-entropy of each row's positive against the whole catalogue.

    users: (B, D); catalogue: (N, D) or (N, D + 1) with each item's bias last; positive_items:
    (B,) catalogue index of each row's target; weights: (B,); masked: (B, N) true where an
    item is left out of a row's softmax (not yet listed at its moment, or already touched
    by the user: it can never be recommended to them, so it is neither a target nor a fair
    negative). A row's own positive is never masked.

    The exact softmax needs no sampling correction (every item is a candidate exactly once),
    and for catalogues of a few thousand items it costs no more than the sampled one: the
    item tower runs over the catalogue instead of the batch's positives and random negatives.
    """
    # (B, N) is the big operand: scale the users, add the bias inside the product and mask
    # in place, so the logits are written once before the softmax (memory-bound on a CPU)
    scaled = users / temperature
    if catalogue.shape[1] == users.shape[1] + 1:
        logits = torch.addmm(catalogue[:, -1], scaled, catalogue[:, :-1].T)
    else:
        logits = scaled @ catalogue.T
    if masked is not None:
        masked = masked.clone()
        masked[torch.arange(len(positive_items), device=users.device), positive_items] = False
        logits = logits.masked_fill_(masked, float("-inf"))
    losses = F.cross_entropy(logits, positive_items, reduction="none")
    if weights is None:
        return losses.mean()
    return (losses * weights).sum() / weights.sum().clamp(min=1e-12)
