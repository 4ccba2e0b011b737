"""The re-ranker's forward pass is the documented function: DIN attention over
[c, r, c * r, c - r], DCN-v2 cross layers x0 ⊙ (W x + b) + x beside a deep MLP, and a head over
[cross, deep] added to the weighted retrieval score, numeric features standardised and
clipped. The pass computes some of it block by block (no concatenations); this checks it
against the plain formulas."""

from __future__ import annotations

import torch

from marketrec.ranking.features import CATEGORICAL, NUMERIC
from marketrec.ranking.model import Ranker


def _plain(model: Ranker, numeric, categorical, recent, recent_category) -> torch.Tensor:
    embedded = [table(categorical[:, j]) for j, table in enumerate(model.embeddings)]
    item_table = model.embeddings[model.item_index]
    category_table = model.embeddings[model.category_index]
    candidate = embedded[model.item_index] + embedded[model.category_index]
    history = item_table(recent) + category_table(recent_category)
    c = candidate[:, None, :].expand_as(history)
    pad = recent == 0
    logits = model.attention.score(torch.cat([c, history, c * history, c - history], -1))
    weights = torch.softmax(logits.squeeze(-1).masked_fill(pad, -1e4), -1) * (~pad).float()
    pooled = (weights[..., None] * history).sum(1)
    x0 = torch.cat([torch.stack([*embedded, pooled], 1).flatten(1), numeric], -1)
    x0[:, -len(NUMERIC) :] = ((numeric - model.mean) / model.scale).clamp(-model.clip, model.clip)
    x = x0
    for layer in model.cross.layers:
        x = x0 * layer(x) + x
    residual = model.head(torch.cat([x, model.deep(x0)], -1)).squeeze(-1)
    prior = model.retrieval_weight * numeric[:, model.retrieval_index] + model.bias
    return prior + residual


def _random_ranker(seed: int) -> Ranker:
    """A ranker in eval mode with every weight random (the zero-initialised head too)."""
    torch.manual_seed(seed)
    model = Ranker(dict.fromkeys(CATEGORICAL, 40))
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    return model.eval()


def test_forward_is_the_plain_formula() -> None:
    torch.manual_seed(0)
    model = Ranker(dict.fromkeys(CATEGORICAL, 40), embedding_dropout=0.5)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.3)  # the zero-initialised head too
    model.mean.uniform_(-1, 1)
    model.scale.uniform_(0.5, 2)
    rows, recent_items = 64, 10
    numeric = torch.randn(rows, len(NUMERIC))
    categorical = torch.randint(0, 40, (rows, len(CATEGORICAL)))
    recent = torch.randint(0, 40, (rows, recent_items))
    recent[:, :3] = 0  # padding
    recent[0] = 0  # a user without recent items
    recent_category = torch.randint(0, 40, (rows, recent_items))
    model.eval()
    with torch.no_grad():
        got = model(numeric, categorical, recent, recent_category)
        want = _plain(model, numeric, categorical, recent, recent_category)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4)
    assert want.std() > 1.0  # the check compares non-trivial outputs


def test_rows_sharing_one_history_score_as_if_each_had_its_own() -> None:
    """A request's candidates share the user's recent items: the pass embeds them once,
    with the same logits as the per-row pass (checked by breaking the sharing in one row
    that is then left out)."""
    model = _random_ranker(1)
    rows = 30
    numeric = torch.randn(rows, len(NUMERIC))
    categorical = torch.randint(0, 40, (rows, len(CATEGORICAL)))
    recent = torch.randint(1, 40, (1, 10)).repeat(rows, 1)
    recent[:, :2] = 0
    recent_category = torch.randint(0, 40, (1, 10)).repeat(rows, 1)
    with torch.no_grad():
        shared = model(numeric, categorical, recent, recent_category)
        want = _plain(model, numeric, categorical, recent, recent_category)
        other = recent.clone()
        other[-1, -1] = (other[-1, -1] % 39) + 1  # the last row's history differs
        per_row = model(numeric, categorical, other, recent_category)
    torch.testing.assert_close(shared, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(per_row[:-1], want[:-1], rtol=1e-5, atol=1e-4)
    assert not torch.isclose(per_row[-1], want[-1])


def test_a_feature_far_outside_the_training_range_counts_as_the_clip() -> None:
    """A brand-new user's 365 days since a last event, standardised by a training spread of
    0.001, was 5,900 sd out and took the logits to millions: clipped, it weighs as 5 sd."""
    model = _random_ranker(2)
    rows = 8
    numeric = torch.randn(rows, len(NUMERIC))
    categorical = torch.randint(0, 40, (rows, len(CATEGORICAL)))
    recent = torch.randint(1, 40, (rows, 10))
    j = NUMERIC.index("user_days_since_last")
    model.scale[j] = 0.001
    far, at_clip = numeric.clone(), numeric.clone()
    far[:, j] = model.mean[j] + 5_900 * model.scale[j]
    at_clip[:, j] = model.mean[j] + model.clip * model.scale[j]
    with torch.no_grad():
        got = model(far, categorical, recent, recent)
        want = model(at_clip, categorical, recent, recent)
    torch.testing.assert_close(got, want)
    assert got.abs().max() < 100
