"""From exposures and events to an experiment report (JSON and HTML with plots).

An exposure is one response shown to a user: request id, time, user, experiment, variant,
region and the items with their positions. An event (click, add-to-cart, purchase with its
revenue in `value`) is attributed to the latest exposure of the same item to the same user
in the `window` before it; events on items the user was not shown, or later than the
window, are not the experiment's doing and are left out. Every user counts once, in the
variant of their exposures (a user seen in two variants of one experiment means broken
assignment and is reported, then left out).

Per variant: users, exposures, CTR, add-to-cart rate (per exposed item), conversion (share
of users who bought), revenue per user, return rate (share of users exposed on two or more
days); effects against the control with 95 % intervals (delta method for the ratios, Welch
for per-user means, CUPED with pre-period revenue when given), the sample-ratio check, and
a per-region breakdown of the CTR lift.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from marketrec.core.errors import ConfigError
from marketrec.experiments.analysis import (
    Effect,
    bootstrap,
    cuped,
    ratio_delta,
    sample_ratio,
    welch,
)

EXPOSURE_COLUMNS = {"request_id", "ts", "user_id", "experiment", "variant", "items"}
_KINDS = {"click": "clicks", "add_to_cart": "carts", "purchase": "purchases"}


def attribute(
    exposures: pl.DataFrame, events: pl.DataFrame, window: timedelta = timedelta(hours=24)
) -> pl.DataFrame:
    """One row per (experiment, user), in that order: variant, region, exposures, exposed
    items, clicks, carts, purchases, revenue, active days (distinct days with an exposure)."""
    missing = EXPOSURE_COLUMNS - set(exposures.columns)
    if missing:
        raise ConfigError(f"exposures: missing column(s) {sorted(missing)}")
    for column in ("user_id", "item_id", "ts", "event"):
        if column not in events.columns:
            raise ConfigError(f"events: missing column '{column}'")
    if "region" not in exposures.columns:
        exposures = exposures.with_columns(region=pl.lit(None, dtype=pl.String))
    shown = (
        exposures.select("request_id", "ts", "user_id", "experiment", "variant", "items")
        .explode("items")
        .rename({"items": "item_id", "ts": "shown_at"})
        .drop_nulls("item_id")
        .sort("shown_at")
    )
    acts = (
        events.filter(pl.col("event").is_in(list(_KINDS)))
        .select(
            "user_id",
            "item_id",
            "event",
            pl.col("ts").alias("acted_at"),
            (pl.col("value") if "value" in events.columns else pl.lit(None))
            .cast(pl.Float64)
            .alias("value"),
        )
        .sort("acted_at")
    )
    attributed = acts.join_asof(
        shown,
        left_on="acted_at",
        right_on="shown_at",
        by=["user_id", "item_id"],
        strategy="backward",
        tolerance=window,
        check_sortedness=False,  # both sides sorted by time above, as asof needs
    ).drop_nulls("request_id")
    outcomes = attributed.group_by("experiment", "user_id").agg(
        *[(pl.col("event") == kind).sum().alias(name) for kind, name in _KINDS.items()],
        pl.when(pl.col("event") == "purchase")
        .then(pl.col("value").fill_null(0.0))
        .otherwise(0.0)
        .sum()
        .alias("revenue"),
    )
    users = exposures.group_by("experiment", "user_id").agg(
        pl.col("variant").unique().alias("variants"),
        pl.col("region").drop_nulls().first().alias("region"),
        pl.len().alias("exposures"),
        pl.col("items").list.len().sum().alias("items_shown"),
        pl.col("ts").dt.date().n_unique().alias("active_days"),
    )
    table = users.join(outcomes, on=["experiment", "user_id"], how="left").with_columns(
        *[pl.col(c).fill_null(0) for c in (*_KINDS.values(), "revenue")]
    )
    # sorted: group_by's order varies between runs, and so would the analysis's float sums
    return (
        table.with_columns(
            variant=pl.when(pl.col("variants").list.len() == 1)
            .then(pl.col("variants").list.first())
            .otherwise(None)
        )
        .drop("variants")
        .sort("experiment", "user_id")
    )


def analyse(
    table: pl.DataFrame,
    experiment: str,
    control: str,
    planned: dict[str, float] | None = None,
    pre_revenue: pl.DataFrame | None = None,
    bootstrap_resamples: int = 0,
) -> dict[str, Any]:
    """Per-variant summaries and effects against `control` for one experiment of
    `attribute`'s table. `planned`: the variants' allocations (for the sample-ratio check;
    default equal); `pre_revenue`: (user_id, pre_revenue) for CUPED; `bootstrap_resamples`:
    also percentile intervals of the per-user metrics from resampling users."""
    rows = table.filter(pl.col("experiment") == experiment)
    if rows.height == 0:
        raise ConfigError(f"no exposures for experiment '{experiment}'")
    mixed = rows.filter(pl.col("variant").is_null()).height
    rows = rows.drop_nulls("variant")
    variants = sorted(rows.get_column("variant").unique().to_list())
    if control not in variants:
        raise ConfigError(f"control variant '{control}' not among {variants}")
    if pre_revenue is not None:
        rows = rows.join(pre_revenue, on="user_id", how="left").with_columns(
            pl.col("pre_revenue").fill_null(0.0)
        )
    counts = dict(rows.group_by("variant").len().iter_rows())
    shares = planned or {v: 1.0 / len(variants) for v in variants}
    srm = sample_ratio({v: int(counts.get(v, 0)) for v in shares}, shares)
    summaries = {v: _summary(rows.filter(pl.col("variant") == v)) for v in variants}
    effects = {
        v: [
            asdict(e) | {"relative": e.relative}
            for e in _effects(rows, control, v, bootstrap_resamples)
        ]
        for v in variants
        if v != control
    }
    regions = {}
    for region in sorted(r for r in rows.get_column("region").unique().to_list() if r):
        part = rows.filter(pl.col("region") == region)
        regions[region] = {
            v: asdict(_ctr(part, control, v))
            for v in variants
            if v != control and _has(part, v, control)
        }
    return {
        "experiment": experiment,
        "control": control,
        "variants": summaries,
        "effects": effects,
        "sample_ratio": asdict(srm) | {"mismatch": srm.mismatch},
        "users_in_several_variants": mixed,
        "regions": regions,
    }


def _has(rows: pl.DataFrame, *variants: str) -> bool:
    return all(
        rows.filter(pl.col("variant") == v).filter(pl.col("items_shown") > 0).height >= 2
        for v in variants
    )


def _summary(rows: pl.DataFrame) -> dict[str, float]:
    shown = max(int(rows.get_column("items_shown").sum()), 1)
    return {
        "users": rows.height,
        "exposures": int(rows.get_column("exposures").sum()),
        "ctr": float(rows.get_column("clicks").sum()) / shown,
        "add_to_cart_rate": float(rows.get_column("carts").sum()) / shown,
        "conversion": float((rows.get_column("purchases") > 0).mean() or 0.0),
        "revenue_per_user": float(rows.get_column("revenue").mean() or 0.0),
        "return_rate": float((rows.get_column("active_days") >= 2).mean() or 0.0),
    }


def _column(rows: pl.DataFrame, variant: str, expr: pl.Expr) -> np.ndarray:
    return rows.filter(pl.col("variant") == variant).select(expr).to_series().to_numpy()


def _ctr(rows: pl.DataFrame, control: str, variant: str) -> Effect:
    clicks, shown = pl.col("clicks").cast(pl.Float64), pl.col("items_shown").cast(pl.Float64)
    return ratio_delta(
        "ctr",
        _column(rows, control, clicks),
        _column(rows, control, shown),
        _column(rows, variant, clicks),
        _column(rows, variant, shown),
    )


def _effects(rows: pl.DataFrame, control: str, variant: str, resamples: int = 0) -> list[Effect]:
    shown = pl.col("items_shown").cast(pl.Float64)
    carts = ratio_delta(
        "add_to_cart_rate",
        _column(rows, control, pl.col("carts").cast(pl.Float64)),
        _column(rows, control, shown),
        _column(rows, variant, pl.col("carts").cast(pl.Float64)),
        _column(rows, variant, shown),
    )
    per_user = [
        ("conversion", (pl.col("purchases") > 0).cast(pl.Float64)),
        ("revenue_per_user", pl.col("revenue").cast(pl.Float64)),
        ("return_rate", (pl.col("active_days") >= 2).cast(pl.Float64)),
    ]
    effects = [_ctr(rows, control, variant), carts]
    effects += [
        welch(name, _column(rows, control, e), _column(rows, variant, e)) for name, e in per_user
    ]
    if resamples > 0:
        effects += [
            bootstrap(
                f"{name} (bootstrap)",
                _column(rows, control, e),
                _column(rows, variant, e),
                resamples=resamples,
            )
            for name, e in per_user
        ]
    if "pre_revenue" in rows.columns:
        both = rows.filter(pl.col("variant").is_in([control, variant]))
        adjusted = both.with_columns(
            revenue_cuped=pl.Series(
                cuped(
                    both.get_column("revenue").to_numpy(), both.get_column("pre_revenue").to_numpy()
                )
            )
        )
        effects.append(
            welch(
                "revenue_per_user (CUPED)",
                _column(adjusted, control, pl.col("revenue_cuped")),
                _column(adjusted, variant, pl.col("revenue_cuped")),
            )
        )
    return effects


# --------------------------------------------------------------------------- output
def pre_period_revenue(exposures: pl.DataFrame, events: pl.DataFrame, days: float) -> pl.DataFrame:
    """(user_id, pre_revenue): each exposed user's purchase value in the `days` before the
    experiment's first exposure (0 without purchases): the CUPED covariate, behaviour the
    experiment cannot have changed."""
    if exposures.height == 0:
        return pl.DataFrame(schema={"user_id": pl.String, "pre_revenue": pl.Float64})
    first = exposures.get_column("ts").min()
    since = first - timedelta(days=days)
    value = pl.col("value") if "value" in events.columns else pl.lit(0.0)
    spent = (
        events.filter(
            (pl.col("event") == "purchase") & (pl.col("ts") >= since) & (pl.col("ts") < first)
        )
        .group_by("user_id")
        .agg(value.cast(pl.Float64).fill_null(0.0).sum().alias("pre_revenue"))
    )
    users = exposures.select("user_id").unique()
    return users.join(spent, on="user_id", how="left").with_columns(
        pl.col("pre_revenue").fill_null(0.0)
    )


def write_report(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """`out`/report.json and `out`/report.html (plots inline, so the file stands alone)."""
    out.mkdir(parents=True, exist_ok=True)
    as_json = out / "report.json"
    as_json.write_text(json.dumps(result, indent=2, default=_plain))
    page = out / "report.html"
    page.write_text(_html(result))
    return as_json, page


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _html(result: dict[str, Any]) -> str:
    name = html.escape(result["experiment"])
    srm = result["sample_ratio"]
    summary_rows = "".join(
        f"<tr><td>{html.escape(v)}</td>" + "".join(f"<td>{s[k]:,.4g}</td>" for k in s) + "</tr>"
        for v, s in result["variants"].items()
    )
    first = next(iter(result["variants"].values()))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in first)
    effect_rows = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{html.escape(e['metric'])}</td>"
        f"<td>{e['control']:.4g}</td><td>{e['treatment']:.4g}</td>"
        f"<td>{e['difference']:+.4g}</td><td>[{e['low']:+.4g}, {e['high']:+.4g}]</td>"
        f"<td>{e['relative']:+.2%}</td><td>{e['p_value']:.3g}</td>"
        f"<td>{'yes' if e['low'] > 0 or e['high'] < 0 else 'no'}</td></tr>"
        for v, effects in result["effects"].items()
        for e in effects
    )
    warning = (
        f"<p class='bad'>Sample ratio mismatch (p = {srm['p_value']:.2g}): the assignment or "
        "the logging is broken; do not trust these effects.</p>"
        if srm["mismatch"]
        else f"<p>Sample ratio check passed (p = {srm['p_value']:.2g}).</p>"
    )
    truth = _truth_html(result.get("truth"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Experiment {name}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}.bad{{color:#b00}}</style>
</head><body>
<h1>Experiment {name}</h1>
<p>Control: {html.escape(result["control"])}; users in several variants (left out):
{result["users_in_several_variants"]}.</p>
{warning}
<h2>Variants</h2><table><tr><th>variant</th>{head}</tr>{summary_rows}</table>
<h2>Effects against control (95 % intervals, user as the unit)</h2>
<table><tr><th>variant</th><th>metric</th><th>control</th><th>treatment</th><th>difference</th>
<th>95 % interval</th><th>relative</th><th>p</th><th>significant</th></tr>{effect_rows}</table>
<h2>Effects with intervals</h2>
<img alt="effects" src="data:image/png;base64,{_effects_plot(result)}">
<h2>CTR lift per region</h2>
<img alt="regions" src="data:image/png;base64,{_regions_plot(result)}">
{truth}
</body></html>
"""


def _truth_html(truth: dict[str, Any] | None) -> str:
    """The simulator's ground truth beside the estimates (`marketrec simulate`)."""
    if not truth:
        return ""
    judged = [
        (f"{arm}: {metric}", v)
        for arm, verdict in truth.get("verdicts", {}).items()
        for metric, v in (("CTR", verdict), ("revenue per user", verdict.get("revenue_per_user")))
        if v is not None
    ]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{v['true']:+.4g}</td><td>{v['estimated']:+.4g}</td>"
        f"<td>[{v['low']:+.4g}, {v['high']:+.4g}]</td><td>{'yes' if v['covered'] else 'no'}</td>"
        "</tr>"
        for name, v in judged
    )
    arms = "".join(
        f"<tr><td>{html.escape(arm)}</td><td>{truth['true_ctr'][arm]:.4g}</td>"
        f"<td>{a['sessions']:,}</td><td>{a['coverage']:.2%}</td><td>{a['new_item_share']:.2%}</td>"
        "</tr>"
        for arm, a in truth.get("arms", {}).items()
    )
    return f"""<h2>Ground truth (simulation)</h2>
<table><tr><th>arm</th><th>true CTR</th><th>sessions served</th><th>catalogue coverage</th>
<th>new items' share of slots</th></tr>{arms}</table>
<h3>Differences against control: true vs estimated</h3>
<table><tr><th>arm</th><th>true</th><th>estimated</th><th>95 % interval</th>
<th>covers the truth</th></tr>{rows}</table>"""


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _interval_plot(labels: list[str], effects: list[dict[str, Any]], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 0.45 * max(len(labels), 2) + 1))
    for i, e in enumerate(effects):
        base = e["control"] or 1.0
        low, mid, high = e["low"] / base, e["difference"] / base, e["high"] / base
        axis.errorbar(mid, i, xerr=[[mid - low], [high - mid]], fmt="o", capsize=4)
    axis.axvline(0, color="grey", lw=1)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("relative effect (95 % interval)")
    axis.set_title(title)
    return _png(figure)


def _effects_plot(result: dict[str, Any]) -> str:
    labels, effects = [], []
    for variant, rows in result["effects"].items():
        for e in rows:
            labels.append(f"{variant}: {e['metric']}")
            effects.append(e)
    return _interval_plot(labels, effects, "effects against control")


def _regions_plot(result: dict[str, Any]) -> str:
    labels, effects = [], []
    for region, per_variant in result["regions"].items():
        for variant, e in per_variant.items():
            labels.append(f"{region}: {variant}")
            effects.append(e)
    return _interval_plot(labels or ["(no regions)"], effects, "CTR lift per region")


__all__ = ["analyse", "attribute", "write_report"]
