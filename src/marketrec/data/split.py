"""Train/test splits (CONTRACT §4: P1g global cut, P1u per-user holdout, P3 leave-one-out).

Only events are split; the catalogue and user tables are copied whole into both halves, so
items listed and users signed up before the test period stay known (cold start is then
measurable: they exist in train without any train event).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from marketrec.core.errors import ConfigError, DataError
from marketrec.data.schema import Dataset, load_dataset


@dataclass(frozen=True)
class Split:
    train: Dataset
    test: Dataset
    description: str
    ranking_moment: str = "global"
    """When each user is ranked: "global" (everyone at the cut, P1g) or "per-user" (just
    after the user's own last train event, P1u and P3). Models that read time use it."""

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        self.train.save(out / "train")
        self.test.save(out / "test")
        (out / "SPLIT.txt").write_text(self.description + "\n")
        (out / "split.json").write_text(json.dumps({"ranking_moment": self.ranking_moment}))
        return out


def load_split(folder: str | Path) -> Split:
    """Read a split folder written by `Split.save` (`train/` and `test/` datasets)."""
    path = Path(folder)
    if not path.is_dir():
        raise DataError(str(path), "split folder not found")
    for half in ("train", "test"):
        if not (path / half).is_dir():
            raise DataError(
                str(path),
                f"not a split folder: '{half}/' is missing "
                "(create one with `marketrec split DATA OUT`)",
            )
    info = path / "SPLIT.txt"
    description = info.read_text().strip() if info.exists() else str(path)
    meta_file = path / "split.json"
    moment = "global"
    if meta_file.exists():
        try:
            moment = json.loads(meta_file.read_text()).get("ranking_moment", "global")
        except (json.JSONDecodeError, AttributeError):
            raise DataError(str(meta_file), "unreadable split description") from None
    return Split(load_dataset(path / "train"), load_dataset(path / "test"), description, moment)


def global_cut(data: Dataset, quantile: float | None = 0.8) -> datetime:
    """The instant P1g cuts at: the `quantile` of event time (the lower value on ties)."""
    if quantile is None or not 0.0 < quantile < 1.0:
        raise ConfigError(f"--quantile must be strictly between 0 and 1, got {quantile}")
    if data.events.height == 0:
        raise DataError("events.parquet", "no events to split")
    return data.events.select(pl.col("ts").quantile(quantile, "lower")).item()


def split_global(
    data: Dataset, *, quantile: float | None = 0.8, at: datetime | None = None
) -> Split:
    """P1g: train = events before T, test = events from T on.

    T is `at` when given, else the `quantile` of event time (the lower value on ties), so the
    split is a fixed instant every model is judged at.
    """
    cut = global_cut(data, quantile) if at is None else at
    if cut.tzinfo is None:
        cut = cut.replace(tzinfo=UTC)
    events = data.events
    train = events.filter(pl.col("ts") < cut)
    test = events.filter(pl.col("ts") >= cut)
    description = f"global temporal split at {cut.isoformat()} ({_counts(train, test)})"
    return Split(
        replace(data, events=train, notes=()), replace(data, events=test, notes=()), description
    )


def split_per_user(data: Dataset, *, test_fraction: float = 0.2, min_events: int = 5) -> Split:
    """P1u: for each user with ≥ `min_events` events, the last `test_fraction` by time (at least
    one) are test; users with fewer events stay wholly in train.

    Ties in time keep the file order, so the split is deterministic.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test fraction must be strictly between 0 and 1, got {test_fraction}")
    if min_events < 2:
        raise ConfigError(f"min_events must be at least 2, got {min_events}")
    n_test = (
        pl.when(pl.col("_n") >= min_events)
        .then(pl.max_horizontal((pl.col("_n") * test_fraction).floor().cast(pl.Int64), 1))
        .otherwise(0)
    )
    return _hold_out_last(
        data,
        n_test,
        f"per-user temporal holdout: last {test_fraction:.0%} of each user's events "
        f"(users with ≥ {min_events} events)",
    )


def split_leave_one_out(data: Dataset, *, min_events: int = 3) -> Split:
    """P3: for each user with ≥ `min_events` events, the last event by time is test, the rest
    train; users with fewer events stay wholly in train.

    Ties in time are broken by file order (the later row is the last event), so the split is
    deterministic and keeps the order of sequence datasets whose timestamps are synthetic.
    """
    if min_events < 2:
        raise ConfigError(f"min_events must be at least 2, got {min_events}")
    n_test = pl.when(pl.col("_n") >= min_events).then(1).otherwise(0)
    return _hold_out_last(
        data, n_test, f"leave-one-out: each user's last event (users with ≥ {min_events} events)"
    )


def _hold_out_last(data: Dataset, n_test: pl.Expr, label: str) -> Split:
    """Each user's last `n_test` events (an expression of `_n`, the user's event count) are
    test. Ties in time keep the file order, so the split is deterministic."""
    ranked = (
        data.events.with_row_index("_row")
        .sort(["user_id", "ts", "_row"])
        .with_columns(_pos=pl.int_range(pl.len()).over("user_id"), _n=pl.len().over("user_id"))
        .with_columns(_n_test=n_test)
    )
    is_test = pl.col("_pos") >= pl.col("_n") - pl.col("_n_test")
    helper = ["_row", "_pos", "_n", "_n_test"]
    train = ranked.filter(~is_test).sort("_row").drop(helper)
    test = ranked.filter(is_test).sort("_row").drop(helper)
    return Split(
        replace(data, events=train, notes=()),
        replace(data, events=test, notes=()),
        f"{label} ({_counts(train, test)})",
        ranking_moment="per-user",
    )


def _counts(train: pl.DataFrame, test: pl.DataFrame) -> str:
    return f"train {train.height:,} events, test {test.height:,} events"
