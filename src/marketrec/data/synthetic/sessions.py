"""Behaviour: sessions, views (which item each view lands on) and the purchase funnel."""

from __future__ import annotations

import numpy as np
import polars as pl

from marketrec.data.synthetic.catalogue import _Items
from marketrec.data.synthetic.config import SyntheticConfig
from marketrec.data.synthetic.population import _DEVICE_SHARE, _DEVICES, _Users
from marketrec.data.synthetic.text import _queries
from marketrec.data.synthetic.vectorised import (
    _DAY_US,
    _HOUR_US,
    _US,
    _diurnal,
    _ids,
    _sample_rows,
    _sigmoid,
    _softmax,
    _to_datetime,
    calibrated_intercept,
)
from marketrec.data.synthetic.world import _World

#: views scored per chunk in `_choose_items`: bounds the (views × candidates) arrays in memory
_VIEW_CHUNK = 32_768


def _simulate(
    cfg: SyntheticConfig, world: _World, items: _Items, users: _Users, rng: np.random.Generator
) -> pl.DataFrame:
    start, end = world.start_us, world.end_us
    k, s = cfg.categories, cfg.subcategories

    # ---- sessions per user: one for most, a heavy tail for the active few -------------------
    active_from = np.maximum(users.signup_us, start)
    remaining = (end - active_from) / (end - start)
    rate = cfg.extra_sessions * users.activity * remaining / max(float(remaining.mean()), 1e-9)
    n_sessions = 1 + np.minimum(rng.poisson(rate), 200)
    sess_user = np.repeat(np.arange(cfg.users), n_sessions)
    n_sess = len(sess_user)
    first_of_user = np.zeros(n_sess, dtype=bool)
    first_of_user[np.cumsum(n_sessions) - n_sessions] = True

    # ---- session start times: diurnal, after sign-up; new users start at sign-up ------------
    first_day = (active_from - start) // _DAY_US
    first_day_s = first_day[sess_user]
    day = first_day_s + (rng.random(n_sess) * (cfg.days - first_day_s)).astype(np.int64)
    t = start + day * _DAY_US + _diurnal(rng, n_sess)
    af = active_from[sess_user]
    day_end = start + (day + 1) * _DAY_US
    early = t < af  # only possible on the sign-up day: squeeze into the rest of that day
    t = np.where(early, af + (rng.random(n_sess) * (day_end - af)).astype(np.int64), t)
    new_user = users.signup_us[sess_user] >= start
    arrive = af + (rng.exponential(180.0, n_sess) * _US).astype(np.int64)
    t = np.where(first_of_user & new_user, arrive, t).astype(np.int64)
    sess_day = np.clip((t - start) // _DAY_US, 0, cfg.days - 1)

    # ---- session context: device, search or browse, category -------------------------------
    pref = users.device[sess_user]
    other = rng.choice(len(_DEVICES), size=n_sess, p=np.array(_DEVICE_SHARE))
    device = np.where(rng.random(n_sess) < 0.8, pref, other)
    is_search = rng.random(n_sess) < cfg.search_share
    cat_probs = users.category_weights[sess_user] * world.trends[:, sess_day].T
    cat_probs /= cat_probs.sum(axis=1, keepdims=True)
    sess_cat = _sample_rows(rng, cat_probs)
    # Search sessions narrow to a sub-category chosen by taste.
    sub_logit = (
        cfg.taste_strength
        * np.matmul(world.sub_centroids[sess_cat], users.taste[sess_user][:, :, None])[..., 0]
    )
    sess_sub = _sample_rows(rng, _softmax(sub_logit))
    query = _queries(cfg, world, users, rng, sess_user, sess_cat, sess_sub)

    # ---- views -----------------------------------------------------------------------------
    # Calibrated so that views/session averages `views_per_session` overall; search sessions
    # browse twice as deep as others.
    base = cfg.views_per_session - 1.0
    depth = base / (1.0 + cfg.search_share)
    mean_extra = np.where(is_search, 2.0 * depth, depth) * users.browsing[sess_user]
    n_views = 1 + rng.poisson(mean_extra)
    v_sess = np.repeat(np.arange(n_sess), n_views)
    n_v = len(v_sess)
    v_pos = np.arange(n_v) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    gaps = (rng.exponential(50.0, n_v) + 2.0) * _US
    gaps[v_pos == 0] = np.where(is_search[v_sess[v_pos == 0]], 8.0 * _US, 0.0)
    first_view = np.repeat(np.cumsum(n_views) - n_views, n_views)
    cum = np.cumsum(gaps)
    within = cum - cum[first_view] + gaps[first_view]  # inclusive cumulative gap per session
    v_ts = t[v_sess] + within.astype(np.int64)
    v_user = sess_user[v_sess]
    switch = (~is_search[v_sess]) & (v_pos > 0) & (rng.random(n_v) < cfg.category_switch)
    alt_cat = _sample_rows(rng, cat_probs[v_sess])
    v_cat = np.where(switch, alt_cat, sess_cat[v_sess])
    v_search = is_search[v_sess]

    # Items sorted by (top, sub) so a category or sub-category is a contiguous range.
    group = items.top * s + items.sub
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    cum_pop = np.concatenate([[0.0], np.cumsum(items.popularity[order])])
    sub_lo = np.searchsorted(sorted_group, np.arange(k * s), side="left")
    sub_hi = np.searchsorted(sorted_group, np.arange(k * s), side="right")
    top_lo, top_hi = sub_lo[np.arange(k) * s], sub_hi[np.arange(k) * s + s - 1]
    v_group = v_cat * s + sess_sub[v_sess]
    lo = np.where(v_search, sub_lo[v_group], top_lo[v_cat])
    hi = np.where(v_search, sub_hi[v_group], top_hi[v_cat])
    v_item, v_aff = _choose_items(cfg, rng, items, users, order, cum_pop, v_user, v_ts, lo, hi)

    keep = v_item >= 0
    v_sess, v_user, v_ts, v_item, v_aff = (a[keep] for a in (v_sess, v_user, v_ts, v_item, v_aff))

    # ---- funnel: each step more likely the better the item fits the user's taste -----------
    z = (v_aff - v_aff.mean()) / max(float(v_aff.std()), 1e-9) if len(v_aff) else v_aff
    slope = cfg.funnel_slope
    clicked = _calibrated_bernoulli(rng, z, slope, cfg.click_rate)
    c_idx = np.flatnonzero(clicked)
    carted_c = _calibrated_bernoulli(rng, z[c_idx], slope, cfg.cart_rate / cfg.click_rate)
    a_idx = c_idx[carted_c]
    bought_a = _calibrated_bernoulli(rng, z[a_idx], slope, cfg.purchase_rate / cfg.cart_rate)
    p_idx = a_idx[bought_a]

    click_ts = v_ts[c_idx] + ((rng.exponential(12.0, len(c_idx)) + 1.0) * _US).astype(np.int64)
    cart_delay = ((rng.exponential(40.0, len(a_idx)) + 3.0) * _US).astype(np.int64)
    cart_ts = click_ts[carted_c] + cart_delay
    buy_delay = ((rng.exponential(150.0, len(p_idx)) + 20.0) * _US).astype(np.int64)
    buy_ts = cart_ts[bought_a] + buy_delay

    # ---- assemble ----------------------------------------------------------------------------
    s_idx = np.flatnonzero(is_search)
    kinds = ("search", "view", "click", "add_to_cart", "purchase")
    parts_sess = [s_idx, v_sess, v_sess[c_idx], v_sess[a_idx], v_sess[p_idx]]
    parts_item = [np.full(len(s_idx), -1), v_item, v_item[c_idx], v_item[a_idx], v_item[p_idx]]
    parts_ts = [t[s_idx], v_ts, click_ts, cart_ts, buy_ts]
    kind = np.concatenate([np.full(len(p), j, dtype=np.int8) for j, p in enumerate(parts_sess)])
    e_sess = np.concatenate(parts_sess).astype(np.int64)
    e_item = np.concatenate(parts_item).astype(np.int64)
    e_ts = np.concatenate(parts_ts).astype(np.int64)

    inside = e_ts < end  # the log is cut at the end of the window, like a real export
    kind, e_sess, e_item, e_ts = kind[inside], e_sess[inside], e_item[inside], e_ts[inside]
    sort = np.lexsort((kind, e_sess, e_ts))
    kind, e_sess, e_item, e_ts = kind[sort], e_sess[sort], e_item[sort], e_ts[sort]

    # Session ids numbered in order of first appearance, so ids read chronologically.
    used, first_pos = np.unique(e_sess, return_index=True)
    rank = np.empty(len(used), dtype=np.int64)
    rank[np.argsort(first_pos, kind="stable")] = np.arange(len(used))
    sess_number = rank[np.searchsorted(used, e_sess)]

    e_user = sess_user[e_sess]
    e_region = users.region[e_user]
    is_buy = kind == 4
    value = np.full(len(kind), np.nan)
    value[is_buy] = items.price[e_item[is_buy]] * world.region_multipliers[e_region[is_buy]]
    has_item = e_item >= 0
    item_pos = np.where(has_item, e_item, 0)

    return pl.DataFrame(
        {
            "user_id": users.ids.gather(e_user),
            "item_id": items.ids.gather(item_pos),
            "_has_item": has_item,
            "ts": _to_datetime(e_ts),
            "event": pl.Series(list(kinds)).gather(kind),
            "value": value,
            "session_id": _ids("s", len(used), 7).gather(sess_number),
            "region": pl.Series(list(world.region_names)).gather(e_region),
            "device": pl.Series(list(_DEVICES)).gather(device[e_sess]),
            "query": query.gather(np.where(kind == 0, e_sess, 0)),
            "_search": kind == 0,
        }
    ).select(
        "user_id",
        pl.when(pl.col("_has_item")).then(pl.col("item_id")).otherwise(None).alias("item_id"),
        "ts",
        "event",
        pl.col("value").fill_nan(None),
        "session_id",
        "region",
        "device",
        pl.when(pl.col("_search")).then(pl.col("query")).otherwise(None).alias("query"),
    )


def _choose_items(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    items: _Items,
    users: _Users,
    order: np.ndarray,
    cum_pop: np.ndarray,
    v_user: np.ndarray,
    v_ts: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling-importance-resampling: per view draw `candidates` items of the view's range
    by popularity, then keep one with weight exp(taste_strength × affinity) among those the
    user may see (listed, not delisted, sold in the user's region). The result follows
    popularity × exp(strength × affinity) without ever forming a user × item matrix.
    Returns item rows (-1 where no candidate was available) and their affinity."""
    n, m = len(v_user), cfg.candidates
    chosen = np.full(n, -1, dtype=np.int64)
    affinity = np.zeros(n, dtype=np.float32)
    margin = _HOUR_US  # the funnel that follows a view happens while the item is still listed
    for a in range(0, n, _VIEW_CHUNK):
        b = min(n, a + _VIEW_CHUNK)
        lo_c, hi_c = lo[a:b], hi[a:b]
        width = cum_pop[hi_c] - cum_pop[lo_c]
        x = cum_pop[lo_c][:, None] + rng.random((b - a, m)) * width[:, None]
        pos = np.searchsorted(cum_pop, x, side="right") - 1
        pos = np.clip(pos, lo_c[:, None], np.maximum(hi_c - 1, lo_c)[:, None])
        cand = order[np.minimum(pos, len(order) - 1)]
        ts = v_ts[a:b, None]
        region = users.region[v_user[a:b]][:, None]
        ok = (
            (hi_c > lo_c)[:, None]
            & (items.created_us[cand] <= ts)
            & (items.delisted_us[cand] > ts + margin)
            & (((items.region_mask[cand] >> region) & 1) == 1)
        )
        taste = users.taste[v_user[a:b]]
        aff = np.matmul(items.latent[cand], taste[:, :, None])[..., 0]
        logit = cfg.taste_strength * aff - np.log(-np.log(rng.random((b - a, m)) + 1e-300))
        logit = np.where(ok, logit, -np.inf)
        j = np.argmax(logit, axis=1)
        rows = np.arange(b - a)
        valid = ok[rows, j]
        chosen[a:b] = np.where(valid, cand[rows, j], -1)
        affinity[a:b] = aff[rows, j]
    return chosen, affinity


def _calibrated_bernoulli(
    rng: np.random.Generator, z: np.ndarray, slope: float, target: float
) -> np.ndarray:
    """Draw Bernoulli(sigmoid(a + slope·z)) with the intercept `a` solved (bisection) so the
    mean probability equals `target`: the funnel ratio is calibrated, the ranking by affinity
    stays. Uniforms are drawn before solving so the draw count never depends on the data."""
    u = rng.random(len(z))
    if len(z) == 0 or target >= 1.0:
        return u < target
    return u < _sigmoid(calibrated_intercept(z, slope, target) + slope * z)
