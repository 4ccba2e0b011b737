"""Marketplace simulator: users whose tastes are known drive the live HTTP service.

The synthetic generator's ground truth (`GroundTruth`: each user's taste, each item's latent
vector and popularity) decides how a simulated user reacts to a list; the recommenders only
ever see what a real service sees: requests, and the events the users cause.

Over simulated days, users of the generated world (those signed up before the start, and
those who sign up during the run: new users) open sessions; each session asks the service
of its A/B arm (hash assignment, `experiments.assignment`) for a top k, examines position p
with probability 1 / log2(p + 1) (position bias), clicks an examined item with probability
sigmoid(a + slope · z), z the standardised true utility (taste_strength × affinity + log
popularity, the generator's own choice weight; `a` set so that a random available item is
clicked at `click_rate`), then adds to cart and buys with probabilities that also rise with
z; a purchase earns price × the region's multiplier. Every event goes to every arm's
service (one event stream, as in production where all variants share the log); products
listed or delisted during the run are PUT / DELETEd at their time. A user's chance of a
session the next day grows with the clicks of their last session (satisfaction), so return
rate is a long-term outcome.

Every session also asks the arms it was not assigned to for their list (read-only), so the
expected clicks of each arm's list are known for the same users at the same moments: the
true CTR lift, against which the A/B estimate (user as the unit, delta method) is judged.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import numpy as np
import polars as pl

from marketrec.core.errors import ConfigError
from marketrec.data.schema import Dataset, epoch_seconds
from marketrec.data.split import global_cut
from marketrec.data.synthetic.truth import GroundTruth
from marketrec.data.synthetic.vectorised import calibrated_intercept, sigmoid
from marketrec.experiments.assignment import (
    Assigner,
    Assignment,
    ExperimentConfig,
    RequestContext,
    VariantSettings,
    parse_experiments,
)
from marketrec.experiments.exposures import ExposureLog, read_exposures
from marketrec.experiments.report import analyse, attribute
from marketrec.experiments.rollout import LiveAssigner, RolloutStore, guard

DAY = 86_400.0
_USER_ATTRIBUTES = ("age", "gender", "signup_channel")


@dataclass(frozen=True)
class Behaviour:
    """How simulated users act (known to the simulator only)."""

    #: chance that a random available item, once examined, is clicked
    click_rate: float = 0.04
    #: click logit per standard deviation of true utility
    slope: float = 1.5
    #: cart and purchase logits per standard deviation of true utility
    funnel_slope: float = 0.75
    cart_given_click: float = 0.25
    purchase_given_cart: float = 0.5
    #: expected sessions per user per day before satisfaction
    session_rate: float = 0.3
    #: log-rate of next-day sessions added per click of the user's last session
    return_per_click: float = 0.25
    devices: tuple[str, ...] = ("mobile", "desktop", "tablet")


@dataclass(frozen=True)
class SimulationConfig:
    start: datetime
    days: float = 3.0
    #: users simulated (drawn from the world's users signed up before the end)
    users: int = 2_000
    k: int = 10
    seed: int = 0
    experiment: str = "simulation"
    behaviour: Behaviour = field(default_factory=Behaviour)


class ArmError(ConfigError):
    """An arm answered a request with an HTTP error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Arm(Protocol):
    """One recommender under test, reached through the HTTP API (CONTRACT §6)."""

    name: str

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; the decoded JSON answer; `ConfigError` on a 4xx/5xx."""
        ...


class HttpArm:
    """An arm served at `url` (`marketrec serve`), over one keep-alive connection."""

    def __init__(self, name: str, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ConfigError(f"arm '{name}': URL needs a host and port, got {url!r}")
        self.name, self.url = name, url
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):  # one reconnect: a keep-alive connection the server closed
            try:
                self._connection.request(method, path, payload, headers)
                response = self._connection.getresponse()
                data = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self._connection.close()
                if attempt == 2:
                    raise ArmError(
                        f"arm '{self.name}': no answer from {self.url} ({exc})", 0
                    ) from None
        if response.status >= 400:
            raise ArmError(
                f"arm '{self.name}': {method} {path} answered {response.status}: {data[:300]!r}",
                response.status,
            )
        return json.loads(data) if data else None

    def close(self) -> None:
        self._connection.close()


def recommend(arm: Arm, user: str, k: int, region: str | None, device: str) -> dict[str, Any]:
    query = f"/v1/recommendations?user_id={quote(user)}&k={k}&device={quote(device)}"
    if region:
        query += f"&region={quote(region)}"
    return arm.call("GET", query)


class TruthModel:
    """Click, cart and purchase probabilities of (user, item) pairs from the ground truth."""

    def __init__(self, data: Dataset, truth: GroundTruth, behaviour: Behaviour, seed: int) -> None:
        self.behaviour = behaviour
        self.truth = truth
        self.item_row = {str(i): j for j, i in enumerate(truth.item_ids)}
        self.user_row = {str(u): j for j, u in enumerate(truth.user_ids)}
        items = data.items
        order = np.array([self.item_row[i] for i in items.get_column("item_id").to_list()])
        n = len(truth.item_ids)
        self.price = np.zeros(n)
        self.price[order] = items.get_column("price").cast(pl.Float64).fill_null(0.0).to_numpy()
        self.listed = np.full(n, -np.inf)
        self.listed[order] = _epoch(items.get_column("created_at"), -np.inf)
        self.delisted = _epoch(pl.Series(truth.item_delisted_at), np.inf)
        regions = items.get_column("regions").to_list() if "regions" in items.columns else []
        self.regions: list[set[str] | None] = [None] * n
        for j, allowed in zip(order, regions, strict=False):
            self.regions[j] = None if allowed is None else set(allowed)
        strength = truth.config.taste_strength
        self._log_pop = np.log(np.maximum(truth.item_popularity, 1e-12))
        rng = np.random.default_rng(seed)
        users = rng.integers(0, len(truth.user_ids), 20_000)
        cols = rng.integers(0, n, 20_000)
        sample = (
            strength * np.einsum("ij,ij->i", truth.user_taste[users], truth.item_latent[cols])
            + self._log_pop[cols]
        )
        self._mean, self._std = float(sample.mean()), max(float(sample.std()), 1e-9)
        z = (sample - self._mean) / self._std
        b = behaviour
        self.click_intercept = calibrated_intercept(z, b.slope, b.click_rate)
        # the funnel's rates hold for the items a random exposure gets clicked on
        clicked = sigmoid(self.click_intercept + b.slope * z)
        self.cart_intercept = calibrated_intercept(z, b.funnel_slope, b.cart_given_click, clicked)
        carted = clicked * sigmoid(self.cart_intercept + b.funnel_slope * z)
        self.purchase_intercept = calibrated_intercept(
            z, b.funnel_slope, b.purchase_given_cart, carted
        )

    def utility(self, user: str, items: list[str]) -> np.ndarray:
        """Standardised true utility of each item for the user (NaN for unknown items)."""
        row = self.user_row[user]
        cols = np.array([self.item_row.get(i, -1) for i in items])
        known = cols >= 0
        out = np.full(len(items), np.nan)
        if known.any():
            c = cols[known]
            raw = (
                self.truth.config.taste_strength
                * (self.truth.item_latent[c] @ self.truth.user_taste[row])
                + self._log_pop[c]
            )
            out[known] = (raw - self._mean) / self._std
        return out

    def funnel(
        self, user: str, region: str | None, items: list[str], at: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per item: P(click | examined), 0 for unknown, unlisted, delisted or not sold
        there; P(add to cart | clicked); P(buy | in the cart)."""
        z = self.utility(user, items)
        click = sigmoid(self.click_intercept + self.behaviour.slope * np.nan_to_num(z, nan=-1e9))
        for j, item in enumerate(items):
            col = self.item_row.get(item)
            if col is None or not self.available(col, region, at):
                click[j] = 0.0
        z, slope = np.nan_to_num(z, nan=0.0), self.behaviour.funnel_slope
        cart = sigmoid(self.cart_intercept + slope * z)
        buy = sigmoid(self.purchase_intercept + slope * z)
        return click, cart, buy

    def click_probability(
        self, user: str, region: str | None, items: list[str], at: float
    ) -> np.ndarray:
        """P(click | examined) per item (`funnel`'s first part)."""
        return self.funnel(user, region, items, at)[0]

    def available(self, col: int, region: str | None, at: float) -> bool:
        allowed = self.regions[col]
        return (
            self.listed[col] <= at
            and self.delisted[col] > at
            and (allowed is None or region is None or region in allowed)
        )


def examine_probability(k: int) -> np.ndarray:
    """Position bias: the chance a user looks at position p (1-based) is 1 / log2(p + 1)."""
    return 1.0 / np.log2(np.arange(2, k + 2))


@dataclass
class SessionOutcome:
    user_id: str
    arm: str
    ts: float
    clicks: int
    expected_clicks: dict[str, float]
    shown: dict[str, int]
    #: the assigned arm's list, as shown
    items: list[str] = field(default_factory=list)
    #: per arm, the expected purchase value of its list (true funnel and prices)
    expected_revenue: dict[str, float] = field(default_factory=dict)


@dataclass
class SimulationResult:
    sessions: list[SessionOutcome]
    events: pl.DataFrame
    seconds: float
    #: with a `front` service: sessions it served, those answered by the version the
    #: simulator's own assignment expected, and those whose list was the one that
    #: version's own service gave
    front: dict[str, int] | None = None

    def true_ctr(self) -> dict[str, float]:
        """Each arm's expected clicks per shown item over every session (its list was
        asked for in every session, assigned or not)."""
        arms = self.sessions[0].expected_clicks if self.sessions else {}
        return {
            arm: sum(s.expected_clicks[arm] for s in self.sessions)
            / max(sum(s.shown[arm] for s in self.sessions), 1)
            for arm in arms
        }


class Assigns(Protocol):
    def assign(self, context: RequestContext) -> list[Assignment]: ...


class Simulator:
    """Runs `SimulationConfig` against `arms` (name → Arm), assigning users by `experiments`
    (one experiment named `config.experiment` whose variants are the arms' names), or by
    `router` (its assigner, and which arm serves a request's assignments: a staged rollout,
    `StagedRollout`). `after_day(day, result so far)` runs at the end of each simulated day.
    `front`: one service hosting every arm's version that assigns and serves each session
    itself (`marketrec serve --rollouts` of a model-version rollout): it hears every event
    too, its list is the one shown, and each session checks it against the arm the
    simulator's own assignment picked (`SimulationResult.front`)."""

    def __init__(
        self,
        data: Dataset,
        truth: GroundTruth,
        arms: Mapping[str, Arm],
        config: SimulationConfig,
        experiments: ExperimentConfig | None = None,
        exposures: ExposureLog | None = None,
        progress: Callable[[float], None] | None = None,
        router: tuple[Assigns, Callable[[list[Assignment]], str]] | None = None,
        after_day: Callable[[int, SimulationResult], None] | None = None,
        front: Arm | None = None,
    ) -> None:
        self.data, self.truth, self.arms, self.config = data, truth, dict(arms), config
        self.front = front
        self.front_counts = dict.fromkeys(("sessions", "same_version", "same_list"), 0)
        #: every service that hears the event stream
        self.listeners = [*self.arms.values(), *([front] if front is not None else [])]
        self.assigner: Assigns
        if router is not None:
            self.assigner, self.route = router
        else:
            if experiments is None:
                experiments = equal_split(config.experiment, list(arms))
            self.assigner = Assigner(experiments)
            names = {v.name for e in experiments.experiments for v in e.variants}
            if not names <= set(arms):
                raise ConfigError(f"variants without an arm: {sorted(names - set(arms))}")
            self.route = self._by_variant
        self.exposures = exposures
        self.progress = progress
        self.after_day = after_day
        self.model = TruthModel(data, truth, config.behaviour, config.seed)
        self.rng = np.random.default_rng(config.seed)

    def run(self) -> SimulationResult:
        started = time.perf_counter()
        cfg, b = self.config, self.config.behaviour
        t0 = cfg.start.timestamp()
        end = t0 + cfg.days * DAY
        users = population(self.data, cfg, set(self.model.user_row))
        region = dict(zip(users["user_id"], users["region"], strict=True))
        signup = dict(zip(users["user_id"], users["signup"], strict=True))
        device = {u: b.devices[int(self.rng.integers(len(b.devices)))] for u in users["user_id"]}
        last_clicks: dict[str, int] = {}
        seen: set[str] = set()
        sessions: list[SessionOutcome] = []
        events: list[dict[str, Any]] = []
        catalogue = self._catalogue_changes(t0, end)
        examine = examine_probability(cfg.k)
        day, days_done = t0, 0
        while day < end:
            day_end = min(day + DAY, end)
            timeline: list[tuple[float, str, Any]] = []
            for user in users["user_id"]:
                s = signup[user]
                if s >= day_end:
                    continue
                if day <= s < day_end:  # arrives today: a first session at sign-up
                    timeline.append((s + 1.0, "session", user))
                    continue
                rate = b.session_rate * math.exp(b.return_per_click * last_clicks.get(user, 0))
                if self.rng.random() < 1.0 - math.exp(-rate * (day_end - day) / DAY):
                    timeline.append((day + self.rng.random() * (day_end - day), "session", user))
            timeline += [c for c in catalogue if day <= c[0] < day_end]
            timeline.sort(key=lambda x: (x[0], x[1]))
            for at, kind, what in timeline:
                if kind != "session":
                    self._catalogue_call(kind, what, at)
                    continue
                user = what
                if user not in seen and signup[user] >= t0:
                    self._put_user(user, at)
                outcome, caused = self._session(
                    user, region[user], device[user], at, user not in seen, examine
                )
                seen.add(user)
                last_clicks[user] = outcome.clicks
                sessions.append(outcome)
                events += caused
            day = day_end
            if self.after_day is not None:
                so_far = SimulationResult(sessions, _frame(events), time.perf_counter() - started)
                self.after_day(days_done, so_far)
            days_done += 1
            if self.progress:
                self.progress((day - t0) / (end - t0))
        front = dict(self.front_counts) if self.front is not None else None
        return SimulationResult(sessions, _frame(events), time.perf_counter() - started, front)

    def _by_variant(self, assignments: list[Assignment]) -> str:
        mine = [a for a in assignments if a.experiment == self.config.experiment]
        if not mine:
            raise ConfigError(f"a user falls outside experiment '{self.config.experiment}'")
        return mine[0].variant

    # ------------------------------------------------------------------ one session
    def _session(
        self,
        user: str,
        region: str | None,
        device: str,
        at: float,
        is_new: bool,
        examine: np.ndarray,
    ) -> tuple[SessionOutcome, list[dict[str, Any]]]:
        cfg = self.config
        context = RequestContext(user_id=user, region=region, device=device, is_new_user=is_new)
        assignments = self.assigner.assign(context)
        served = self.route(assignments)
        lists: dict[str, list[str]] = {}
        request_id, version = "", ""
        for name, arm in self.arms.items():
            body = recommend(arm, user, cfg.k, region, device)
            lists[name] = [item["item_id"] for item in body["items"]]
            if name == served:
                request_id, version = body["request_id"], body["model_version"]
        if self.front is not None:  # it serves the session; the arms give the truth
            body = recommend(self.front, user, cfg.k, region, device)
            request_id = body["request_id"]
            counts = self.front_counts
            counts["sessions"] += 1
            counts["same_version"] += body["model_version"] == version
            front_list = [item["item_id"] for item in body["items"]]
            counts["same_list"] += front_list == lists[served]
            lists[served] = front_list
        expected, revenue, funnels = {}, {}, {}
        for name, items in lists.items():
            click, cart, buy = funnels[name] = self.model.funnel(user, region, items, at)
            looks = examine[: len(items)]
            expected[name] = float((looks * click).sum())
            values = np.array([self._value(item, region) for item in items])
            revenue[name] = float((looks * click * cart * buy * values).sum())
        shown = lists[served]
        click, cart, buy = funnels[served]
        if self.exposures is not None and assignments:
            self.exposures.record(request_id, user, assignments, shown, region, ts=at)
        looked = self.rng.random(len(shown)) < examine[: len(shown)]
        clicked = looked & (self.rng.random(len(shown)) < click)
        caused: list[dict[str, Any]] = []
        session_id = f"sim-{user}-{int(at)}"
        t = at
        for j in np.flatnonzero(clicked):
            item = shown[j]
            t += 5.0 + 20.0 * self.rng.random()
            caused.append(_event(user, item, "click", t, region, device, session_id))
            if self.rng.random() >= cart[j]:
                continue
            t += 10.0
            caused.append(_event(user, item, "add_to_cart", t, region, device, session_id))
            if self.rng.random() >= buy[j]:
                continue
            t += 30.0
            value = round(self._value(item, region), 2)
            caused.append(
                _event(user, item, "purchase", t, region, device, session_id, value=value)
            )
        if caused:
            for arm in self.listeners:  # one event stream: every arm learns from it
                arm.call("POST", "/v1/events", caused)
        outcome = SessionOutcome(
            user,
            served,
            at,
            int(clicked.sum()),
            expected,
            {name: len(items) for name, items in lists.items()},
            shown,
            revenue,
        )
        return outcome, caused

    def _value(self, item: str, region: str | None) -> float:
        """What a purchase of `item` earns in `region`: price × the region's multiplier."""
        col = self.model.item_row.get(item)
        price = 0.0 if col is None else float(self.model.price[col])
        if region in self.truth.region_names:
            price *= self.truth.region_multiplier(region)
        return price

    # ------------------------------------------------------------------ the world
    def _catalogue_changes(self, t0: float, end: float) -> list[tuple[float, str, Any]]:
        items = self.data.items
        listed = _epoch(items.get_column("created_at"), -np.inf)
        changes: list[tuple[float, str, Any]] = []
        rows = items.to_dicts()
        for j in np.flatnonzero((listed >= t0) & (listed < end)):
            changes.append((float(listed[j]), "list", rows[j]))
        delisted = self.model.delisted
        for col in np.flatnonzero((delisted >= t0) & (delisted < end)):
            changes.append((float(delisted[col]), "delist", str(self.truth.item_ids[col])))
        return changes

    def _catalogue_call(self, kind: str, what: Any, at: float) -> None:
        if kind == "list":
            entry = {
                k: v
                for k, v in what.items()
                if k in {"title", "description", "brand", "category", "tags", "price", "regions"}
                and v is not None
            }
            entry["created_at"] = at
            for arm in self.listeners:
                arm.call("PUT", f"/v1/items/{quote(what['item_id'])}", entry)
        else:
            for arm in self.listeners:
                try:
                    arm.call("DELETE", f"/v1/items/{quote(what)}")
                except ArmError as exc:
                    if exc.status != 404:  # 404: the arm never knew the item
                        raise

    @cached_property
    def _profiles(self) -> dict[str, dict[str, Any]]:
        return {row["user_id"]: row for row in self.data.users.iter_rows(named=True)}

    def _put_user(self, user: str, at: float) -> None:
        row = self._profiles[user]
        body = {k: row[k] for k in _USER_ATTRIBUTES if row.get(k) is not None}
        body["region"] = row.get("region")
        body["signup_at"] = at
        for arm in self.listeners:
            arm.call("PUT", f"/v1/users/{quote(user)}", body)


def population(data: Dataset, config: SimulationConfig, known: set[str]) -> dict[str, list[Any]]:
    """The simulated users: `config.users` of the world's users (those in the ground truth,
    `known`) signed up before the end, drawn with the config's seed (the same every call);
    their region and sign-up time (epoch seconds; -inf when unknown)."""
    users = data.users
    end = config.start.timestamp() + config.days * DAY
    signup = (
        _epoch(users.get_column("signup_at"), -np.inf)
        if "signup_at" in users.columns
        else np.full(users.height, -np.inf)
    )
    ids = users.get_column("user_id").to_list()
    eligible = np.array([j for j in np.flatnonzero(signup < end) if ids[j] in known], dtype=int)
    if len(eligible) == 0:
        raise ConfigError("no user of the world signs up before the simulation ends")
    rng = np.random.default_rng([config.seed, 17])
    pick = np.sort(rng.choice(eligible, min(config.users, len(eligible)), replace=False))
    regions = (
        users.get_column("region").to_list() if "region" in users.columns else [None] * len(ids)
    )
    return {
        "user_id": [ids[j] for j in pick],
        "region": [regions[j] for j in pick],
        "signup": [float(signup[j]) for j in pick],
    }


def _frame(events: list[dict[str, Any]]) -> pl.DataFrame:
    if not events:
        return pl.DataFrame(
            schema={
                "user_id": pl.String,
                "item_id": pl.String,
                "event": pl.String,
                "ts": pl.Datetime("us", "UTC"),
                "value": pl.Float64,
            }
        )
    return pl.DataFrame(events).with_columns(
        pl.from_epoch(pl.col("ts"), time_unit="s").dt.replace_time_zone("UTC")
    )


_PLAN = (("region", 50.0), ("global", 50.0), ("completed", 100.0))


class StagedRollout:
    """A staged rollout of `candidate` over `current` (two arms), driven day by day: the
    router sends a request to `candidate` when the rollout's stage gives its user the new
    version (`RolloutStore`'s experiment: internal users in staging, a share of the listed
    regions, then of everyone), else to `current`; after each day the guardrails are
    checked on the exposures and events so far (`guard`: CTR or conversion significantly
    worse rolls it back), and if they hold the rollout takes the day's step of `plan`:
    ("region", percent) in `regions`, ("global", percent) or ("completed", 100).
    """

    def __init__(
        self,
        store: RolloutStore,
        name: str,
        current: str,
        candidate: str,
        internal_users: tuple[str, ...],
        regions: tuple[str, ...],
        exposures: Path,
        plan: tuple[tuple[str, float], ...] = _PLAN,
        model: str | None = None,
    ) -> None:
        """`model`: the candidate's folder, for a service that hosts both versions itself
        (the simulator's `front`); without it the rollout names the candidate arm."""
        self.store, self.name, self.exposures = store, name, exposures
        self.current, self.candidate = current, candidate
        self.regions, self.plan = regions, plan
        settings = (
            VariantSettings(model=model) if model else VariantSettings(model_version=candidate)
        )
        store.start(name, settings, internal_users, routed=True)
        self.assigner = LiveAssigner(ExperimentConfig(experiments=()), store)
        self.log: list[dict[str, Any]] = []

    @property
    def router(self) -> tuple[Assigns, Callable[[list[Assignment]], str]]:
        return self.assigner, self._route

    def _route(self, assignments: list[Assignment]) -> str:
        experiment = f"rollout:{self.name}"
        new = any(a.experiment == experiment and a.variant == "new" for a in assignments)
        return self.candidate if new else self.current

    def after_day(self, day: int, so_far: SimulationResult) -> None:
        rollout = self.store.get(self.name)
        if not rollout.active:
            return
        violations: list[str] = []
        entry: dict[str, Any] = {"day": day, "stage": rollout.stage}
        try:
            table = attribute(read_exposures(self.exposures), so_far.events)
            result = analyse(table, f"rollout:{self.name}", "control")
            rollout, violations = guard(self.store, self.name, result)
            ctr = next(e for e in result["effects"].get("new", []) if e["metric"] == "ctr")
            entry["ctr"] = {k: ctr[k] for k in ("difference", "low", "high")}
        except (ConfigError, StopIteration) as exc:  # one variant has no exposures yet
            entry["analysis"] = f"skipped: {exc}"
        entry["violations"] = violations
        if rollout.active and day < len(self.plan):
            stage, percent = self.plan[day]
            if stage == "region":
                rollout = self.store.promote(self.name, percent, self.regions)
            elif stage == "global":
                if rollout.stage == "region":
                    rollout = self.store.promote(self.name)
                if percent > rollout.percent:
                    rollout = self.store.promote(self.name, percent)
            else:
                while rollout.active:
                    rollout = self.store.promote(self.name)
        entry["now"] = (rollout.stage, rollout.percent)
        self.log.append(entry)


def equal_split(experiment: str, arms: list[str], salt: str | None = None) -> ExperimentConfig:
    """One experiment over every user with the arms in equal shares (first = control);
    `salt` reshuffles the users (default: the experiment's name)."""
    share = 100.0 / len(arms)
    spec: dict[str, Any] = {
        "name": experiment,
        "variants": [{"name": a, "allocation": share} for a in arms],
    }
    if salt is not None:
        spec["salt"] = salt
    return parse_experiments({"experiments": [spec]}, source="simulation")


def truth_summary(
    result: SimulationResult, control: str, catalogue: int, new_items: set[str]
) -> dict[str, Any]:
    """What the ground truth says, per arm: the true CTR (expected clicks per shown item,
    over every session: each arm's list was asked for in each), its difference and relative
    lift over `control`; and the long-term side of the served lists: catalogue coverage
    (distinct items shown / `catalogue`) and the share of shown slots that went to
    `new_items` (listed during the run)."""
    ctr = result.true_ctr()
    users = {s.user_id for s in result.sessions}
    revenue = {
        arm: sum(s.expected_revenue.get(arm, 0.0) for s in result.sessions) / max(len(users), 1)
        for arm in ctr
    }
    out: dict[str, Any] = {
        "sessions": len(result.sessions),
        "true_ctr": ctr,
        "true_revenue_per_user": revenue,
        "true_revenue_per_user_difference": {
            a: v - revenue[control] for a, v in revenue.items() if a != control
        },
        "true_ctr_difference": {a: v - ctr[control] for a, v in ctr.items() if a != control},
        "true_lift": {
            a: (v / ctr[control] - 1.0) if ctr[control] else math.nan
            for a, v in ctr.items()
            if a != control
        },
        "arms": {},
    }
    for arm in ctr:
        mine = [s for s in result.sessions if s.arm == arm]
        slots = [item for s in mine for item in s.items]
        out["arms"][arm] = {
            "sessions": len(mine),
            "coverage": len(set(slots)) / max(catalogue, 1),
            "new_item_share": sum(item in new_items for item in slots) / max(len(slots), 1),
        }
    return out


def judge(analysis: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """The A/B estimate of each arm's CTR difference beside the true one (and of revenue
    per user, when the truth has it): covered when the 95 % interval holds the truth."""
    verdicts = {}
    for arm, effects in analysis["effects"].items():
        by_metric = {e["metric"]: e for e in effects}
        ctr = by_metric["ctr"]
        true = truth["true_ctr_difference"][arm]
        verdicts[arm] = {
            "estimated": ctr["difference"],
            "low": ctr["low"],
            "high": ctr["high"],
            "true": true,
            "covered": ctr["low"] <= true <= ctr["high"],
        }
        revenue = truth.get("true_revenue_per_user_difference", {}).get(arm)
        if revenue is not None and "revenue_per_user" in by_metric:
            e = by_metric["revenue_per_user"]
            verdicts[arm]["revenue_per_user"] = {
                "estimated": e["difference"],
                "low": e["low"],
                "high": e["high"],
                "true": revenue,
                "covered": e["low"] <= revenue <= e["high"],
            }
    return verdicts


def _event(
    user: str,
    item: str,
    kind: str,
    ts: float,
    region: str | None,
    device: str,
    session_id: str,
    value: float | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "user_id": user,
        "item_id": item,
        "event": kind,
        "ts": round(ts, 3),
        "device": device,
        "session_id": session_id,
    }
    if region is not None:
        event["region"] = region
    if value is not None:
        event["value"] = value
    return event


def _epoch(series: pl.Series, missing: float) -> np.ndarray:
    """Epoch seconds, `missing` where null."""
    seconds = epoch_seconds(series)
    return np.where(np.isnan(seconds), missing, seconds)


def start_of(data: Dataset, quantile: float = 0.8) -> datetime:
    """The default simulation start: where `marketrec split` cuts by default."""
    return global_cut(data, quantile)


__all__ = [
    "Arm",
    "Behaviour",
    "HttpArm",
    "SimulationConfig",
    "SimulationResult",
    "Simulator",
    "StagedRollout",
    "TruthModel",
    "equal_split",
    "examine_probability",
    "judge",
    "population",
    "start_of",
    "truth_summary",
]
