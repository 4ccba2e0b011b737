"""`evaluate` on real ml-100k splits reproduces, to 1e-6, an independent pure-Python
implementation of CONTRACT §3 (and of the P1u split of §4), written from the text alone."""

from __future__ import annotations

import math
from collections import defaultdict

import polars as pl
import pytest

from conftest import ML100K, needs_ml100k
from marketrec.data.importers import import_movielens
from marketrec.data.split import Split, split_global, split_per_user
from marketrec.evaluation.offline import evaluate_recommendations
from marketrec.models.registry import create

pytestmark = [needs_ml100k, pytest.mark.slow]
KS = (10, 20, 100)


def reference_metrics(
    recs: dict[str, list[str]], targets: dict[str, set[str]], k: int, catalogue: int
) -> dict[str, float]:
    """CONTRACT §3, literally: per-user sums, then means over users with targets."""
    sums = defaultdict(float)
    shown: set[str] = set()
    for user, wanted in targets.items():
        ranked = recs.get(user, [])[:k]
        shown.update(ranked)
        hit_positions = [i for i, item in enumerate(ranked, start=1) if item in wanted]
        n = min(len(wanted), k)
        sums["HR"] += 1.0 if hit_positions else 0.0
        sums["Recall"] += len(hit_positions) / len(wanted)
        sums["MRR"] += 1.0 / hit_positions[0] if hit_positions else 0.0
        dcg = sum(1.0 / math.log2(i + 1) for i in hit_positions)
        sums["NDCG"] += dcg / sum(1.0 / math.log2(i + 1) for i in range(1, n + 1))
        sums["MAP"] += sum((j + 1) / i for j, i in enumerate(hit_positions)) / n
    users = len(targets)
    out = {f"{m}@{k}": v / users for m, v in sums.items()}
    out[f"Coverage@{k}"] = len(shown) / catalogue
    return out


def reference_targets(split: Split) -> dict[str, set[str]]:
    train_pairs = set(split.train.events.select("user_id", "item_id").iter_rows())
    targets: dict[str, set[str]] = defaultdict(set)
    for user, item, event, value in split.test.events.select(
        "user_id", "item_id", "event", "value"
    ).iter_rows():
        if event == "rating" and value >= 4 and (user, item) not in train_pairs:
            targets[user].add(item)
    return dict(targets)


@pytest.fixture(scope="module")
def ml100k():
    return import_movielens(ML100K)


def _check(split: Split, model_name: str, slices: dict[str, set[str] | None]) -> None:
    model = create(model_name).fit(split.train)
    targets = reference_targets(split)
    recs_frame = model.recommend(sorted(targets), max(KS))
    recs: dict[str, list[str]] = defaultdict(list)
    for user, item in recs_frame.sort("user_id", "rank").select("user_id", "item_id").iter_rows():
        recs[user].append(item)
    report = evaluate_recommendations(recs_frame, split, ks=KS)
    train_users = set(split.train.events.get_column("user_id").to_list())
    train_items = set(split.train.events.get_column("item_id").to_list())
    slice_targets = {
        "all": targets,
        "warm users": {u: t for u, t in targets.items() if u in train_users},
        "cold users": {u: t for u, t in targets.items() if u not in train_users},
        "cold items": {u: c for u, t in targets.items() if (c := t - train_items)},
    }
    for name in slices:
        expected_targets = slice_targets[name]
        assert report.slices[name]["users"] == len(expected_targets)
        if not expected_targets:
            continue
        for k in KS:
            expected = reference_metrics(recs, expected_targets, k, catalogue=1682)
            for key, value in expected.items():
                assert report.slices[name][key] == pytest.approx(value, abs=1e-6), (name, key)


def test_p1u_split_matches_the_protocol(ml100k) -> None:
    split = split_per_user(ml100k)
    by_user: dict[str, list[tuple]] = defaultdict(list)
    for pos, row in enumerate(ml100k.events.select("user_id", "item_id", "ts").iter_rows()):
        by_user[row[0]].append((row[2], pos, row[1]))
    expected_test = set()
    for user, rows in by_user.items():
        rows.sort()
        if len(rows) >= 5:
            n_test = max(1, math.floor(0.2 * len(rows)))
            expected_test.update((user, item) for _, _, item in rows[-n_test:])
    got = set(split.test.events.select("user_id", "item_id").iter_rows())
    assert got == expected_test
    assert split.train.events.height + split.test.events.height == 100_000


def test_p1u_metrics_match_reference(ml100k) -> None:
    _check(split_per_user(ml100k), "ease", {"all": None, "warm users": None})


def test_p1g_metrics_match_reference_per_slice(ml100k) -> None:
    split = split_global(ml100k, quantile=0.8)
    _check(
        split, "itemknn", {"all": None, "warm users": None, "cold users": None, "cold items": None}
    )
    assert pl.concat([split.train.events, split.test.events]).height == 100_000
