"""The fixed vocabulary of the synthetic world, and the made-up words that extend it.

Fixed lists (not drawn at random) so that names are stable across seeds and the generated text
reads like a catalogue; the seed only decides who gets which word.
"""

from __future__ import annotations

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


def _flat_trait_vocab(words: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]) -> list[str]:
    return [w for pos, neg in words for side in (pos, neg) for w in side]
