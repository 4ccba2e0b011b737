"""The history encoder computes exactly a transformer encoder layer's summary-token output."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the retrieval stage")

from torch import nn  # noqa: E402

from conftest import user_tower_inputs  # noqa: E402
from marketrec.retrieval.towers import SummaryAttention  # noqa: E402


def test_summary_attention_equals_a_transformer_layer_at_position_zero() -> None:
    torch.manual_seed(0)
    block = SummaryAttention(16, 2)
    reference = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    reference.load_state_dict(block.state_dict(), strict=True)  # same parameter names
    reference.eval()
    tokens = torch.randn(4, 6, 16)
    padding = torch.zeros(4, 6, dtype=torch.bool)
    padding[:, 4:] = True
    padding[0, 1:] = True  # only the summary token
    expected = reference(tokens, src_key_padding_mask=padding)[:, 0]
    torch.testing.assert_close(block(tokens, padding), expected, atol=1e-5, rtol=1e-5)
    given = block(tokens, padding, first=tokens[:, 0].clone())
    torch.testing.assert_close(given, expected, atol=1e-5, rtol=1e-5)


def test_summary_attention_has_the_transformer_layers_gradients() -> None:
    """The projections moved off the tokens must train the same weights the same way."""
    torch.manual_seed(1)
    block = SummaryAttention(16, 2)
    reference = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    reference.load_state_dict(block.state_dict(), strict=True)
    tokens = torch.randn(5, 7, 16)
    padding = torch.zeros(5, 7, dtype=torch.bool)
    padding[1, 3:] = True
    padding[2, 1:] = True
    upstream = torch.randn(5, 16)
    ours, theirs = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    (block(ours, padding) * upstream).sum().backward()
    (reference(theirs, src_key_padding_mask=padding)[:, 0] * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-4)
    mine = dict(block.named_parameters())
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(mine[name].grad, parameter.grad, atol=1e-5, rtol=1e-4)


def test_item_tower_masks_in_one_pass_equal_separate_passes() -> None:
    from marketrec.retrieval.inputs import SHARE_WINDOWS_DAYS
    from marketrec.retrieval.towers import ItemTower, TowerSizes

    torch.manual_seed(0)
    sizes = TowerSizes(50, 6, 3, 4, 5, 12, 10, 2, (), 0, 2)
    tower = ItemTower(sizes, dim=8, dropout=0.0, sparse_ids=False).eval()
    n = 7
    f = {
        "id_bucket": torch.randint(0, 50, (n,)),
        "category": torch.randint(0, 6, (n,)),
        "top_category": torch.randint(0, 3, (n,)),
        "brand": torch.randint(0, 4, (n,)),
        "tags": torch.randint(0, 5, (n, 2)),
        "price": torch.randint(0, 5, (n,)),
        "age": torch.randint(0, 5, (n,)),
        "text": torch.randn(n, 12),
        "trend_day": torch.randint(0, 5, (n,)),
        "trend_week": torch.randint(0, 5, (n,)),
        "trend_share": torch.randint(0, 5, (n, len(SHARE_WINDOWS_DAYS))),
        "trend_level": torch.randn(n, len(SHARE_WINDOWS_DAYS)),
    }
    masks = [torch.ones(n), torch.tensor([1.0, 0, 1, 0, 0, 1, 1])]
    together = tower.forward_masks(f, masks)
    for mask, joint in zip(masks, together, strict=True):
        parts = [
            tower.id(f["id_bucket"]) * mask[:, None],
            tower.category(f["category"]),
            tower.top_category(f["top_category"]),
            tower.brand(f["brand"]),
            tower.tags(f["tags"]),
            tower.price(f["price"]),
            tower.age(f["age"]),
            tower.text(f["text"]),
            tower.trend_day(f["trend_day"]) * mask[:, None],
            tower.trend_week(f["trend_week"]) * mask[:, None],
            sum(t(f["trend_share"][:, j]) for j, t in enumerate(tower.trend_share)) * mask[:, None],
            tower.trend_level(f["trend_level"]) * mask[:, None],
        ]
        x = torch.cat(parts, dim=-1)
        expected = torch.cat(
            [torch.nn.functional.normalize(tower.mlp(x), dim=-1), tower.bias(x)], dim=-1
        )
        torch.testing.assert_close(joint, expected, rtol=1e-5, atol=1e-6)


def test_item_tower_loads_weights_saved_before_the_untrained_shift() -> None:
    from marketrec.retrieval.towers import ItemTower, TowerSizes

    sizes = TowerSizes(50, 6, 3, 4, 5, 12, 10, 2, (), 0, 2)
    saved = ItemTower(sizes, dim=8, dropout=0.0, sparse_ids=False)
    saved.untrained_shift.fill_(-0.5)
    state = saved.state_dict()
    assert float(state["untrained_shift"]) == -0.5
    old = {k: v for k, v in state.items() if k != "untrained_shift"}
    loaded = ItemTower(sizes, dim=8, dropout=0.0, sparse_ids=False)
    loaded.untrained_shift.fill_(3.0)
    loaded.load_state_dict(old)  # strict: an older folder has no shift, which means 0
    assert float(loaded.untrained_shift) == 0.0
    loaded.load_state_dict(state)
    assert float(loaded.untrained_shift) == -0.5


def test_bag_matrix_product_is_the_embedding_bag_mean_and_gradient() -> None:
    """The long-term bag's sparse product: padding (index 0) left out of each mean, empty
    bags (leading, inner, trailing) zeros, the same table gradient as `nn.EmbeddingBag`."""
    from marketrec.retrieval.towers import _BagMean, bag_matrix

    torch.manual_seed(2)
    table = nn.EmbeddingBag(12, 5, mode="mean", padding_idx=0)
    items = torch.tensor([3, 0, 7, 0, 0, 11, 5, 5, 1])
    offsets = torch.tensor([0, 0, 3, 5, 5, 9, 9])  # bags: [], 3 items, all padding, [], 4, [], []
    upstream = torch.randn(len(offsets), 5)
    expected = table(items, offsets)
    (expected * upstream).sum().backward()
    gradient = table.weight.grad.clone()
    table.weight.grad = None
    got = _BagMean.apply(table.weight, bag_matrix(items, offsets, 12))
    (got * upstream).sum().backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(table.weight.grad, gradient)
    assert got[[0, 2, 3, 5, 6]].abs().sum() == 0


@pytest.mark.parametrize("rows", [4, 40])
def test_projected_tables_equal_lookup_then_linear(rows: int) -> None:
    """Small tables are projected before the lookup, large ones after: same values, same
    gradients, for embeddings and mean bags."""
    from marketrec.retrieval.towers import _projected

    torch.manual_seed(3)
    columns = nn.Parameter(torch.randn(7, 6))
    for table, codes in [
        (nn.Embedding(10, 6), torch.randint(0, 10, (rows,))),
        (nn.EmbeddingBag(10, 6, mode="mean", padding_idx=0), torch.randint(0, 10, (rows, 3))),
    ]:
        upstream = torch.randn(rows, 7)
        expected = table(codes) @ columns.T
        (expected * upstream).sum().backward()
        grads = table.weight.grad.clone(), columns.grad.clone()
        table.weight.grad, columns.grad = None, None
        got = _projected(table, codes, columns, rows)
        (got * upstream).sum().backward()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(table.weight.grad, grads[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(columns.grad, grads[1], atol=1e-5, rtol=1e-5)
        columns.grad = None


def test_dropout_masks_keep_the_expected_activation() -> None:
    import numpy as np

    from marketrec.retrieval.towers import dropout, dropout_mask

    mask = dropout_mask(np.random.default_rng(0), (200, 100), 0.25)
    assert abs(float((mask == 0).float().mean()) - 0.25) < 0.01
    assert abs(float(mask.mean()) - 1.0) < 0.02
    layer = nn.Dropout(0.25)
    hidden = torch.ones(200, 100)
    torch.testing.assert_close(dropout(layer, hidden, mask), mask)
    layer.eval()  # serving: no dropout, whatever the batch brought
    torch.testing.assert_close(dropout(layer, hidden, mask), hidden)


@pytest.mark.parametrize("rows", [1, 6])
def test_user_tower_serves_the_function_it_trains(rows: int) -> None:
    """Serving (eval) runs the first layer over the plain concatenation, training block by
    block (small tables projected first): the same vectors and, in training, gradients."""
    torch.manual_seed(4)
    tower, f, history, queries = user_tower_inputs(rows)
    tower.train()  # dropout 0: training's function is serving's
    trained = tower(f, history, queries)
    upstream = torch.randn_like(trained)
    (trained * upstream).sum().backward()
    tower.eval()
    served = tower(f, history, queries)
    torch.testing.assert_close(served, trained, atol=1e-5, rtol=1e-5)
    assert trained.std() > 0.1
    grads = {name: p.grad.clone() for name, p in tower.named_parameters() if p.grad is not None}
    tower.zero_grad()
    (served * upstream).sum().backward()  # serving's path trains the same weights alike
    for name, parameter in tower.named_parameters():
        if name in grads:
            torch.testing.assert_close(parameter.grad, grads[name], atol=1e-4, rtol=1e-4)
