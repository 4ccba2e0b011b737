"""Top-K metrics exactly as CONTRACT §3 defines them, vectorised with Polars.

For user u with target set T(u) and ranked list R(u), hits are the positions i ≤ K with
R(u)[i] ∈ T(u), and n = min(|T(u)|, K):
HR = 1 if any hit; Recall = hits / |T(u)|; MRR = 1 / first hit rank; NDCG = Σ_hits 1/log2(i+1)
over Σ_{i≤n} 1/log2(i+1); MAP = Σ_hits precision@i / n. Each is the mean over every user with
targets (a user without recommendations scores 0). Coverage@K = distinct items in the evaluated
users' top K / catalogue size.

The work is a join of recommendations with targets and a few group-bys, so 100k users × top-100
score in seconds.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from marketrec.core.errors import ConfigError, DataError

METRIC_NAMES = ("HR", "Recall", "NDCG", "MAP", "MRR", "Coverage")


def check_ks(ks: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Validate cut-offs: at least one, each a positive integer."""
    if not ks:
        raise ConfigError("at least one cut-off K is needed")
    for k in ks:
        if int(k) != k or k <= 0:
            raise ConfigError(f"K must be a positive integer, got {k}")
    return tuple(sorted({int(k) for k in ks}))


def check_recommendations(recs: pl.DataFrame, source: str = "recommendations") -> pl.DataFrame:
    """Refuse a recommendation list the metrics would misread (duplicates, bad ranks)."""
    for column in ("user_id", "item_id", "rank"):
        if column not in recs.columns:
            raise DataError(
                source,
                f"required column '{column}' is missing "
                f"(columns present: {', '.join(recs.columns) or 'none'})",
            )
    recs = recs.with_columns(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String))
    if not recs.schema["rank"].is_integer():
        raise DataError(
            source,
            f"wrong type {recs.schema['rank']}, expected integer",
            column="rank",
            rows=recs.height,
        )
    for column in ("user_id", "item_id", "rank"):
        nulls = recs.get_column(column).null_count()
        if nulls:
            raise DataError(source, "null values", column=column, rows=nulls)
    bad_rank = recs.filter(pl.col("rank") < 1).height
    if bad_rank:
        raise DataError(source, "ranks must start at 1", column="rank", rows=bad_rank)
    dup_items = recs.height - recs.select("user_id", "item_id").n_unique()
    if dup_items:
        raise DataError(
            source, "an item appears twice in one user's list", column="item_id", rows=dup_items
        )
    dup_ranks = recs.height - recs.select("user_id", "rank").n_unique()
    if dup_ranks:
        raise DataError(
            source, "a rank appears twice in one user's list", column="rank", rows=dup_ranks
        )
    return recs


def _ideal_dcg(max_k: int) -> np.ndarray:
    """idcg[n] = Σ_{i=1..n} 1/log2(i+1), idcg[0] = 0."""
    gains = 1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64))
    return np.concatenate([[0.0], np.cumsum(gains)])


def compute_metrics(
    recs: pl.DataFrame,
    targets: pl.DataFrame,
    ks: tuple[int, ...],
    catalogue_size: int,
) -> dict[str, float]:
    """Mean HR, Recall, NDCG, MAP, MRR and Coverage at each K over users with targets.

    `recs` has user_id, item_id, rank (checked by `check_recommendations`); `targets` has
    user_id, item_id (duplicates ignored). Returns {"HR@10": ..., "users": n, ...}.
    """
    ks = check_ks(ks)
    targets = targets.select("user_id", "item_id").unique()
    per_user = targets.group_by("user_id").agg(n_targets=pl.len())
    n_users = per_user.height
    result: dict[str, float] = {"users": float(n_users)}
    if n_users == 0:
        for k in ks:
            result.update({f"{m}@{k}": 0.0 for m in METRIC_NAMES})
        return result
    max_k = max(ks)
    ranked = recs.filter(pl.col("rank") <= max_k).join(
        per_user.select("user_id"), on="user_id", how="semi"
    )
    hits = (
        ranked.join(targets, on=["user_id", "item_id"], how="semi")
        .sort("user_id", "rank")
        .with_columns(ordinal=pl.int_range(1, pl.len() + 1).over("user_id"))
    )
    idcg = _ideal_dcg(max_k)
    for k in ks:
        agg = (
            hits.filter(pl.col("rank") <= k)
            .group_by("user_id")
            .agg(
                n_hits=pl.len(),
                dcg=(1.0 / (pl.col("rank").cast(pl.Float64) + 1.0).log(2)).sum(),
                first=pl.col("rank").min(),
                precision_sum=(pl.col("ordinal") / pl.col("rank")).sum(),
            )
        )
        table = per_user.join(agg, on="user_id", how="left").fill_null(0)
        n_t = table.get_column("n_targets").to_numpy().astype(np.float64)
        n_hits = table.get_column("n_hits").to_numpy().astype(np.float64)
        dcg = table.get_column("dcg").to_numpy()
        first = table.get_column("first").to_numpy().astype(np.float64)
        precision_sum = table.get_column("precision_sum").to_numpy()
        n = np.minimum(n_t, k).astype(np.int64)
        result[f"HR@{k}"] = float(np.mean(n_hits > 0))
        result[f"Recall@{k}"] = float(np.mean(n_hits / n_t))
        result[f"NDCG@{k}"] = float(np.mean(dcg / idcg[n]))
        result[f"MAP@{k}"] = float(np.mean(precision_sum / n))
        result[f"MRR@{k}"] = float(np.mean(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)))
        distinct = ranked.filter(pl.col("rank") <= k).get_column("item_id").n_unique()
        result[f"Coverage@{k}"] = distinct / catalogue_size if catalogue_size else 0.0
    return result
