"""Typed settings of the recommendation pipeline (one frozen object, validated at the edge)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PipelineConfig(BaseModel):
    """What the steps after retrieval do; the defaults are what a marketplace would ship."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidates: int = Field(default=300, gt=0)
    """Items the retrieval stage hands on per request."""
    exclude_events: tuple[str, ...] | None = None
    """Event types whose items are never shown again (None: every type the user had; () shows
    everything again). A marketplace often keeps viewed items but drops purchased ones."""
    diversity: Literal["none", "mmr", "category-cap"] = "mmr"
    diversity_strength: float = Field(default=0.0, ge=0, le=1)
    """MMR's λ: 0 = relevance only, 1 = as different as possible from what is already listed."""
    category_cap: int = Field(default=3, gt=0)
    """Most items of one category in a list (diversity="category-cap")."""
    exploration_share: float = Field(default=0.0, ge=0, le=1)
    """Expected share of slots given to new items chosen by Thompson sampling."""
    new_item_days: float = Field(default=7.0, ge=0)
    """An item listed this recently (or never interacted with in training) counts as new."""
    exploration_prior: tuple[float, float] = (1.0, 20.0)
    """Beta(α, β) prior of a new item's click rate before it has impressions: a 1-in-21 guess."""
    rank_budget_ms: float | None = Field(default=None, gt=0)
    """Milliseconds per user a request may have spent (retrieval and rules) before the
    ranking stage starts; past it the list keeps retrieval order (each item's `source` stays
    "retrieval", its signals say why the ranker was skipped) so the answer keeps its
    deadline. None = no budget (the default: offline results must not depend on the
    machine's speed; the service sets `SERVING_RANK_BUDGET_MS`). A batch of n users gets n
    times the budget; requests at given moments (`at`: offline replays) have none. In the
    service a request's wait before its pass counts too: a pass whose oldest request waited
    the whole budget skips the ranker (`online.live.LiveRecommender`)."""
    seed: int = 0

    @model_validator(mode="after")
    def _check_prior(self) -> PipelineConfig:
        if min(self.exploration_prior) <= 0:
            raise ValueError(f"exploration_prior must be positive, got {self.exploration_prior}")
        return self


#: The ranking budget the service gives a request when the model folder names none.
SERVING_RANK_BUDGET_MS = 50.0
#: Queued requests a service worker answers in one pass of the pipeline
#: (`marketrec.online.live.LiveRecommender.recommend`; `marketrec serve --max-batch`).
SERVING_MAX_BATCH = 8
#: Milliseconds a service worker may leave other users' events unapplied before a pass
#: (`marketrec.online.live.LiveRecommender`; `marketrec serve --apply-lag-ms`): a user's own
#: events, listings, delistings and profile updates are applied before the next list always.
SERVING_APPLY_LAG_MS = 200.0
