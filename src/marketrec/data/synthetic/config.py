"""`SyntheticConfig`: every knob of the synthetic world, validated on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from marketrec.core.errors import ConfigError
from marketrec.data.synthetic.vocabulary import _BRANDS, _TAXONOMY


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the world; defaults give the embedded 20k-user demo world.

    The funnel rates are *per view* (RetailRocket: add_to_cart/view ≈ 0.026,
    purchase/view ≈ 0.0084); the generator calibrates its logistic intercepts so the realised
    ratios match them whatever the world size, while the slopes keep them affinity-driven.
    """

    users: int = 20_000
    items: int = 3_000
    days: int = 30
    seed: int = 0
    regions: int = 4
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    latent_dim: int = 16
    categories: int = 8
    subcategories: int = 4
    brands_per_category: int = 4
    initial_user_share: float = 0.4
    initial_item_share: float = 0.6
    delisted_share: float = 0.03
    regional_item_share: float = 0.25
    extra_sessions: float = 0.45
    activity_sigma: float = 1.6
    views_per_session: float = 1.3
    search_share: float = 0.12
    category_switch: float = 0.2
    click_rate: float = 0.2
    cart_rate: float = 0.026
    purchase_rate: float = 0.0084
    funnel_slope: float = 1.2
    popularity_sigma: float = 1.5
    taste_strength: float = 2.5
    trend_strength: float = 1.0
    candidates: int = 32

    def __post_init__(self) -> None:
        positive_ints = (
            "users",
            "items",
            "days",
            "regions",
            "latent_dim",
            "categories",
            "subcategories",
            "brands_per_category",
            "candidates",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ConfigError(f"synthetic {name} must be an integer, got {value!r}")
            if value <= 0:
                raise ConfigError(f"synthetic {name} must be positive, got {value}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ConfigError(f"synthetic seed must be an integer, got {self.seed!r}")
        if self.seed < 0:
            raise ConfigError(f"synthetic seed must be >= 0, got {self.seed}")
        limits = {
            "categories": len(_TAXONOMY),
            "subcategories": min(len(subs) for _, subs in _TAXONOMY),
            "brands_per_category": min(len(b) for b in _BRANDS),
            "regions": 62,
        }
        for name, most in limits.items():
            if getattr(self, name) > most:
                raise ConfigError(
                    f"synthetic {name} must be at most {most}, got {getattr(self, name)}"
                )
        shares = (
            "initial_user_share",
            "initial_item_share",
            "delisted_share",
            "regional_item_share",
            "search_share",
            "category_switch",
        )
        for name in shares:
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"synthetic {name} must be within [0, 1], got {value}")
        non_negative = (
            "extra_sessions",
            "activity_sigma",
            "popularity_sigma",
            "taste_strength",
            "trend_strength",
            "funnel_slope",
        )
        for name in non_negative:
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"synthetic {name} must be finite and >= 0, got {value}")
        if not self.views_per_session >= 1.0:
            raise ConfigError(
                "synthetic views_per_session must be >= 1 (a session has at "
                f"least one view), got {self.views_per_session}"
            )
        if not 0.0 < self.click_rate <= 1.0:
            raise ConfigError(f"synthetic click_rate must be within (0, 1], got {self.click_rate}")
        if not 0.0 < self.cart_rate <= self.click_rate:
            raise ConfigError(
                "synthetic cart_rate must be within (0, click_rate] (carts follow "
                f"clicks), got {self.cart_rate}"
            )
        if not 0.0 < self.purchase_rate <= self.cart_rate:
            raise ConfigError(
                "synthetic purchase_rate must be within (0, cart_rate] "
                f"(purchases follow carts), got {self.purchase_rate}"
            )
        if not isinstance(self.start, datetime):
            raise ConfigError(f"synthetic start must be a datetime, got {self.start!r}")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ConfigError("synthetic start must be time-zone aware (e.g. 2026-01-01T00:00Z)")
        object.__setattr__(self, "start", self.start.astimezone(UTC))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (start as ISO 8601), the inverse of `from_dict`."""
        out = asdict(self)
        out["start"] = self.start.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyntheticConfig:
        """Rebuild a config written by `to_dict`; unknown keys are refused, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown synthetic config keys: {', '.join(unknown)}")
        values = dict(data)
        if isinstance(values.get("start"), str):
            values["start"] = datetime.fromisoformat(values["start"])
        return cls(**values)

    @property
    def end(self) -> datetime:
        """First instant after the simulated window."""
        return self.start + timedelta(days=self.days)
