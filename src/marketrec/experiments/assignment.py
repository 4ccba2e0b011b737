"""Who sees which variant: deterministic, layered assignment of users to experiments.

A user's bucket in a layer is a hash of (layer salt, user id) into `BUCKETS` slots: the same
in every process, on every machine and after every restart (SHA-256, never Python's salted
`hash()`). Experiments in one layer take disjoint bucket ranges, so a user is in at most one
of them: layers are how experiments that would interfere (two ranking changes) are kept
apart, while experiments in different layers overlap independently (different salts).

Inside its range an experiment splits users among its variants by a second hash of
(experiment salt, user id) against the variants' allocations, so changing one
experiment's range never reshuffles who is in which of its variants. Targeting (region,
segment, new or returning user, device) decides whether a request takes part at all;
forced variants pin listed users (QA, staff) whatever their hash.

A variant says what it changes: a model version and/or Recommender settings (retrieval
size, diversity strength, exploration share); the service applies them per request.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from marketrec.core.errors import ConfigError

#: slots per layer: allocations and ranges are resolved to 0.01 %
BUCKETS = 10_000


def bucket(salt: str, user_id: str, buckets: int = BUCKETS) -> int:
    """The user's slot in [0, buckets) for this salt: uniform and stable everywhere."""
    digest = hashlib.sha256(f"{salt}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VariantSettings(_Strict):
    """What a variant changes for the requests it serves (unset: the service's default).

    `model`: the folder of the model version that answers the variant's requests (the
    service loads it beside its own model and feeds it the same event log; its version is
    read from the folder); `model_version`: the version by name (one the service already
    hosts: its own, or one of `serve --model-version DIR`). With both, they must agree."""

    model_version: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)
    candidates: int | None = Field(default=None, ge=1, le=10_000)
    diversity_strength: float | None = Field(default=None, ge=0.0, le=1.0)
    exploration_share: float | None = Field(default=None, ge=0.0, le=1.0)


class Variant(_Strict):
    name: str = Field(min_length=1, max_length=64)
    #: share of the experiment's users, in percent (0: only forced users, as in a
    #: rollout's staging stage)
    allocation: float = Field(ge=0.0, le=100.0)
    settings: VariantSettings = VariantSettings()


class Targeting(_Strict):
    """Who may take part; an unset field admits everyone."""

    regions: tuple[str, ...] | None = None
    segments: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    #: True: only users new to the service; False: only returning ones
    new_users: bool | None = None

    def admits(self, context: RequestContext) -> bool:
        return (
            _member(self.regions, context.region)
            and _member(self.segments, context.segment)
            and _member(self.devices, context.device)
            and (self.new_users is None or self.new_users == context.is_new_user)
        )


class RequestContext(_Strict):
    """What targeting reads about the request."""

    user_id: str
    region: str | None = None
    segment: str | None = None
    device: str | None = None
    is_new_user: bool = False


class Experiment(_Strict):
    name: str = Field(min_length=1, max_length=128)
    layer: str = Field(default="default", min_length=1)
    #: hashes users into variants; defaults to the name (change it to reshuffle)
    salt: str | None = None
    #: the layer's buckets this experiment owns, [start, stop) in percent of the layer
    traffic: tuple[float, float] = (0.0, 100.0)
    variants: tuple[Variant, ...] = Field(min_length=1)
    targeting: Targeting = Targeting()
    #: user id → variant name, whatever the hash says (QA, internal users)
    forced: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment '{self.name}': variant names repeat: {names}")
        total = sum(v.allocation for v in self.variants)
        if abs(total - 100.0) > 1e-6:
            raise ValueError(
                f"experiment '{self.name}': variant allocations add up to {total:g} %, not 100"
            )
        start, stop = self.traffic
        if not 0.0 <= start < stop <= 100.0:
            raise ValueError(
                f"experiment '{self.name}': traffic [{start:g}, {stop:g}) must lie in [0, 100) "
                "and be non-empty"
            )
        unknown = sorted(set(self.forced.values()) - set(names))
        if unknown:
            raise ValueError(
                f"experiment '{self.name}': forced variant(s) {unknown} not among {names}"
            )
        return self

    @property
    def bucket_range(self) -> range:
        start, stop = self.traffic
        return range(round(start * BUCKETS / 100), round(stop * BUCKETS / 100))

    def variant_for(self, user_id: str) -> Variant:
        """The variant of a user inside this experiment (forced, else by allocation)."""
        forced = self.forced.get(user_id)
        if forced is not None:
            return next(v for v in self.variants if v.name == forced)
        slot = bucket(self.salt or self.name, user_id)
        edge = 0.0
        for variant in self.variants:
            edge += variant.allocation * BUCKETS / 100
            if slot < round(edge):
                return variant
        return self.variants[-1]


class Assignment(_Strict):
    experiment: str
    layer: str
    variant: str
    settings: VariantSettings
    forced: bool = False


class ExperimentConfig(_Strict):
    """Every running experiment; layers are named by the experiments in them."""

    experiments: tuple[Experiment, ...] = ()
    #: salts per layer (default: the layer's name)
    layer_salts: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _disjoint(self) -> ExperimentConfig:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment names repeat: {names}")
        by_layer: dict[str, list[Experiment]] = {}
        for experiment in self.experiments:
            by_layer.setdefault(experiment.layer, []).append(experiment)
        for layer, members in by_layer.items():
            ordered = sorted(members, key=lambda e: e.traffic[0])
            for a, b in pairwise(ordered):
                if b.traffic[0] < a.traffic[1]:
                    raise ValueError(
                        f"layer '{layer}': experiments '{a.name}' {list(a.traffic)} and "
                        f"'{b.name}' {list(b.traffic)} overlap; experiments in one layer "
                        "need disjoint traffic ranges"
                    )
        return self


class Assigner:
    """Assignments of requests to experiments under one `ExperimentConfig`."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self._layers: dict[str, list[Experiment]] = {}
        for experiment in config.experiments:
            self._layers.setdefault(experiment.layer, []).append(experiment)

    @classmethod
    def from_file(cls, path: str | Path) -> Assigner:
        return cls(load_experiments(path))

    def layer_bucket(self, layer: str, user_id: str) -> int:
        return bucket(self.config.layer_salts.get(layer, layer), user_id)

    def assign(self, context: RequestContext) -> list[Assignment]:
        """At most one assignment per layer: the experiment whose range holds the user's
        bucket (or that forces the user), if its targeting admits the request."""
        out = []
        for layer, members in self._layers.items():
            chosen = next((e for e in members if context.user_id in e.forced), None)
            if chosen is None:
                slot = self.layer_bucket(layer, context.user_id)
                chosen = next((e for e in members if slot in e.bucket_range), None)
                if chosen is None or not chosen.targeting.admits(context):
                    continue
            variant = chosen.variant_for(context.user_id)
            out.append(
                Assignment(
                    experiment=chosen.name,
                    layer=layer,
                    variant=variant.name,
                    settings=variant.settings,
                    forced=context.user_id in chosen.forced,
                )
            )
        return out

    def settings(self, assignments: Sequence[Assignment]) -> VariantSettings:
        """The settings the assignments ask for together; two layers setting the same
        field is a configuration error (their experiments would interfere)."""
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for a in assignments:
            for field, value in a.settings.model_dump(exclude_none=True).items():
                if field in merged and merged[field] != value:
                    raise ConfigError(
                        f"experiments '{owner[field]}' and '{a.experiment}' both set "
                        f"'{field}': put them in one layer"
                    )
                merged[field], owner[field] = value, a.experiment
        return VariantSettings(**merged)


def load_experiments(path: str | Path) -> ExperimentConfig:
    """An experiment file: TOML (`[[experiments]]` tables) or JSON."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the experiment file ({exc.strerror})") from None
    try:
        raw = json.loads(text) if file.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: not valid {file.suffix.lstrip('.') or 'TOML'}: {exc}") from None
    return parse_experiments(raw, str(file))


def parse_experiments(raw: Mapping[str, Any], source: str = "experiments") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def model_variants(config: ExperimentConfig) -> list[tuple[str, str, VariantSettings]]:
    """(experiment, variant, settings) of every variant that names a model (folder or
    version): what a service must host before it serves `config`."""
    return [
        (experiment.name, variant.name, variant.settings)
        for experiment in config.experiments
        for variant in experiment.variants
        if variant.settings.model is not None or variant.settings.model_version is not None
    ]


def _member(allowed: tuple[str, ...] | None, value: str | None) -> bool:
    return allowed is None or (value is not None and value in allowed)


__all__ = [
    "BUCKETS",
    "Assigner",
    "Assignment",
    "Experiment",
    "ExperimentConfig",
    "RequestContext",
    "Targeting",
    "Variant",
    "VariantSettings",
    "bucket",
    "load_experiments",
    "model_variants",
    "parse_experiments",
]
