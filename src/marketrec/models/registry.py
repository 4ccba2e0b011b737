"""Model names → scorer, typed parameters and tuning grid; the one place models are chosen.

`create("ease", {"l2": 300})` builds a recommender; `load_model(folder)` reads one back from its
manifest. Unknown names and bad parameters raise `ConfigError` listing what is valid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from marketrec.core.errors import ConfigError, ModelError
from marketrec.features.interactions import InteractionConfig
from marketrec.models.base import CollaborativeRecommender, read_manifest
from marketrec.models.ease import EASEParams, EASEScorer
from marketrec.models.factorization import ALSParams, ALSScorer, BPRParams, BPRScorer
from marketrec.models.itemknn import ItemKNNParams, ItemKNNScorer
from marketrec.models.popularity import PopularityParams, PopularityScorer
from marketrec.models.scoring import Params, Scorer
from marketrec.models.two_tower import TwoTowerParams, TwoTowerScorer


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    params: type[Params]
    build: Callable[[Any], Scorer]
    grid: Mapping[str, list[Any]] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "popularity",
            "global popularity with time decay",
            PopularityParams,
            PopularityScorer,
            {"half_life_days": [None, 3.0, 14.0, 60.0]},
            {"per_region": False},
        ),
        ModelSpec(
            "region-popularity",
            "per-region popularity with time decay",
            PopularityParams,
            PopularityScorer,
            {"half_life_days": [None, 3.0, 14.0, 60.0], "region_prior": [10.0, 100.0, 1000.0]},
            {"per_region": True},
        ),
        ModelSpec(
            "itemknn",
            "item-based kNN, shrunk cosine",
            ItemKNNParams,
            ItemKNNScorer,
            {"neighbours": [20, 50, 100, 200, 500], "shrink": [0.0, 10.0, 50.0]},
        ),
        ModelSpec(
            "ease",
            "EASE linear autoencoder (Steck 2019)",
            EASEParams,
            EASEScorer,
            {"l2": [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0]},
        ),
        ModelSpec(
            "als",
            "implicit ALS (Hu et al. 2008)",
            ALSParams,
            ALSScorer,
            {
                "factors": [32, 64, 128],
                "regularization": [0.01, 0.1, 1.0],
                "alpha": [1.0, 5.0, 20.0],
            },
        ),
        ModelSpec(
            "bpr",
            "BPR matrix factorisation (Rendle et al. 2009)",
            BPRParams,
            BPRScorer,
            {
                "factors": [32, 64, 128],
                "learning_rate": [0.01, 0.05],
                "regularization": [0.001, 0.01],
            },
        ),
        ModelSpec(
            "two-tower",
            "two-tower retrieval (PyTorch): content, profile, context and recent history",
            TwoTowerParams,
            TwoTowerScorer,
        ),
    )
}

#: What cold users get from every model: per-region popularity, lightly time-decayed.
DEFAULT_FALLBACK = PopularityParams(per_region=True, half_life_days=None, region_prior=100.0)


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}' (choose from: {', '.join(MODELS)})") from None


def make_params(name: str, params: Mapping[str, Any] | None = None) -> Params:
    """Validated parameters for model `name`; the model's fixed settings always win."""
    s = spec(name)
    values = {**dict(params or {}), **s.fixed}
    try:
        return s.params(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'params'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid parameters for model '{name}': {problems}") from None


def create(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    fallback: Mapping[str, Any] | None = None,
    interactions: InteractionConfig | None = None,
) -> CollaborativeRecommender:
    """A fresh, unfitted recommender of kind `name`."""
    s = spec(name)
    fallback_params = (
        DEFAULT_FALLBACK
        if fallback is None
        else make_params("region-popularity", {**DEFAULT_FALLBACK.model_dump(), **fallback})
    )
    return CollaborativeRecommender(
        name,
        s.build(make_params(name, params)),
        PopularityScorer(fallback_params),  # type: ignore[arg-type]
        interactions,
    )


def unfitted_like(model: CollaborativeRecommender) -> CollaborativeRecommender:
    """A fresh, unfitted recommender of `model`'s kind and settings."""
    return create(
        model.name,
        model.scorer.params.model_dump(),
        fallback=model.fallback.params.model_dump(),
        interactions=model.interaction_config,
    )


def load_model(folder: str | Path) -> CollaborativeRecommender:
    """Read a model folder written by `save`."""
    path, manifest = read_manifest(folder)
    name = manifest.get("model", "")
    if name not in MODELS:
        raise ModelError(f"{path}: unknown model kind '{name}'")
    inter = manifest.get("interactions", {})
    model = create(
        name,
        manifest.get("params"),
        fallback=manifest.get("fallback_params"),
        interactions=InteractionConfig(
            event_weights=inter.get("event_weights", InteractionConfig().event_weights),
            default_weight=inter.get("default_weight", 1.0),
            ignore=tuple(inter.get("ignore", ("search",))),
        ),
    )
    try:
        return model.restore(path, manifest)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: damaged model folder ({exc})") from exc
