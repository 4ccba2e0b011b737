"""Listing times: created_at, corrected by the item's first event, NaN where unknown."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from conftest import T0, events_frame
from marketrec.data.schema import make_dataset
from marketrec.features.listing import listing_times


def test_first_event_corrects_a_late_listing_date() -> None:
    events = events_frame([("u1", "a", 5, "view"), ("u1", "b", 7, "view")])
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "created_at": [T0 + timedelta(hours=1), T0 + timedelta(hours=30), None],
        }
    )
    data = make_dataset(events, items)
    listed = listing_times(data, pl.Series(["c", "b", "a", "unknown"]))
    start = T0.timestamp()
    assert np.isnan(listed[0])  # no created_at: unknown, whatever its events
    assert listed[1] == start + 7 * 3600  # viewed before its stated listing: the view wins
    assert listed[2] == start + 3600
    assert np.isnan(listed[3])
