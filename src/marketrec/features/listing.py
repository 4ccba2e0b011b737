"""When each product went on sale: the moment before which no model may show it."""

from __future__ import annotations

import numpy as np
import polars as pl

from marketrec.data.schema import Dataset


def listing_times(data: Dataset, item_ids: pl.Series) -> np.ndarray:
    """Per item of `item_ids` (in that order): its listing time in epoch seconds, NaN where
    unknown. A `created_at` later than the item's first event is wrong (the event proves it
    was on sale; ml-100k dates 24 films after their first rating), so the first event wins."""
    first = data.events.group_by("item_id").agg(pl.col("ts").min().alias("first_event"))
    frame = pl.DataFrame({"item_id": item_ids.cast(pl.String)}).join(
        first, on="item_id", how="left", maintain_order="left"
    )
    listed = frame.get_column("first_event")
    if "created_at" in data.items.columns:
        created = frame.join(
            data.items.select("item_id", "created_at"),
            on="item_id",
            how="left",
            maintain_order="left",
        ).get_column("created_at")
        listed = pl.select(pl.min_horizontal(created, listed.alias("x"))).to_series()
        # an item without a created_at has no listing time, whatever its events
        listed = pl.select(pl.when(created.is_null()).then(None).otherwise(listed)).to_series()
    else:
        listed = pl.repeat(None, frame.height, dtype=pl.Datetime("us", "UTC"), eager=True)
    seconds = listed.cast(pl.Datetime("us", "UTC")).dt.epoch("us").cast(pl.Float64) / 1e6
    return seconds.fill_null(np.nan).to_numpy()
