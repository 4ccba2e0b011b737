"""Large id tables train with lazy sparse Adam (a step touches only the rows a batch used);
small ones with dense Adam, and never with weight decay."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the two-tower model")

from marketrec.retrieval.towers import TowerSizes, TwoTower  # noqa: E402
from marketrec.retrieval.training import TrainingConfig, _Optimizer  # noqa: E402

SIZES = TowerSizes(
    item_ids=50,
    categories=4,
    top_categories=3,
    brands=3,
    tags=3,
    text_dim=8,
    user_ids=40,
    regions=3,
    attributes=(3,),
    numeric=0,
    devices=2,
)


def test_large_id_tables_are_sparse_and_untouched_rows_stay_put() -> None:
    model = TwoTower(SIZES, dim=8, dropout=0.0, sparse_ids=True)
    optimizer = _Optimizer(model, TrainingConfig(learning_rate=0.1))
    sparse = {id(p) for group in optimizer._sparse.param_groups for p in group["params"]}
    tables = [model.items.id.weight, model.users.id.weight, model.users.long_term.weight]
    assert sparse == {id(t) for t in tables}
    before = model.items.id.weight.detach().clone()
    dense_before = model.items.mlp[0].weight.detach().clone()
    used = torch.tensor([3, 7])
    loss = (model.items.id(used).sum(1) ** 2).sum() + model.items.mlp[0].weight.sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.items.id.weight.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 7]
    assert not torch.equal(model.items.mlp[0].weight.detach(), dense_before)


def test_small_id_tables_are_dense_without_weight_decay() -> None:
    model = TwoTower(SIZES, dim=8, dropout=0.0)  # 90 id rows: below the sparse threshold
    optimizer = _Optimizer(model, TrainingConfig(weight_decay=0.1, id_learning_rate=0.5))
    assert optimizer._sparse is None
    tables = {
        id(model.items.id.weight),
        id(model.users.id.weight),
        id(model.users.long_term.weight),
    }
    groups = optimizer._dense.param_groups
    id_group = next(g for g in groups if {id(p) for p in g["params"]} == tables)
    assert id_group["weight_decay"] == 0.0 and id_group["lr"] == 0.5
    rest = [g for g in groups if g is not id_group]
    assert all(g["weight_decay"] == 0.1 for g in rest)


def test_cosine_plan_halves_at_midpoint_and_ends_at_zero_constant_stays() -> None:
    model = TwoTower(SIZES, dim=8, dropout=0.0, sparse_ids=True)
    config = TrainingConfig(learning_rate=0.1, id_learning_rate=0.4, lr_schedule="cosine")
    optimizer = _Optimizer(model, config)

    def rates() -> list[float]:
        groups = [*optimizer._dense.param_groups, *optimizer._sparse.param_groups]
        return [g["lr"] for g in groups]

    optimizer.decay(0.0, config)
    assert rates() == pytest.approx([0.1, 0.4])
    optimizer.decay(0.5, config)
    assert rates() == pytest.approx([0.05, 0.2])
    optimizer.decay(1.0, config)
    assert rates() == pytest.approx([0.0, 0.0], abs=1e-12)
    constant = TrainingConfig(learning_rate=0.1)
    steady = _Optimizer(model, constant)
    steady.decay(0.7, constant)
    assert [g["lr"] for g in steady._dense.param_groups] == [0.1]


def test_weight_average_follows_the_weights_by_its_decay_and_is_off_at_zero() -> None:
    from marketrec.retrieval.training import _WeightAverage

    model = TwoTower(SIZES, dim=8, dropout=0.0, sparse_ids=False)
    assert _WeightAverage(model, False).model is model
    averaged = _WeightAverage(model, True)
    start = model.items.text.weight.detach().clone()
    with torch.no_grad():
        model.items.text.weight.add_(1.0)
    averaged.update(0.75)
    # 0.75 · old + 0.25 · new, the live weights untouched
    torch.testing.assert_close(averaged.model.items.text.weight, start + 0.25)
    torch.testing.assert_close(model.items.text.weight, start + 1.0)
    averaged.update(0.75)
    torch.testing.assert_close(averaged.model.items.text.weight, start + 0.75 * 0.25 + 0.25)
