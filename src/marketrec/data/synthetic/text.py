"""Words from latent traits: item titles, descriptions and tags, and search queries.

Text names an item's (or a user's) strongest latent traits, so content features and queries
carry real signal about taste.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from marketrec.data.synthetic.config import SyntheticConfig
from marketrec.data.synthetic.population import _Users
from marketrec.data.synthetic.vectorised import _to_datetime
from marketrec.data.synthetic.vocabulary import _FILLER, _WORDS_PER_SIDE, _flat_trait_vocab
from marketrec.data.synthetic.world import _World


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
