"""The typed training configuration (`marketrec train --config FILE`, a TOML file).

Every section is validated: an unknown key or a wrong type is a `ConfigError` naming the key,
so a typo never silently falls back to a default. `configs/train.example.toml` documents each
field and a test parses it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from marketrec.core.errors import ConfigError
from marketrec.features.interactions import DEFAULT_EVENT_WEIGHTS, InteractionConfig

DEFAULT_MODEL = "als"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSection(_Section):
    name: str = DEFAULT_MODEL
    params: dict[str, Any] = Field(default_factory=dict)


class InteractionSection(_Section):
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    default_weight: float = Field(default=1.0, ge=0)
    ignore: list[str] = Field(default_factory=lambda: ["search"])

    def to_config(self) -> InteractionConfig:
        return InteractionConfig(dict(self.event_weights), self.default_weight, tuple(self.ignore))


class TuningSection(_Section):
    enabled: bool = False
    protocol: Literal["global", "per-user", "leave-one-out"] = "global"
    metric: str = "NDCG@10"


class TrainConfig(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    fallback: dict[str, Any] | None = None
    #: `--model two-stage` only: settings of the pipeline after retrieval and of the ranking
    #: stage (marketrec.pipeline's PipelineConfig and RankingParams validate them)
    pipeline: dict[str, Any] = Field(default_factory=dict)
    ranking: dict[str, Any] = Field(default_factory=dict)
    interactions: InteractionSection = Field(default_factory=InteractionSection)
    tuning: TuningSection = Field(default_factory=TuningSection)


def load_train_config(path: str | Path | None) -> TrainConfig:
    """Read a TOML training config; no path gives the defaults."""
    if path is None:
        return TrainConfig()
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    try:
        raw = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    try:
        return TrainConfig(**raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{file}: {problems}") from None
