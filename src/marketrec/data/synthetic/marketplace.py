"""The public entry points: build the whole world from one seeded generator, and save it.

The stages run in a fixed order on a single `PCG64(seed)` generator (world, items, users,
behaviour); reordering them, or drawing anywhere else, would change every seed's output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from marketrec.data.schema import Dataset, make_dataset
from marketrec.data.synthetic.catalogue import _make_items
from marketrec.data.synthetic.config import SyntheticConfig
from marketrec.data.synthetic.population import _make_users
from marketrec.data.synthetic.sessions import _simulate
from marketrec.data.synthetic.truth import GROUND_TRUTH_DIR, GroundTruth
from marketrec.data.synthetic.world import _World


def generate_marketplace(config: SyntheticConfig) -> tuple[Dataset, GroundTruth]:
    """Simulate the marketplace described by `config`; same config → identical output."""
    rng = np.random.Generator(np.random.PCG64(config.seed))
    world = _World.build(config, rng)
    items = _make_items(config, world, rng)
    users = _make_users(config, world, rng)
    events = _simulate(config, world, items, users, rng)
    dataset = make_dataset(events, items.frame, users.frame)
    truth = GroundTruth(
        config=config,
        user_ids=users.ids.to_numpy().astype(str),
        item_ids=items.ids.to_numpy().astype(str),
        user_taste=users.taste,
        item_latent=items.latent,
        item_popularity=items.popularity,
        category_trends=world.trends,
        region_multipliers=world.region_multipliers,
        region_names=world.region_names,
        category_names=world.top_names,
        user_category_weights=users.category_weights,
        item_category=items.top,
        item_delisted_at=items.delisted_us.astype("datetime64[us]"),
        category_centroids=world.centroids,
        trait_words=world.trait_words,
    )
    return dataset, truth


def write_marketplace(out: str | Path, config: SyntheticConfig) -> Dataset:
    """Generate, save the dataset folder to `out` and the ground truth in `out/ground_truth/`."""
    dataset, truth = generate_marketplace(config)
    folder = dataset.save(out)
    truth.save(folder / GROUND_TRUTH_DIR)
    return dataset
