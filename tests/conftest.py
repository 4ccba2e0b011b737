"""Shared fixtures: small canonical datasets built in memory, and the real-data location."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import redis

from marketrec.data.schema import Dataset, make_dataset

# tests never keep text vectors between runs (nor write into the home folder)
os.environ.setdefault("MARKETREC_CACHE", "off")

#: ../shared/data beside the checkout; real-data tests skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k"
needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").exists(), reason=f"real dataset not present: {ML100K}"
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def events_frame(rows: list[tuple[str, str | None, int, str]], **extra: list) -> pl.DataFrame:
    """(user, item, hour offset, event) rows → an events frame."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": [T0 + timedelta(hours=r[2]) for r in rows],
            "event": [r[3] for r in rows],
            **extra,
        },
        schema_overrides={"item_id": pl.String},
    )


@pytest.fixture
def two_taste_world() -> Dataset:
    """Two groups with disjoint tastes and a known answer.

    30 users like items a0..a5, 30 like b0..b5; each user clicked 4 of their group's 6 items.
    Item p is listed but delisted; item n sells only in region "north". User `fresh` has a
    profile in region "south" but no events.
    """
    rows: list[tuple[str, str | None, int, str]] = []
    for group in ("a", "b"):
        for u in range(30):
            chosen = [(u + j) % 6 for j in range(4)]
            for h, i in enumerate(chosen):
                rows.append((f"{group}{u:02d}", f"{group}{i}", u * 10 + h, "click"))
    # a0 is the most popular item overall; n is popular in the north only.
    for u in range(10):
        rows.append((f"a{u:02d}", "n", 500 + u, "view"))
    items = pl.DataFrame(
        {
            "item_id": [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)] + ["p", "n"],
            "available": [True] * 12 + [False, True],
            "regions": [None] * 13 + [["north"]],
        }
    )
    users = pl.DataFrame(
        {
            "user_id": [f"a{u:02d}" for u in range(30)]
            + [f"b{u:02d}" for u in range(30)]
            + ["fresh"],
            "region": ["north"] * 30 + ["south"] * 30 + ["south"],
        }
    )
    return make_dataset(events_frame(rows), items, users)


#: Redis for the tests: database 15, each test under a key prefix of its own
REDIS_URL = "redis://127.0.0.1:6379/15"
REDIS_DOWN = "Redis not reachable at 127.0.0.1:6379"


@pytest.fixture(scope="session")
def redis_up() -> bool:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
        return True
    except redis.RedisError:
        return False


@pytest.fixture
def redis_prefix(redis_up: bool):
    """A unique key prefix in database 15; its keys are deleted afterwards (skips without
    a Redis server)."""
    if not redis_up:
        pytest.skip(REDIS_DOWN)
    prefix = f"marketrec-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


MARKET_CATEGORIES = ("Toys > Puzzles", "Toys > Dolls", "Garden > Tools")


def market_world() -> Dataset:
    """40 users; 18 old items in 3 categories (c0 most popular); 4 items listed on the last
    day with no events (new); `del` is delisted; `north-only` sells in the north only. Users
    view items of every category and buy one."""
    items = [f"c{c}-{j}" for c in range(3) for j in range(6)]
    rows = []
    for u in range(40):
        user = f"u{u:02d}"
        for j in range(6):  # two items of each category; over all users, every old item
            rows.append((user, f"c{j % 3}-{(u + j) % 6}", u + j, "view"))
        rows.append((user, f"c0-{u % 6}", u + 10, "purchase"))
        rows.append((user, "north-only", u + 11, "view"))
    new = [f"new{j}" for j in range(4)]
    catalogue = pl.DataFrame(
        {
            "item_id": [*items, *new, "del", "north-only"],
            "category": [MARKET_CATEGORIES[int(i[1])] for i in items]
            + [MARKET_CATEGORIES[2]] * 4
            + [None, None],
            "created_at": [T0 - timedelta(days=30)] * len(items)
            + [T0 + timedelta(hours=50)] * 4
            + [T0, T0],
            "available": [True] * (len(items) + 4) + [False, True],
            "regions": [None] * (len(items) + 5) + [["north"]],
        }
    )
    users = pl.DataFrame(
        {
            "user_id": [f"u{u:02d}" for u in range(40)] + ["newbie"],
            "region": ["north"] * 20 + ["south"] * 20 + ["south"],
        }
    )
    return make_dataset(events_frame(rows), catalogue, users)


def small_two_stage(market: Dataset, epochs: int = 2):  # -> Recommender
    """Item-kNN retrieval and a ranker trained for `epochs` on the small market world, with
    the ranker switched on (the tiny world's validation is too small to judge it)."""
    from marketrec.models.registry import create
    from marketrec.pipeline.config import PipelineConfig
    from marketrec.pipeline.ranking_stage import RankingParams
    from marketrec.pipeline.recommender import Recommender

    model = Recommender(
        create("itemknn"),
        PipelineConfig(candidates=12),
        RankingParams(epochs=epochs, random_negatives=3, candidates=12),
    ).fit(market)
    assert model.ranking is not None
    model.ranking.active = True
    return model


def user_tower_inputs(rows: int, history_length: int = 4, dropout: float = 0.0):
    """(tower, f, history, queries): a small user tower with random weights and random inputs
    for `rows` users: its features `f` (long-term bags included), the history item
    vectors (rows, history_length, 8) and the query vectors (rows, 12)."""
    import torch

    from marketrec.retrieval.towers import AGE_BUCKETS, EVENT_CODES, TowerSizes, UserTower

    sizes = TowerSizes(50, 6, 3, 4, 5, 12, 10, 3, (4, 5), 3, 3)
    tower = UserTower(sizes, dim=8, dropout=dropout, sparse_ids=False)
    for parameter in tower.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    f = {
        "id_bucket": torch.randint(0, 10, (rows,)),
        "id_mask": torch.tensor([1.0, 0.0] * rows)[:rows],
        "region": torch.randint(0, 3, (rows,)),
        "attributes": torch.stack([torch.randint(0, 4, (rows,)), torch.randint(0, 5, (rows,))], 1),
        "numeric": torch.randn(rows, 3),
        "device": torch.randint(0, 3, (rows,)),
        "hour": torch.randint(0, 25, (rows,)),
        "weekday": torch.randint(0, 8, (rows,)),
        "hist_event": torch.randint(0, len(EVENT_CODES) + 1, (rows, history_length)),
        "hist_age": torch.randint(0, AGE_BUCKETS, (rows, history_length)),
        "hist_mask": torch.rand(rows, history_length) < 0.3,
        "bag_items": torch.randint(0, 50, (3 * rows,)),
        "bag_offsets": torch.arange(rows) * 3,
    }
    return tower, f, torch.randn(rows, history_length, 8), torch.randn(rows, 12)
