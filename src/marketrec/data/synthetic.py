"""The synthetic marketplace: the embedded default world, with its ground truth.

Real-time marketplace logs are private, and public ones (RetailRocket) have neither item text
nor regions nor a ground truth to check a model against. This generator builds a world whose
*causes* are known, so every stage can be tested end to end and its failures explained:

* regions, each with a price multiplier; most items sell everywhere, some in a subset;
* a two-level category tree ("Home > Kitchen"), brands, and item titles, descriptions and
  tags whose words name the item's strongest latent traits, so content features carry signal;
* long-tail (lognormal) item popularity, items listed every day and a few delisted;
* users with latent tastes near one or two category centroids, a home region, demographics
  that hint at their taste (cold start), signing up every day and acting only afterwards;
* sessions (device, diurnal hours) with a view → click → add_to_cart → purchase funnel whose
  step probabilities grow with user–item affinity, and search sessions whose query names the
  searched sub-category and the user's taste;
* top-category trends that rise and fall over the days.

Volumes are calibrated to RetailRocket (2,664,312 views, 69,332 add-to-carts, 22,457
purchases from 1,407,580 visitors): add_to_cart/view ≈ 0.026, purchase/view ≈ 0.0084, about
1.9 views per visitor, most visitors seen in one short session and a heavy tail of active ones.
The event count therefore follows from the number of users (≈ 2.5 events per user).

Everything is vectorised with NumPy/Polars (loops run over days, categories, funnel steps or
fixed-size chunks, never over rows), and everything is drawn from one `PCG64(seed)`
generator in a fixed order, so a seed always gives identical Parquet content.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from marketrec.core.errors import ConfigError, DataError
from marketrec.data.schema import Dataset, make_dataset

__all__ = [
    "GroundTruth",
    "SyntheticConfig",
    "generate_marketplace",
    "write_marketplace",
]

GROUND_TRUTH_DIR = "ground_truth"
_ARRAYS_FILE = "latent.npz"
_META_FILE = "meta.json"
_TRENDS_FILE = "trends.parquet"
_REGIONS_FILE = "regions.parquet"

_US = 1_000_000
_HOUR_US = 3600 * _US
_DAY_US = 24 * _HOUR_US
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --------------------------------------------------------------------------------------------
# Vocabulary. Fixed lists (not drawn at random) so that names are stable across seeds and the
# generated text reads like a catalogue; the seed only decides who gets which word.
# --------------------------------------------------------------------------------------------

#: top category -> [(sub-category, product nouns)]
_TAXONOMY: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    (
        "Home",
        (
            ("Kitchen", ("kettle", "frying pan", "knife set")),
            ("Furniture", ("chair", "coffee table", "bookshelf")),
            ("Decor", ("lamp", "vase", "rug")),
            ("Bedding", ("pillow", "duvet", "blanket")),
        ),
    ),
    (
        "Electronics",
        (
            ("Phones", ("smartphone", "phone case", "charger")),
            ("Computers", ("laptop", "keyboard", "monitor")),
            ("Audio", ("headphones", "speaker", "earbuds")),
            ("Cameras", ("camera", "lens", "tripod")),
        ),
    ),
    (
        "Fashion",
        (
            ("Women", ("dress", "blouse", "skirt")),
            ("Men", ("shirt", "jacket", "trousers")),
            ("Shoes", ("sneakers", "boots", "sandals")),
            ("Accessories", ("handbag", "wallet", "belt")),
        ),
    ),
    (
        "Sports",
        (
            ("Fitness", ("dumbbells", "yoga mat", "kettlebell")),
            ("Cycling", ("bicycle", "helmet", "bike light")),
            ("Running", ("running vest", "water bottle", "sports watch")),
            ("Camping", ("tent", "sleeping bag", "camping stove")),
        ),
    ),
    (
        "Beauty",
        (
            ("Skincare", ("moisturizer", "serum", "cleanser")),
            ("Makeup", ("lipstick", "mascara", "foundation")),
            ("Hair", ("shampoo", "hair dryer", "conditioner")),
            ("Fragrance", ("perfume", "cologne", "body mist")),
        ),
    ),
    (
        "Toys",
        (
            ("Games", ("board game", "puzzle", "card game")),
            ("Building", ("block set", "construction kit", "marble run")),
            ("Dolls", ("doll", "dollhouse", "plush toy")),
            ("Outdoor Play", ("swing", "sandbox", "kite")),
        ),
    ),
    (
        "Books",
        (
            ("Fiction", ("novel", "thriller", "fantasy saga")),
            ("Non-fiction", ("biography", "history book", "cookbook")),
            ("Children", ("picture book", "storybook", "comic")),
            ("Education", ("textbook", "workbook", "dictionary")),
        ),
    ),
    (
        "Grocery",
        (
            ("Snacks", ("crisps", "cookies", "mixed nuts")),
            ("Beverages", ("coffee", "tea", "juice")),
            ("Pantry", ("pasta", "olive oil", "rice")),
            ("Fresh", ("cheese", "bread", "fruit box")),
        ),
    ),
    (
        "Garden",
        (
            ("Tools", ("shovel", "pruner", "rake")),
            ("Plants", ("houseplant", "seed pack", "flower bulbs")),
            ("Outdoor Furniture", ("bench", "parasol", "lounger")),
            ("Watering", ("hose", "sprinkler", "watering can")),
        ),
    ),
    (
        "Pets",
        (
            ("Dogs", ("dog food", "leash", "dog bed")),
            ("Cats", ("cat food", "scratcher", "cat litter")),
            ("Fish", ("aquarium", "fish food", "tank filter")),
            ("Small Pets", ("hamster cage", "hay", "chew toy")),
        ),
    ),
)

_BRANDS: tuple[tuple[str, ...], ...] = (
    ("Nordvik", "Casaluma", "Hearthly", "Ovenbird", "Linden & Co", "Domora"),
    ("Voltrix", "Pixelon", "Auralis", "Nexa", "Quantum Leaf", "Sonique"),
    ("Maison Vey", "Threadline", "Urbanique", "Koru", "Velour", "Stitchwell"),
    ("Peakform", "Trailhawk", "Velocita", "Ironbark", "Summitry", "Stridewell"),
    ("Lumiere", "Dewdrop", "Velvetine", "Aurelle", "Puressence", "Glowa"),
    ("Tinkertop", "Brickly", "Wonderloom", "Jollybox", "Kitewing", "Playnest"),
    ("Inkwell Press", "Paperleaf", "Quillhouse", "Foxglove Books", "Margin", "Storyway"),
    ("Harvestly", "Goldfield", "Brewmoor", "Pantrix", "Orchard Lane", "Crumbs & Co"),
    ("Greenthumb", "Rootwise", "Bloomfield", "Fernhill", "Sprout & Spade", "Mossy"),
    ("Pawsome", "Whiskerly", "Tailwind", "Furrow", "Barkley", "Nibbles"),
)

#: latent dimension -> (words of its positive side, words of its negative side)
_TRAIT_WORDS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("bright", "vivid", "radiant", "glossy"), ("dark", "muted", "matte", "shadowy")),
    (("compact", "mini", "slim", "pocket"), ("large", "oversized", "roomy", "jumbo")),
    (("rustic", "vintage", "classic", "heritage"), ("modern", "sleek", "futuristic", "minimalist")),
    (
        ("eco", "organic", "recycled", "natural"),
        ("synthetic", "industrial", "engineered", "hybrid"),
    ),
    (("luxury", "premium", "deluxe", "elegant"), ("budget", "basic", "essential", "simple")),
    (("sporty", "active", "rugged", "durable"), ("delicate", "soft", "gentle", "cozy")),
    (("smart", "digital", "connected", "wireless"), ("manual", "analog", "mechanical", "handmade")),
    (("playful", "colorful", "quirky", "fun"), ("serious", "formal", "refined", "professional")),
    (("lightweight", "airy", "portable", "foldable"), ("heavy", "sturdy", "solid", "robust")),
    (("warm", "thermal", "insulated", "fleece"), ("cool", "breathable", "chilled", "ventilated")),
    (("fast", "quick", "turbo", "rapid"), ("slow", "steady", "calm", "relaxed")),
    (("floral", "botanical", "fresh", "fragrant"), ("spicy", "smoky", "bold", "intense")),
    (("nordic", "scandi", "alpine", "arctic"), ("tropical", "coastal", "sunny", "desert")),
    (("kids", "junior", "family", "youth"), ("adult", "senior", "mature", "grownup")),
    (("waterproof", "outdoor", "allweather", "marine"), ("indoor", "lounge", "desk", "studio")),
    (("silver", "metallic", "chrome", "steel"), ("wooden", "bamboo", "oak", "walnut")),
)
_WORDS_PER_SIDE = 4
_SYLLABLES = ("ka", "lo", "mi", "ru", "ten", "vor", "sa", "bel", "qui", "dax", "no", "fer")

_FILLER = (
    "Ships within two days.",
    "A customer favourite.",
    "Free returns for 30 days.",
    "Makes a great gift.",
    "Made to last.",
    "Limited stock available.",
    "Backed by a two-year warranty.",
    "Rated highly by our shoppers.",
)

_REGION_NAMES = ("north", "south", "east", "west", "central", "coast", "highlands", "islands")
_DEVICES = ("mobile", "desktop", "tablet")
_DEVICE_SHARE = (0.58, 0.34, 0.08)
_AGES = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_SHARE = (0.17, 0.29, 0.22, 0.16, 0.10, 0.06)
_GENDERS = ("female", "male", "other")
_GENDER_SHARE = (0.51, 0.46, 0.03)
_CHANNELS = ("organic", "ads", "referral", "social", "email")
_CHANNEL_SHARE = (0.42, 0.25, 0.12, 0.15, 0.06)
#: channel -> activity multiplier: referred users come back more, ad-acquired ones less
_CHANNEL_ACTIVITY = (1.0, 0.7, 1.5, 0.9, 1.2)
#: relative traffic per UTC hour: quiet at night, peaks at lunch and in the evening
_DIURNAL = np.array(
    [
        1.2,
        0.8,
        0.5,
        0.4,
        0.4,
        0.6,
        1.2,
        2.2,
        3.2,
        3.8,
        4.0,
        4.2,
        4.6,
        4.4,
        4.0,
        3.9,
        4.0,
        4.4,
        5.2,
        6.0,
        6.4,
        5.6,
        4.0,
        2.4,
    ]
)
_DIURNAL = _DIURNAL / _DIURNAL.sum()
_VIEW_CHUNK = 32_768


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The hidden causes of the generated log, to measure models against what is true.

    Row `i` of the user arrays belongs to `user_ids[i]`, row `j` of the item arrays to
    `item_ids[j]`. Affinity of a user to an item is `user_taste @ item_latent.T`.
    """

    config: SyntheticConfig
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_taste: np.ndarray
    item_latent: np.ndarray
    item_popularity: np.ndarray
    category_trends: np.ndarray
    region_multipliers: np.ndarray
    region_names: tuple[str, ...]
    category_names: tuple[str, ...]
    user_category_weights: np.ndarray
    item_category: np.ndarray
    item_delisted_at: np.ndarray
    category_centroids: np.ndarray
    trait_words: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = field(default=())

    def region_multiplier(self, region: str) -> float:
        """Price multiplier of a region by name (purchase value = price × multiplier)."""
        try:
            return float(self.region_multipliers[self.region_names.index(region)])
        except ValueError:
            raise ConfigError(f"unknown region {region!r}") from None

    def affinity(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """User × item affinity matrix for the given rows (what drives choices and funnel)."""
        return self.user_taste[user_rows] @ self.item_latent[item_rows].T

    def save(self, folder: str | Path) -> Path:
        """Write arrays to `latent.npz`, metadata to `meta.json`, trends and regions to Parquet.

        No pickle anywhere: the files can be read by any tool and loaded safely.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / _ARRAYS_FILE,
            user_ids=self.user_ids.astype(str),
            item_ids=self.item_ids.astype(str),
            user_taste=self.user_taste,
            item_latent=self.item_latent,
            item_popularity=self.item_popularity,
            category_trends=self.category_trends,
            region_multipliers=self.region_multipliers,
            user_category_weights=self.user_category_weights,
            item_category=self.item_category,
            item_delisted_at=self.item_delisted_at.astype("datetime64[us]"),
            category_centroids=self.category_centroids,
        )
        meta = {
            "config": self.config.to_dict(),
            "region_names": list(self.region_names),
            "category_names": list(self.category_names),
            "trait_words": [[list(pos), list(neg)] for pos, neg in self.trait_words],
        }
        (out / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        days = self.category_trends.shape[1]
        start = self.config.start
        pl.DataFrame(
            {
                "category": np.repeat(np.array(self.category_names), days),
                "day": pl.Series(
                    [start + timedelta(days=d) for d in range(days)] * len(self.category_names),
                    dtype=pl.Datetime("us", "UTC"),
                ),
                "multiplier": self.category_trends.reshape(-1),
            }
        ).write_parquet(out / _TRENDS_FILE)
        pl.DataFrame(
            {
                "region": list(self.region_names),
                "price_multiplier": self.region_multipliers,
            }
        ).write_parquet(out / _REGIONS_FILE)
        return out

    @classmethod
    def load(cls, folder: str | Path) -> GroundTruth:
        """Read a folder written by `save`; raise `DataError` naming a missing file."""
        path = Path(folder)
        for name in (_ARRAYS_FILE, _META_FILE):
            if not (path / name).exists():
                raise DataError(str(path / name), "ground-truth file is missing")
        meta = json.loads((path / _META_FILE).read_text(encoding="utf-8"))
        with np.load(path / _ARRAYS_FILE, allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
        return cls(
            config=SyntheticConfig.from_dict(meta["config"]),
            region_names=tuple(meta["region_names"]),
            category_names=tuple(meta["category_names"]),
            trait_words=tuple((tuple(p), tuple(n)) for p, n in meta.get("trait_words", [])),
            **data,
        )


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def generate_marketplace(config: SyntheticConfig) -> tuple[Dataset, GroundTruth]:
    """Simulate the marketplace described by `config`; same config → identical output."""
    rng = np.random.Generator(np.random.PCG64(config.seed))
    world = _World.build(config, rng)
    items = _make_items(config, world, rng)
    users = _make_users(config, world, rng)
    events = _simulate(config, world, items, users, rng)
    dataset = make_dataset(events, items.frame, users.frame)
    truth = GroundTruth(
        config=config,
        user_ids=users.ids.to_numpy().astype(str),
        item_ids=items.ids.to_numpy().astype(str),
        user_taste=users.taste,
        item_latent=items.latent,
        item_popularity=items.popularity,
        category_trends=world.trends,
        region_multipliers=world.region_multipliers,
        region_names=world.region_names,
        category_names=world.top_names,
        user_category_weights=users.category_weights,
        item_category=items.top,
        item_delisted_at=items.delisted_us.astype("datetime64[us]"),
        category_centroids=world.centroids,
        trait_words=world.trait_words,
    )
    return dataset, truth


def write_marketplace(out: str | Path, config: SyntheticConfig) -> Dataset:
    """Generate, save the dataset folder to `out` and the ground truth in `out/ground_truth/`."""
    dataset, truth = generate_marketplace(config)
    folder = dataset.save(out)
    truth.save(folder / GROUND_TRUTH_DIR)
    return dataset


# --------------------------------------------------------------------------------------------
# The world: names, centroids, regions, trends
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _World:
    start_us: int
    end_us: int
    region_names: tuple[str, ...]
    region_multipliers: np.ndarray  # (R,)
    region_share: np.ndarray  # (R,) users per region
    top_names: tuple[str, ...]  # (K,)
    sub_names: tuple[tuple[str, ...], ...]  # (K, S)
    nouns: tuple[tuple[tuple[str, ...], ...], ...]  # (K, S, nouns)
    brands: tuple[tuple[str, ...], ...]  # (K, B)
    trait_words: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (D, 2, W)
    centroids: np.ndarray  # (K, D)
    sub_centroids: np.ndarray  # (K, S, D)
    brand_styles: np.ndarray  # (K, B, D)
    category_share: np.ndarray  # (K,) catalogue share per top category
    sub_price: np.ndarray  # (K, S) typical price
    trends: np.ndarray  # (K, days) popularity multiplier per top category and day

    @classmethod
    def build(cls, cfg: SyntheticConfig, rng: np.random.Generator) -> _World:
        k, s, d = cfg.categories, cfg.subcategories, cfg.latent_dim
        scale = 1.0 / math.sqrt(d)
        centroids = rng.standard_normal((k, d)) * scale * 2.0
        sub_centroids = centroids[:, None, :] + rng.standard_normal((k, s, d)) * scale
        brand_styles = rng.standard_normal((k, cfg.brands_per_category, d)) * scale
        multipliers = np.round(rng.uniform(0.8, 1.25, cfg.regions), 2)
        multipliers[0] = 1.0  # the reference market
        region_share = rng.dirichlet(np.full(cfg.regions, 4.0))
        category_share = rng.dirichlet(np.full(k, 6.0))
        sub_price = np.exp(rng.normal(3.3, 0.9, (k, s)))
        return cls(
            start_us=_to_us(cfg.start),
            end_us=_to_us(cfg.end),
            region_names=_region_names(cfg.regions),
            region_multipliers=multipliers,
            region_share=region_share,
            top_names=tuple(name for name, _ in _TAXONOMY[:k]),
            sub_names=tuple(tuple(sub for sub, _ in subs[:s]) for _, subs in _TAXONOMY[:k]),
            nouns=tuple(tuple(n for _, n in subs[:s]) for _, subs in _TAXONOMY[:k]),
            brands=tuple(b[: cfg.brands_per_category] for b in _BRANDS[:k]),
            trait_words=_trait_words(d),
            centroids=centroids.astype(np.float32),
            sub_centroids=sub_centroids.astype(np.float32),
            brand_styles=brand_styles.astype(np.float32),
            category_share=category_share,
            sub_price=sub_price,
            trends=_trends(cfg, rng),
        )


def _region_names(n: int) -> tuple[str, ...]:
    """Deterministic names: compass points first, then numbered regions."""
    names = list(_REGION_NAMES[:n])
    names += [f"region-{i + 1}" for i in range(len(names), n)]
    return tuple(names)


def _trait_words(dim: int) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
    """Word lists per latent side; beyond the curated 16 dimensions, pronounceable made-up
    words (distinct per dimension and side) keep the text informative."""
    words = list(_TRAIT_WORDS[:dim])
    for j in range(len(words), dim):
        sides = []
        for side in range(2):
            codes = [((j * 2 + side) * _WORDS_PER_SIDE + w) for w in range(_WORDS_PER_SIDE)]
            sides.append(tuple(_pseudo_word(code) for code in codes))
        words.append((sides[0], sides[1]))
    return tuple(words)


def _pseudo_word(code: int) -> str:
    """The base-12 digits of `code` (padded to three) spelled as syllables: unique per code."""
    n = len(_SYLLABLES)
    code += n * n  # at least three syllables, so no made-up word is shorter than "kaloka"
    syllables = []
    while code:
        code, digit = divmod(code, n)
        syllables.append(_SYLLABLES[digit])
    return "".join(syllables)


def _trends(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Per top category and day: a drift (one category rises, another fades) plus a wave."""
    k = cfg.categories
    day = np.arange(cfg.days, dtype=np.float64)
    frac = day / max(cfg.days - 1, 1) - 0.5
    drift = rng.permutation(np.linspace(-1.2, 1.2, k)) if k > 1 else np.zeros(1)
    amplitude = rng.uniform(0.1, 0.35, k)
    period = rng.uniform(7.0, 21.0, k)
    phase = rng.uniform(0.0, 2 * math.pi, k)
    log_trend = drift[:, None] * frac[None, :] + amplitude[:, None] * np.sin(
        2 * math.pi * day[None, :] / period[:, None] + phase[:, None]
    )
    return np.exp(cfg.trend_strength * log_trend)


# --------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Items:
    frame: pl.DataFrame
    ids: pl.Series
    latent: np.ndarray  # (I, D) float32
    popularity: np.ndarray  # (I,)
    top: np.ndarray  # (I,) top category index
    sub: np.ndarray  # (I,) sub-category index within top
    price: np.ndarray
    created_us: np.ndarray
    delisted_us: np.ndarray  # int64, max int64 = never
    region_mask: np.ndarray  # int64 bit mask of regions where sold


def _make_items(cfg: SyntheticConfig, world: _World, rng: np.random.Generator) -> _Items:
    n, d, k, s = cfg.items, cfg.latent_dim, cfg.categories, cfg.subcategories
    top = rng.choice(k, size=n, p=world.category_share)
    sub = rng.integers(0, s, n)
    latent = world.sub_centroids[top, sub] + rng.standard_normal((n, d)).astype(np.float32) * (
        1.0 / math.sqrt(d)
    )
    latent = latent.astype(np.float32)
    popularity = np.exp(rng.normal(0.0, cfg.popularity_sigma, n))

    # Brand follows style: items pick the brand of their category whose style they match.
    styles = world.brand_styles[top]  # (n, B, D)
    brand_logit = np.matmul(styles, latent[:, :, None])[..., 0] * 3.0 + rng.gumbel(
        size=(n, cfg.brands_per_category)
    )
    brand = np.argmax(brand_logit, axis=1)

    # Price: the sub-category's level, nudged by the "luxury" trait (dimension 4 if present).
    lux = latent[:, 4 % d] * math.sqrt(d)
    raw = world.sub_price[top, sub] * np.exp(0.35 * rng.standard_normal(n) + 0.25 * lux)
    price = np.maximum(np.floor(raw), 0.0) + 0.99

    # Listing: a share exists at start (listed up to 180 days before), the rest arrive daily.
    old = rng.random(n) < cfg.initial_item_share
    before = (rng.random(n) * 180 * _DAY_US).astype(np.int64) + 1
    day = rng.integers(0, cfg.days, n)
    created = np.where(
        old, world.start_us - before, world.start_us + day * _DAY_US + _diurnal(rng, n)
    ).astype(np.int64)
    delisted = rng.random(n) < cfg.delisted_share
    since = np.maximum(created, world.start_us)
    delist_at = since + (rng.random(n) * (world.end_us - since)).astype(np.int64)
    never = np.iinfo(np.int64).max
    delisted_us = np.where(delisted, delist_at, never).astype(np.int64)

    # Regions: most items everywhere (mask all ones), some in a random non-empty subset.
    r = cfg.regions
    everywhere = (1 << r) - 1
    regional = rng.random(n) < cfg.regional_item_share
    bits = rng.random((n, r)) < 0.5
    bits[np.arange(n), rng.integers(0, r, n)] = True
    subset = (bits.astype(np.int64) << np.arange(r, dtype=np.int64)).sum(axis=1)
    mask = np.where(regional & (subset != everywhere), subset, everywhere).astype(np.int64)

    ids = _ids("i", n, 5)
    frame = _item_frame(
        cfg, world, rng, ids, latent, top, sub, brand, price, created, delisted, mask
    )
    return _Items(frame, ids, latent, popularity, top, sub, price, created, delisted_us, mask)


def _item_frame(
    cfg: SyntheticConfig,
    world: _World,
    rng: np.random.Generator,
    ids: pl.Series,
    latent: np.ndarray,
    top: np.ndarray,
    sub: np.ndarray,
    brand: np.ndarray,
    price: np.ndarray,
    created: np.ndarray,
    delisted: np.ndarray,
    mask: np.ndarray,
) -> pl.DataFrame:
    """Catalogue text from the latent traits: title = brand + two strongest trait words +
    product noun; description and tags add the third trait, sub-category and filler."""
    n, s = len(ids), cfg.subcategories
    trait = _trait_word_index(latent, rng, 3)  # (n, 3) into the flat trait vocabulary
    vocab = pl.Series(_flat_trait_vocab(world.trait_words))
    w1, w2, w3 = (vocab.gather(trait[:, j]) for j in range(3))
    noun_vocab, noun_base = _flat_nouns(world)
    noun = pl.Series(noun_vocab).gather(
        noun_base[top * s + sub] + rng.integers(0, 1 << 30, n) % _noun_counts(world)[top * s + sub]
    )
    brand_vocab = pl.Series([b for group in world.brands for b in group])
    brand_name = brand_vocab.gather(top * cfg.brands_per_category + brand)
    top_vocab = pl.Series(list(world.top_names))
    sub_vocab = pl.Series([name for subs in world.sub_names for name in subs])
    top_name = top_vocab.gather(top)
    sub_name = sub_vocab.gather(top * s + sub)
    filler = pl.Series(list(_FILLER)).gather(rng.integers(0, len(_FILLER), n))

    r = cfg.regions
    everywhere = (1 << r) - 1
    sold_in = {f"_r{i}": ((mask >> i) & 1) == 1 for i in range(r)}
    region_cols = [
        pl.when(pl.col(f"_r{i}")).then(pl.lit(name)).otherwise(None)
        for i, name in enumerate(world.region_names)
    ]
    frame = pl.DataFrame(
        {
            "item_id": ids,
            "_w1": w1,
            "_w2": w2,
            "_w3": w3,
            "_noun": noun,
            "brand": brand_name,
            "_top": top_name,
            "_sub": sub_name,
            "_filler": filler,
            "price": price.astype(np.float64),
            "created_at": _to_datetime(created),
            "_mask": mask,
            "available": ~delisted,
            **sold_in,
        }
    )
    return frame.select(
        "item_id",
        pl.concat_str(
            [pl.col("brand"), pl.col("_w1"), pl.col("_w2"), pl.col("_noun")], separator=" "
        ).alias("title"),
        pl.concat_str(
            [
                pl.when(pl.col("_w1").str.contains("^[aeiou]"))
                .then(pl.lit("An "))
                .otherwise(pl.lit("A ")),
                pl.col("_w1"),
                pl.lit(", "),
                pl.col("_w2"),
                pl.lit(" and "),
                pl.col("_w3"),
                pl.lit(" "),
                pl.col("_noun"),
                pl.lit(" by "),
                pl.col("brand"),
                pl.lit(", from our "),
                pl.col("_sub").str.to_lowercase(),
                pl.lit(" range in "),
                pl.col("_top").str.to_lowercase(),
                pl.lit(". "),
                pl.col("_filler"),
            ]
        ).alias("description"),
        "brand",
        pl.concat_str([pl.col("_top"), pl.col("_sub")], separator=" > ").alias("category"),
        pl.concat_list(
            [
                pl.col("_w1"),
                pl.col("_w2"),
                pl.col("_w3"),
                pl.col("_sub").str.to_lowercase(),
            ]
        ).alias("tags"),
        "price",
        "created_at",
        pl.when(pl.col("_mask") == everywhere)
        .then(pl.lit(None, dtype=pl.List(pl.String)))
        .otherwise(pl.concat_list(region_cols).list.drop_nulls())
        .alias("regions"),
        "available",
    )


def _trait_word_index(vectors: np.ndarray, rng: np.random.Generator, top: int) -> np.ndarray:
    """For each row, a word of each of its `top` strongest traits (by |value|, sign = side)."""
    d = vectors.shape[1]
    top = min(top, d)
    order = np.argsort(-np.abs(vectors), axis=1, kind="stable")[:, :top]
    sign = np.take_along_axis(vectors, order, axis=1) < 0
    pick = rng.integers(0, _WORDS_PER_SIDE, order.shape)
    index = (order * 2 + sign) * _WORDS_PER_SIDE + pick
    if top < 3:  # tiny latent spaces: repeat the strongest trait to keep three word slots
        index = np.concatenate([index] + [index[:, :1]] * (3 - top), axis=1)
    return index


def _flat_trait_vocab(words: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]) -> list[str]:
    return [w for pos, neg in words for side in (pos, neg) for w in side]


def _flat_nouns(world: _World) -> tuple[list[str], np.ndarray]:
    vocab: list[str] = []
    base: list[int] = []
    for subs in world.nouns:
        for nouns in subs:
            base.append(len(vocab))
            vocab.extend(nouns)
    return vocab, np.array(base, dtype=np.int64)


def _noun_counts(world: _World) -> np.ndarray:
    return np.array([len(n) for subs in world.nouns for n in subs], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Users:
    frame: pl.DataFrame
    ids: pl.Series
    taste: np.ndarray  # (U, D) float32
    category_weights: np.ndarray  # (U, K) float32, rows sum to 1
    region: np.ndarray  # (U,) region index
    signup_us: np.ndarray
    device: np.ndarray  # preferred device index
    activity: np.ndarray  # expected extra sessions
    browsing: np.ndarray  # views-per-session multiplier


def _make_users(cfg: SyntheticConfig, world: _World, rng: np.random.Generator) -> _Users:
    n, k, d = cfg.users, cfg.categories, cfg.latent_dim
    region = rng.choice(cfg.regions, size=n, p=world.region_share)
    age = rng.choice(len(_AGES), size=n, p=np.array(_AGE_SHARE))
    gender = rng.choice(len(_GENDERS), size=n, p=np.array(_GENDER_SHARE))
    channel = rng.choice(len(_CHANNELS), size=n, p=np.array(_CHANNEL_SHARE))

    # Demographics shift which category a user loves: a cold-start signal, not a rule.
    age_effect = rng.normal(0.0, 0.8, (len(_AGES), k))
    gender_effect = rng.normal(0.0, 0.8, (len(_GENDERS), k))
    logits = np.log(world.category_share)[None, :] + age_effect[age] + gender_effect[gender]
    primary = _sample_rows(rng, _softmax(logits))
    secondary = (primary + rng.integers(1, max(k, 2), n)) % k
    has_second = (rng.random(n) < 0.5) & (k > 1)
    w_primary = np.where(has_second, rng.uniform(0.55, 0.85, n), 1.0)
    explore = 0.12
    weights = np.full((n, k), explore / k)
    rows = np.arange(n)
    weights[rows, primary] += (1 - explore) * w_primary
    weights[rows, secondary] += (1 - explore) * (1 - w_primary)

    scale = 1.0 / math.sqrt(d)
    taste = (
        w_primary[:, None] * world.centroids[primary]
        + (1 - w_primary)[:, None] * world.centroids[secondary]
        + rng.standard_normal((n, d)) * scale * 1.5
    ).astype(np.float32)

    # Sign-up: a share existed before the window; the rest sign up on a day of the window.
    old = rng.random(n) < cfg.initial_user_share
    before = (rng.random(n) * 730 * _DAY_US).astype(np.int64) + 1
    day = rng.integers(0, cfg.days, n)
    signup = np.where(
        old, world.start_us - before, world.start_us + day * _DAY_US + _diurnal(rng, n)
    ).astype(np.int64)

    device = rng.choice(len(_DEVICES), size=n, p=np.array(_DEVICE_SHARE))
    sigma = cfg.activity_sigma
    activity = (
        np.exp(rng.normal(-sigma * sigma / 2, sigma, n)) * np.array(_CHANNEL_ACTIVITY)[channel]
    )
    browsing = np.exp(rng.normal(-0.125, 0.5, n))

    ids = _ids("u", n, 6)
    frame = pl.DataFrame(
        {
            "user_id": ids,
            "region": pl.Series(list(world.region_names)).gather(region),
            "signup_at": _to_datetime(signup),
            "age": pl.Series(list(_AGES)).gather(age),
            "gender": pl.Series(list(_GENDERS)).gather(gender),
            "signup_channel": pl.Series(list(_CHANNELS)).gather(channel),
        }
    )
    return _Users(
        frame, ids, taste, weights.astype(np.float32), region, signup, device, activity, browsing
    )


# --------------------------------------------------------------------------------------------
# Behaviour: sessions, views, funnel
# --------------------------------------------------------------------------------------------


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


def _queries(
    cfg: SyntheticConfig,
    world: _World,
    users: _Users,
    rng: np.random.Generator,
    sess_user: np.ndarray,
    sess_cat: np.ndarray,
    sess_sub: np.ndarray,
) -> pl.Series:
    """Search text per session: a taste word (most of the time) and a product noun of the
    searched sub-category, e.g. "rustic kettle" — what a person types."""
    n, s = len(sess_user), cfg.subcategories
    noun_vocab, noun_base = _flat_nouns(world)
    g = sess_cat * s + sess_sub
    noun = pl.Series(noun_vocab).gather(
        noun_base[g] + rng.integers(0, 1 << 30, n) % _noun_counts(world)[g]
    )
    # One of the user's two strongest traits (computed per user once, picked per session).
    user_words = _trait_word_index(users.taste, rng, 2)
    which = rng.integers(0, min(2, cfg.latent_dim), n)
    word = pl.Series(_flat_trait_vocab(world.trait_words)).gather(user_words[sess_user, which])
    with_word = rng.random(n) < 0.7
    return pl.select(
        pl.when(pl.lit(pl.Series(with_word)))
        .then(pl.concat_str([pl.lit(word), pl.lit(noun)], separator=" "))
        .otherwise(pl.lit(noun))
        .alias("query")
    ).to_series()


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
    lo, hi = -40.0, 40.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(mid + slope * z).mean() < target:
            lo = mid
        else:
            hi = mid
    return u < _sigmoid((lo + hi) / 2 + slope * z)


# --------------------------------------------------------------------------------------------
# Small vectorised helpers
# --------------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a probability matrix (inverse CDF, vectorised)."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs))[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=1), probs.shape[1] - 1)


def _diurnal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Offsets into a day (µs) that follow the daily traffic curve."""
    hour = rng.choice(24, size=n, p=_DIURNAL)
    return hour.astype(np.int64) * _HOUR_US + rng.integers(0, _HOUR_US, n)


def _ids(prefix: str, n: int, min_width: int) -> pl.Series:
    """Zero-padded string ids ("u000123") so that string order is numeric order."""
    width = max(min_width, len(str(max(n - 1, 0))))
    digits = pl.int_range(0, n, eager=True, dtype=pl.Int64).cast(pl.String).str.zfill(width)
    return (prefix + digits).alias("id")


def _to_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _to_datetime(us: np.ndarray) -> pl.Series:
    return (
        pl.Series(np.asarray(us, dtype=np.int64))
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
