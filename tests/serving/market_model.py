"""A small marketplace and a fast pipeline model for the service tests (item-kNN retrieval:
trained in milliseconds, and its lists follow each user's history, so freshness shows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from marketrec.data.schema import Dataset, make_dataset
from marketrec.models.registry import create
from marketrec.pipeline.config import PipelineConfig
from marketrec.pipeline.recommender import Recommender

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CATEGORIES = ("Toys > Puzzles", "Toys > Dolls", "Garden > Tools")
ITEMS = [f"c{c}-{j}" for c in range(3) for j in range(6)]


def market() -> Dataset:
    """40 users viewing 6 of 18 items each (two per category) and buying one; `del` is
    delisted; `north-only` sells in the north only."""
    rows = []
    for u in range(40):
        user = f"u{u:02d}"
        for j in range(6):
            rows.append((user, f"c{j % 3}-{(u + j) % 6}", u + j, "view"))
        rows.append((user, f"c0-{u % 6}", u + 10, "purchase"))
        rows.append((user, "north-only", u + 11, "view"))
    events = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": [T0 + timedelta(hours=r[2]) for r in rows],
            "event": [r[3] for r in rows],
        }
    )
    catalogue = pl.DataFrame(
        {
            "item_id": [*ITEMS, "del", "north-only"],
            "category": [CATEGORIES[int(i[1])] for i in ITEMS] + [None, None],
            "available": [True] * len(ITEMS) + [False, True],
            "regions": [None] * (len(ITEMS) + 1) + [["north"]],
        }
    )
    users = pl.DataFrame(
        {
            "user_id": [f"u{u:02d}" for u in range(40)],
            "region": ["north"] * 20 + ["south"] * 20,
        }
    )
    return make_dataset(events, catalogue, users)


def train_model(folder: Path) -> Path:
    """Fit the pipeline around item-kNN on `market()` and save it to `folder`."""
    Recommender(create("itemknn"), PipelineConfig()).fit(market()).save(folder)
    return folder


def train_tower_model(folder: Path) -> Path:
    """The pipeline around a small two-tower (hashed text, 2 epochs: about 2 s), which places
    products listed live by their content, so a PUT item is recommendable at once."""
    params = {"text_encoder": "hashed", "epochs": 2, "validation_fraction": 0.0}
    Recommender(create("two-tower", params), PipelineConfig()).fit(market()).save(folder)
    return folder
