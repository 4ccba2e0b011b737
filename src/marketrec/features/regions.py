"""Where users live and where items sell: the region features every stage agrees on."""

from __future__ import annotations

import polars as pl

from marketrec.data.schema import Dataset


def home_regions(data: Dataset) -> pl.DataFrame:
    """user_id → region: the profile's `region`, else the region the user acts from most.

    Ties between event regions go to the alphabetically first, so the answer is stable.
    """
    sources = []
    if "region" in data.users.columns:
        sources.append(data.users.select("user_id", "region").drop_nulls())
    if "region" in data.events.columns:
        sources.append(
            data.events.select("user_id", "region")
            .drop_nulls()
            .group_by("user_id", "region")
            .agg(n=pl.len())
            .sort(["user_id", "n", "region"], descending=[False, True, False])
            .unique("user_id", keep="first", maintain_order=True)
            .select("user_id", "region")
        )
    if not sources:
        return pl.DataFrame(schema={"user_id": pl.String, "region": pl.String})
    return pl.concat(sources).unique("user_id", keep="first", maintain_order=True)


def item_regions(data: Dataset) -> list[str]:
    """Every region named in the catalogue's `regions` lists."""
    if "regions" not in data.items.columns:
        return []
    return data.items.get_column("regions").explode().drop_nulls().unique().sort().to_list()
