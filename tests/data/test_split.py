"""Temporal splits: P1g global cut and P1u per-user holdout."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from conftest import T0, events_frame
from marketrec.core.errors import ConfigError, DataError
from marketrec.data.schema import make_dataset
from marketrec.data.split import load_split, split_global, split_leave_one_out, split_per_user


def dataset():
    rows = [("many", f"i{h}", h, "view") for h in range(10)]  # 10 events → 2 test
    rows += [("five", f"i{h}", 100 + h, "view") for h in range(5)]  # 5 events → 1 test
    rows += [("four", f"i{h}", 200 + h, "view") for h in range(4)]  # 4 events → all train
    items = [f"i{h}" for h in range(12)]
    return make_dataset(
        events_frame(rows),
        pl.DataFrame({"item_id": items}),
        pl.DataFrame({"user_id": ["many", "five", "four", "nobody"]}),
    )


def test_per_user_holdout_counts() -> None:
    split = split_per_user(dataset())
    test_counts = dict(split.test.events.group_by("user_id").len().iter_rows())
    assert test_counts == {"many": 2, "five": 1}
    last_many = split.test.events.filter(user_id="many").get_column("item_id").to_list()
    assert sorted(last_many) == ["i8", "i9"]  # the latest ones
    assert split.train.events.height + split.test.events.height == 19
    # tables are copied whole into both halves
    assert split.train.items.height == split.test.items.height == 12
    assert split.test.users.height == 4


def test_global_split_at_quantile_and_instant() -> None:
    data = dataset()
    split = split_global(data, quantile=0.5)
    cut = split.test.events.get_column("ts").min()
    assert split.train.events.get_column("ts").max() < cut
    assert split.train.events.height + split.test.events.height == data.events.height
    at = split_global(data, quantile=None, at=(T0 + timedelta(hours=100)).replace(tzinfo=None))
    assert at.test.events.get_column("ts").min() == T0 + timedelta(hours=100)
    assert at.train.events.height == 10


def test_bad_split_options() -> None:
    with pytest.raises(ConfigError):
        split_global(dataset(), quantile=1.5)
    with pytest.raises(ConfigError):
        split_per_user(dataset(), test_fraction=0.0)


def test_save_and_load(tmp_path: Path) -> None:
    split_per_user(dataset()).save(tmp_path / "s")
    loaded = load_split(tmp_path / "s")
    assert loaded.test.events.height == 3 and "per-user" in loaded.description
    with pytest.raises(DataError, match="not a split folder"):
        load_split(tmp_path / "s" / "train")


# --- P3 leave-one-out --------------------------------------------------------------------------


def loo_dataset():
    rows = [("five", f"i{h}", h, "view") for h in range(5)]  # → last is i4
    rows += [("three", f"i{h}", 100 + h, "view") for h in (2, 0, 1)]  # out of order in file
    rows += [("two", f"i{h}", 200 + h, "view") for h in range(2)]  # < 3 events → all train
    rows += [("tied", "i7", 300, "view"), ("tied", "i8", 300, "view"), ("tied", "i9", 300, "view")]
    return make_dataset(
        events_frame(rows),
        pl.DataFrame({"item_id": [f"i{h}" for h in range(10)]}),
        pl.DataFrame({"user_id": ["five", "three", "two", "tied", "nobody"]}),
    )


def test_leave_one_out_last_event_per_user() -> None:
    data = loo_dataset()
    split = split_leave_one_out(data)
    test = dict(zip(split.test.events["user_id"], split.test.events["item_id"], strict=True))
    # by time; equal times → the later row in the file is the last event
    assert test == {"five": "i4", "three": "i2", "tied": "i9"}
    assert split.test.events.height == 3
    assert split.train.events.height + split.test.events.height == data.events.height
    assert split.train.events.filter(user_id="two").height == 2
    # train keeps the original row order; tables are copied whole
    assert split.train.events.filter(user_id="three")["item_id"].to_list() == ["i0", "i1"]
    assert split.train.items.height == split.test.items.height == 10
    assert split.test.users.height == 5
    assert "leave-one-out" in split.description


def test_leave_one_out_min_events() -> None:
    assert split_leave_one_out(loo_dataset(), min_events=2).test.events.height == 4
    assert split_leave_one_out(loo_dataset(), min_events=4).test.events.height == 1
    with pytest.raises(ConfigError):
        split_leave_one_out(loo_dataset(), min_events=1)


def test_leave_one_out_validation_cut() -> None:
    from marketrec.evaluation.tuning import PROTOCOLS, validation_split

    assert "leave-one-out" in PROTOCOLS
    train = split_leave_one_out(loo_dataset()).train
    cut = validation_split(train, "leave-one-out")
    test = dict(zip(cut.test.events["user_id"], cut.test.events["item_id"], strict=True))
    assert test == {"five": "i3"}  # the only user with ≥ 3 train events


def test_cli_split_leave_one_out(tmp_path: Path) -> None:
    from marketrec.cli import main

    loo_dataset().save(tmp_path / "data")
    assert main(["split", str(tmp_path / "data"), str(tmp_path / "s"), "--leave-one-out"]) == 0
    loaded = load_split(tmp_path / "s")
    assert loaded.test.events.height == 3 and "leave-one-out" in loaded.description
    argv = ["split", str(tmp_path / "data"), str(tmp_path / "s2"), "--leave-one-out"]
    assert main([*argv, "--min-events", "2"]) == 0
    assert load_split(tmp_path / "s2").test.events.height == 4
    with pytest.raises(SystemExit):
        main([*argv, "--per-user", "0.2"])  # mutually exclusive


def test_ranking_moment_travels_with_the_split(tmp_path: Path) -> None:
    assert split_global(dataset()).ranking_moment == "global"
    per_user = split_per_user(dataset())
    assert per_user.ranking_moment == "per-user"
    per_user.save(tmp_path / "p")
    assert load_split(tmp_path / "p").ranking_moment == "per-user"
