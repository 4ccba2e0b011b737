"""Staged rollout of a new version (model or settings) with guardrails.

A rollout moves through stages: `staging` (only the listed internal users get the new
version) → `region` (the listed regions, a ramped percentage of their users) → `global`
(a ramped percentage of everyone) → `completed` (everyone); `rolled_back` ends it at any
stage. Each stage is an experiment in a layer of its own (`rollout:<name>`), so the
service's assignment, response naming, exposure logging and the report all work for it
unchanged, and a user's bucket stays the same while the percentage grows: users already
on the new version stay on it.

Guardrails: after each stage, `guard` analyses the exposures so far; when a guardrail
metric (default CTR and conversion) is significantly worse for the new version (the 95 %
interval of the difference lies below zero), the rollout is rolled back with the reason.

The state is one JSON file, written atomically (temporary file, then rename); the service
re-reads it when it changes, so a promotion or rollback reaches every worker within a
request.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from marketrec.core.errors import ConfigError
from marketrec.experiments.assignment import (
    Assigner,
    Assignment,
    Experiment,
    ExperimentConfig,
    RequestContext,
    Targeting,
    Variant,
    VariantSettings,
)

Stage = Literal["staging", "region", "global", "completed", "rolled_back"]
DEFAULT_GUARDRAILS = ("ctr", "conversion")


class StageChange(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    ts: float
    stage: Stage
    percent: float
    reason: str = ""


class Rollout(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    settings: VariantSettings
    internal_users: tuple[str, ...] = ()
    stage: Stage = "staging"
    regions: tuple[str, ...] = ()
    percent: float = Field(default=0.0, ge=0.0, le=100.0)
    guardrails: tuple[str, ...] = DEFAULT_GUARDRAILS
    history: tuple[StageChange, ...] = ()

    @property
    def active(self) -> bool:
        return self.stage not in ("completed", "rolled_back")

    def experiment(self) -> Experiment | None:
        """This stage as an experiment (None once rolled back: nobody gets it)."""
        if self.stage == "rolled_back":
            return None
        share = 100.0 if self.stage == "completed" else self.percent
        variants = [
            Variant(name="new", allocation=share, settings=self.settings),
            Variant(name="control", allocation=100.0 - share),
        ]
        return Experiment(
            name=f"rollout:{self.name}",
            layer=f"rollout:{self.name}",
            variants=tuple(variants),
            targeting=Targeting(regions=self.regions or None)
            if self.stage == "region"
            else Targeting(),
            forced={user: "new" for user in self.internal_users},
        )


def _changed(rollout: Rollout, reason: str = "", **update: Any) -> Rollout:
    moved = rollout.model_copy(update=update)
    entry = StageChange(ts=time.time(), stage=moved.stage, percent=moved.percent, reason=reason)
    return moved.model_copy(update={"history": (*rollout.history, entry)})


class RolloutStore:
    """Rollouts kept in one JSON file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Rollout]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            return {name: Rollout.model_validate(r) for name, r in raw.items()}
        except (json.JSONDecodeError, ValidationError, AttributeError) as exc:
            raise ConfigError(f"{self.path}: not a rollout state file ({exc})") from None

    def get(self, name: str) -> Rollout:
        rollouts = self.load()
        if name not in rollouts:
            raise ConfigError(f"no rollout '{name}' (known: {sorted(rollouts) or 'none'})")
        return rollouts[name]

    def save(self, rollout: Rollout) -> Rollout:
        rollouts = self.load()
        rollouts[rollout.name] = rollout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(f".tmp-{os.getpid()}")
        temporary.write_text(
            json.dumps({n: r.model_dump(mode="json") for n, r in rollouts.items()}, indent=2)
        )
        temporary.replace(self.path)  # atomic: a reader sees the old file or the new one
        return rollout

    def experiments(self) -> ExperimentConfig:
        """Every rollout's current stage as experiments, for the service's assigner."""
        found = [r.experiment() for r in self.load().values()]
        return ExperimentConfig(experiments=tuple(e for e in found if e is not None))

    # ----------------------------------------------------------------- stages
    def start(
        self,
        name: str,
        settings: VariantSettings,
        internal_users: tuple[str, ...],
        guardrails: tuple[str, ...] = DEFAULT_GUARDRAILS,
        routed: bool = False,
        hosted: Collection[str] = (),
    ) -> Rollout:
        """A rollout of another model version names its folder (`settings.model`: every
        service reading the state file hosts it beside its own model) or a version in
        `hosted` (the versions the service already hosts); `routed`: a router in front of
        the services sends each variant to its own deployment (`marketrec simulate
        --rollout`), so the bare version name is enough."""
        running = self.load().get(name)
        if running is not None and running.active:
            raise ConfigError(f"rollout '{name}' is already running (stage {running.stage})")
        if not internal_users:
            raise ConfigError("a rollout starts in staging: name at least one internal user")
        wanted = settings.model_version
        if wanted is not None and settings.model is None and not routed and wanted not in hosted:
            raise ConfigError(
                f"a rollout of model version '{wanted}' needs the folder that holds it "
                "(`marketrec rollout start --model DIR`): each service reading the state file "
                "hosts it beside its own model"
            )
        rollout = Rollout(
            name=name, settings=settings, internal_users=internal_users, guardrails=guardrails
        )
        return self.save(_changed(rollout, "started"))

    def promote(
        self, name: str, percent: float | None = None, regions: tuple[str, ...] = ()
    ) -> Rollout:
        """staging → region (needs `regions`) → more percent in them → global → 100 % =
        completed. Without `percent` a stage starts at 10 % and global ends at 100 %."""
        rollout = self.get(name)
        if not rollout.active:
            raise ConfigError(f"rollout '{name}' is {rollout.stage}: nothing to promote")
        if percent is not None and not 0 < percent <= 100:
            raise ConfigError(f"percent must be in (0, 100], got {percent}")
        if rollout.stage == "staging":
            if not regions:
                raise ConfigError("promoting from staging goes to a region stage: name regions")
            update = {"stage": "region", "regions": regions, "percent": percent or 10.0}
            return self.save(_changed(rollout, "promoted", **update))
        if rollout.stage == "region" and percent is None:  # the regions' ramp is done
            # never below the regions' share: users already on the new version stay on it
            update = {"stage": "global", "regions": (), "percent": max(10.0, rollout.percent)}
            return self.save(_changed(rollout, "promoted", **update))
        wanted = 100.0 if percent is None else percent
        if wanted < rollout.percent:
            raise ConfigError(
                f"rollout '{name}' is at {rollout.percent:g} %: promotion only ramps up "
                "(roll back to stop it)"
            )
        if rollout.stage == "global" and wanted >= 100.0:
            return self.save(_changed(rollout, "completed", stage="completed", percent=100.0))
        return self.save(_changed(rollout, "ramped", percent=wanted))

    def rollback(self, name: str, reason: str = "manual") -> Rollout:
        rollout = self.get(name)
        if rollout.stage == "rolled_back":
            return rollout
        return self.save(_changed(rollout, reason, stage="rolled_back", percent=0.0))


class LiveAssigner:
    """The service's assigner: fixed experiments plus the rollouts in a state file, rebuilt
    whenever the file changes (one `stat` a request), so a promotion or rollback applies
    from the next request on in every worker."""

    def __init__(self, base: ExperimentConfig, rollouts: RolloutStore | None = None) -> None:
        self.base, self.rollouts = base, rollouts
        self._stamp: tuple[int, int] | None = None
        self._assigner = Assigner(base)
        self._refresh()

    @property
    def config(self) -> ExperimentConfig:
        return self._refresh().config

    def assign(self, context: RequestContext) -> list[Assignment]:
        return self._refresh().assign(context)

    def settings(self, assignments: list[Assignment]) -> VariantSettings:
        return self._refresh().settings(assignments)

    def _refresh(self) -> Assigner:
        if self.rollouts is None:
            return self._assigner
        try:
            info = self.rollouts.path.stat()
            stamp = (info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = (0, 0)
        if stamp != self._stamp:
            found = self.rollouts.experiments().experiments if stamp != (0, 0) else ()
            config = ExperimentConfig(
                experiments=(*self.base.experiments, *found), layer_salts=self.base.layer_salts
            )
            self._assigner, self._stamp = Assigner(config), stamp
        return self._assigner


#: users each variant needs before a guardrail may fire: with a handful of users the
#: intervals are not to be trusted (no clicks at all gives a zero variance, an interval of
#: one point below zero: the simulator's staging day with two internal users did that)
MIN_GUARD_USERS = 50


def guardrail_violations(
    rollout: Rollout, result: dict[str, Any], min_users: int = MIN_GUARD_USERS
) -> list[str]:
    """Guardrail metrics significantly worse for the new version in an `analyse` result
    (control = "control", treatment = "new"), once both have `min_users` users."""
    out = []
    for effect in result.get("effects", {}).get("new", []):
        if min(effect["users_control"], effect["users_treatment"]) < min_users:
            continue
        if effect["metric"] in rollout.guardrails and effect["high"] < 0:
            out.append(
                f"{effect['metric']} {effect['relative']:+.1%} "
                f"(95 % interval [{effect['low']:+.4g}, {effect['high']:+.4g}])"
            )
    return out


def guard(
    store: RolloutStore, name: str, result: dict[str, Any], min_users: int = MIN_GUARD_USERS
) -> tuple[Rollout, list[str]]:
    """Roll `name` back when its guardrails are violated in `result`."""
    rollout = store.get(name)
    violations = guardrail_violations(rollout, result, min_users)
    if violations and rollout.active:
        rollout = store.rollback(name, "guardrail: " + "; ".join(violations))
    return rollout, violations


__all__ = [
    "DEFAULT_GUARDRAILS",
    "MIN_GUARD_USERS",
    "LiveAssigner",
    "Rollout",
    "RolloutStore",
    "guard",
    "guardrail_violations",
]
