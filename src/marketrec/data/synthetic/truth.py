"""`GroundTruth`: the hidden causes of a generated log, saved and loaded without pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl

from marketrec.core.errors import ConfigError, DataError
from marketrec.data.synthetic.config import SyntheticConfig

GROUND_TRUTH_DIR = "ground_truth"
_ARRAYS_FILE = "latent.npz"
_META_FILE = "meta.json"
_TRENDS_FILE = "trends.parquet"
_REGIONS_FILE = "regions.parquet"


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The hidden causes of the generated log, to measure models against what is true.

    Row `i` of the user arrays belongs to `user_ids[i]`, row `j` of the item arrays to
    `item_ids[j]`. Affinity of a user to an item is `user_taste @ item_latent.T`.
    """

    config: SyntheticConfig
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_taste: np.ndarray
    item_latent: np.ndarray
    item_popularity: np.ndarray
    category_trends: np.ndarray
    region_multipliers: np.ndarray
    region_names: tuple[str, ...]
    category_names: tuple[str, ...]
    user_category_weights: np.ndarray
    item_category: np.ndarray
    item_delisted_at: np.ndarray
    category_centroids: np.ndarray
    trait_words: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = field(default=())

    def region_multiplier(self, region: str) -> float:
        """Price multiplier of a region by name (purchase value = price × multiplier)."""
        try:
            return float(self.region_multipliers[self.region_names.index(region)])
        except ValueError:
            raise ConfigError(f"unknown region {region!r}") from None

    def affinity(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """User × item affinity matrix for the given rows (what drives choices and funnel)."""
        return self.user_taste[user_rows] @ self.item_latent[item_rows].T

    def save(self, folder: str | Path) -> Path:
        """Write arrays to `latent.npz`, metadata to `meta.json`, trends and regions to Parquet.

        No pickle anywhere: the files can be read by any tool and loaded safely.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / _ARRAYS_FILE,
            user_ids=self.user_ids.astype(str),
            item_ids=self.item_ids.astype(str),
            user_taste=self.user_taste,
            item_latent=self.item_latent,
            item_popularity=self.item_popularity,
            category_trends=self.category_trends,
            region_multipliers=self.region_multipliers,
            user_category_weights=self.user_category_weights,
            item_category=self.item_category,
            item_delisted_at=self.item_delisted_at.astype("datetime64[us]"),
            category_centroids=self.category_centroids,
        )
        meta = {
            "config": self.config.to_dict(),
            "region_names": list(self.region_names),
            "category_names": list(self.category_names),
            "trait_words": [[list(pos), list(neg)] for pos, neg in self.trait_words],
        }
        (out / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        days = self.category_trends.shape[1]
        start = self.config.start
        pl.DataFrame(
            {
                "category": np.repeat(np.array(self.category_names), days),
                "day": pl.Series(
                    [start + timedelta(days=d) for d in range(days)] * len(self.category_names),
                    dtype=pl.Datetime("us", "UTC"),
                ),
                "multiplier": self.category_trends.reshape(-1),
            }
        ).write_parquet(out / _TRENDS_FILE)
        pl.DataFrame(
            {
                "region": list(self.region_names),
                "price_multiplier": self.region_multipliers,
            }
        ).write_parquet(out / _REGIONS_FILE)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> GroundTruth:
        """Read a folder written by `save`; raise `DataError` naming a missing file."""
        path = Path(folder)
        for name in (_ARRAYS_FILE, _META_FILE):
            if not (path / name).exists():
                raise DataError(str(path / name), "ground-truth file is missing")
        meta = json.loads((path / _META_FILE).read_text(encoding="utf-8"))
        with np.load(path / _ARRAYS_FILE, allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
        return cls(
            config=SyntheticConfig.from_dict(meta["config"]),
            region_names=tuple(meta["region_names"]),
            category_names=tuple(meta["category_names"]),
            trait_words=tuple((tuple(p), tuple(n)) for p, n in meta.get("trait_words", [])),
            **data,
        )
