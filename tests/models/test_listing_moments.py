"""A product does not exist before its listing time: at each user's ranking moment the
shared top-k selection (`models.base`) leaves out what was listed later, whatever moments
were asked about before (the late columns are kept per moment)."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from conftest import T0, events_frame
from marketrec.data.schema import make_dataset
from marketrec.models.registry import create


def test_items_appear_at_their_listing_time_whatever_was_asked_before() -> None:
    rows = [(f"u{u}", f"i{j}", u, "view") for u in range(6) for j in range(3)]
    rows += [("u0", "i0", 10, "purchase")]  # the last event: "now" is just after hour 10
    items = pl.DataFrame(
        {
            "item_id": ["i0", "i1", "i2", "late-a", "late-b"],
            "created_at": [T0] * 3 + [T0 + timedelta(hours=50), T0 + timedelta(hours=100)],
        }
    )
    model = create("popularity", {}).fit(make_dataset(events_frame(rows), items))

    def shown(hours: float | None) -> set[str]:
        at = None if hours is None else [T0 + timedelta(hours=hours)]
        lists = model.recommend(["new-user"], 5, at=at)
        return set(lists.get_column("item_id").to_list())

    base = {"i0", "i1", "i2"}
    # twice each, in an order that revisits moments, so kept answers are read back too
    for hours, want in [
        (None, base),
        (60, base | {"late-a"}),
        (None, base),
        (120, base | {"late-a", "late-b"}),
        (60, base | {"late-a"}),
        (20, base),
        (120, base | {"late-a", "late-b"}),
        (49.9, base),
        (50, base | {"late-a"}),  # listed at hour 50: visible from that moment on
    ]:
        assert shown(hours) == want, hours
