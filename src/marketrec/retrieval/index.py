"""Nearest-neighbour search over item vectors: the last step of retrieval.

A user vector goes in; the items with the highest inner product come out, best first, restricted
to items sellable in the user's region and without the items the user has already seen. Two
implementations answer the same `VectorIndex` protocol (one contract test suite runs on both):

- `ExactIndex`: brute force with one NumPy matrix product and `argpartition`. Exact, nothing to
  train, and fast enough for small catalogues; it is also the reference for recall measurements.
- `FaissIndex`: faiss IVF-Flat (inner product). Items are clustered into `nlist` lists and a
  query scans only the `nprobe` lists nearest to it, so it is approximate but sub-millisecond
  on a million items.

`build_index` picks between them by catalogue size (`EXACT_MAX_ITEMS`); the threshold and the
default `nprobe` come from benchmarks/ann.py (numbers in docs/benchmarks.md).

Items are upserted and deleted while the index serves: adding an id that exists replaces its
vector and regions, and a removal holds for the very next search. Both indexes give every item a
*slot* (a small integer, reused after removal): the row of the exact index's matrix, and the
int64 label inside faiss. Region filters are bitmaps over slots, so faiss can check them while it
scans (`IDSelectorBitmap`) instead of dropping results afterwards, which would return nothing for
a rare region. Indexes are not safe for concurrent writes; serve reads from one and swap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from marketrec.core.errors import ConfigError, ModelError

#: Below this many items `build_index(kind="auto")` builds an `ExactIndex`: perfect recall, no
#: training, and a single-query p99 under the 0.5 ms target up to about here. Measured with one
#: thread at dim 64 (benchmarks/ann.py): exact p99 0.35 ms at 10k and 1.4 ms at 50k on a Xeon
#: server, 0.3 ms at 50k on an EPYC; it grows linearly, while IVF stays ~0.1-0.3 ms.
EXACT_MAX_ITEMS = 20_000

FORMAT = "marketrec-vector-index"
FORMAT_VERSION = 1
_MANIFEST = "index.json"
_CATALOGUE = "catalogue.npz"
_VECTORS = "vectors.npy"
_FAISS = "ivf.faiss"
#: Queries per block in exact search, so the score block stays small (memory, cache).
_QUERY_BLOCK_FLOATS = 4_000_000

Ids = Sequence[str] | np.ndarray
Regions = Sequence[Sequence[str] | None] | None


class VectorIndex(Protocol):
    """Inner-product top-k over item vectors, with upserts, deletes and filters."""

    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: Ids, vectors: np.ndarray, regions: Regions = None) -> None:
        """Insert items, or replace the vector and regions of ids already present.

        `regions[i]` lists where item i sells; None means everywhere, [] nowhere.
        """
        ...

    def remove(self, ids: Ids) -> int:
        """Delete items (unknown ids are ignored); returns how many were present."""
        ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        region: str | None = None,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        """Top-k ids per query, best first, and their scores (q × k, -inf past the end).

        `region` keeps items sellable there; `exclude[i]` are ids query i must not get back
        (seen items); they do not count against k.
        """
        ...

    def save(self, folder: str | Path) -> Path: ...


# ---------------------------------------------------------------------------- validation


def _check_vectors(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ConfigError(f"{what} must have shape (n, {dim}); got {np.shape(vectors)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ConfigError(f"{what} contain NaN or infinite values")
    return x


def _check_ids(ids: Ids, n: int) -> list[str]:
    out = list(ids)
    if len(out) != n:
        raise ConfigError(f"got {len(out)} ids for {n} vectors; lengths must match")
    for i in out:
        if not isinstance(i, str):
            raise ConfigError(f"item ids must be strings; got {type(i).__name__} {i!r}")
    return out


def _check_regions(regions: Regions, n: int) -> list[Sequence[str] | None]:
    if regions is None:
        return [None] * n
    out = list(regions)
    if len(out) != n:
        raise ConfigError(f"got {len(out)} region lists for {n} items; lengths must match")
    for r in out:
        if isinstance(r, str):
            raise ConfigError(f"regions must be a list per item (['{r}']), not the string '{r}'")
    return out


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ConfigError(f"k must be a positive integer; got {k!r}")
    return int(k)


# ---------------------------------------------------------------------------- bookkeeping


def _bit_masks(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return slots >> 3, (1 << (slots & 7)).astype(np.uint8)


class _Catalogue:
    """Ids ↔ slots, and region bitmaps over slots (bit s of byte s // 8, little-endian).

    `by_region[r]` already includes the items sold everywhere, so a filtered search reads one
    bitmap; a region no item names falls back to `everywhere`.
    """

    def __init__(self) -> None:
        self.slot_of: dict[str, int] = {}
        self.names = np.empty(0, dtype=object)
        self.live = np.zeros(0, dtype=bool)
        self.everywhere = np.zeros(0, dtype=np.uint8)
        self.by_region: dict[str, np.ndarray] = {}
        self.free: list[int] = []
        self.size = 0  # slots ever handed out (high-water mark)

    def __len__(self) -> int:
        return len(self.slot_of)

    @property
    def capacity(self) -> int:
        return len(self.names)

    def _grow(self, needed: int) -> None:
        cap = max(needed, 2 * self.capacity, 1024)
        cap = (cap + 7) // 8 * 8
        self.names = np.concatenate([self.names, np.full(cap - self.capacity, None, object)])
        self.live = np.concatenate([self.live, np.zeros(cap - len(self.live), bool)])
        extra = cap // 8 - len(self.everywhere)
        self.everywhere = np.concatenate([self.everywhere, np.zeros(extra, np.uint8)])
        for r, bits in self.by_region.items():
            self.by_region[r] = np.concatenate([bits, np.zeros(extra, np.uint8)])

    def assign(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Slots for `ids` (existing ones kept, new ones allocated) and which were present."""
        slots = np.empty(len(ids), dtype=np.int64)
        existed = np.zeros(len(ids), dtype=bool)
        new: list[int] = []
        for j, name in enumerate(ids):
            s = self.slot_of.get(name)
            if s is None:
                new.append(j)
            else:
                slots[j], existed[j] = s, True
        reuse = min(len(new), len(self.free))
        fresh = len(new) - reuse
        if self.size + fresh > self.capacity:
            self._grow(self.size + fresh)
        for j in new:
            s = self.free.pop() if self.free else self._next()
            slots[j] = s
            self.slot_of[ids[j]] = s
            self.names[s] = ids[j]
        self.live[slots] = True
        return slots, existed

    def _next(self) -> int:
        self.size += 1
        return self.size - 1

    def set_regions(self, slots: np.ndarray, regions: list[Sequence[str] | None]) -> None:
        self._clear_bits(slots)
        anywhere = np.array([s for s, r in zip(slots, regions, strict=True) if r is None], int)
        if len(anywhere):
            byte, mask = _bit_masks(anywhere)
            for bits in (self.everywhere, *self.by_region.values()):
                np.bitwise_or.at(bits, byte, mask)
        groups: dict[str, list[int]] = {}
        for s, rs in zip(slots, regions, strict=True):
            for r in rs or ():
                groups.setdefault(str(r), []).append(int(s))
        for r, members in groups.items():
            bits = self.by_region.setdefault(r, self.everywhere.copy())
            np.bitwise_or.at(bits, *_bit_masks(np.array(members, dtype=np.int64)))

    def _clear_bits(self, slots: np.ndarray) -> None:
        byte, mask = _bit_masks(slots)
        for bits in (self.everywhere, *self.by_region.values()):
            np.bitwise_and.at(bits, byte, ~mask)

    def release(self, ids: Ids) -> np.ndarray:
        """Forget the known ids among `ids`; returns their (now free) slots."""
        slots = np.array(
            [s for i in dict.fromkeys(ids) if (s := self.slot_of.pop(i, None)) is not None],
            dtype=np.int64,
        )
        if len(slots):
            self._clear_bits(slots)
            self.live[slots] = False
            self.names[slots] = None
            self.free.extend(slots.tolist())
        return slots

    def allowed(self, region: str) -> np.ndarray:
        return self.by_region.get(region, self.everywhere)

    def slots_of(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([s for i in ids if (s := self.slot_of.get(i)) is not None], np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        regions = sorted(self.by_region)
        nbytes = len(self.everywhere)
        return {
            "names": np.array(["" if n is None else n for n in self.names[: self.size]], str),
            "live": self.live[: self.size],
            "everywhere": self.everywhere,
            "region_names": np.array(regions, dtype=str),
            "region_bits": np.stack([self.by_region[r] for r in regions])
            if regions
            else np.zeros((0, nbytes), np.uint8),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> _Catalogue:
        cat = cls()
        size = len(a["names"])
        cat._grow(len(a["everywhere"]) * 8)
        cat.size = size
        cat.live[:size] = a["live"]
        for s in np.flatnonzero(cat.live[:size]):
            name = str(a["names"][s])
            cat.names[s] = name
            cat.slot_of[name] = int(s)
        cat.free = np.flatnonzero(~cat.live[:size]).tolist()[::-1]
        stored = len(a["everywhere"])
        cat.everywhere[:stored] = a["everywhere"]
        for r, bits in zip(a["region_names"], a["region_bits"], strict=True):
            cat.by_region[str(r)] = np.zeros_like(cat.everywhere)
            cat.by_region[str(r)][:stored] = bits
        return cat


def _write_manifest(folder: Path, kind: str, dim: int, config: dict | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "kind": kind, "dim": dim}
    (folder / _MANIFEST).write_text(json.dumps({**manifest, "config": config}, indent=2))


def _results(
    rows: list[list[str]], scores: list[list[float]], k: int
) -> tuple[list[list[str]], np.ndarray]:
    out = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, s in enumerate(scores):
        out[i, : len(s)] = s
    return rows, out


# ---------------------------------------------------------------------------- exact


class ExactIndex:
    """Brute-force inner product with NumPy: exact, no training; for small catalogues.

    NumPy rather than `faiss.IndexFlatIP` so the matrix products run on NumPy's BLAS, whose
    threads the caller controls (threadpoolctl), not on faiss's bundled OpenBLAS.
    """

    kind = "exact"

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise ConfigError(f"dim must be a positive integer; got {dim!r}")
        self.dim = dim
        self._cat = _Catalogue()
        self._vectors = np.zeros((0, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._cat)

    def add(self, ids: Ids, vectors: np.ndarray, regions: Regions = None) -> None:
        x = _check_vectors(vectors, self.dim, "item vectors")
        names, x, regs = _last_wins(_check_ids(ids, len(x)), x, _check_regions(regions, len(x)))
        slots, _ = self._cat.assign(names)
        if self._cat.capacity > len(self._vectors):
            grown = np.zeros((self._cat.capacity, self.dim), dtype=np.float32)
            grown[: len(self._vectors)] = self._vectors
            self._vectors = grown
        self._vectors[slots] = x
        self._cat.set_regions(slots, regs)

    def remove(self, ids: Ids) -> int:
        slots = self._cat.release(ids)
        self._vectors[slots] = 0.0
        return len(slots)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        region: str | None = None,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        q = _check_vectors(queries, self.dim, "queries")
        k = _check_k(k)
        if exclude is not None and len(exclude) != len(q):
            raise ConfigError(f"exclude has {len(exclude)} lists for {len(q)} queries")
        cat, size = self._cat, self._cat.size
        if region is not None:
            ok = np.unpackbits(cat.allowed(region), count=size, bitorder="little").view(bool)
        else:
            ok = cat.live[:size] if len(cat) < size else None
        rows: list[list[str]] = []
        scores: list[list[float]] = []
        block = max(1, _QUERY_BLOCK_FLOATS // max(size, 1))
        for start in range(0, len(q), block):
            s = q[start : start + block] @ self._vectors[:size].T
            if ok is not None:
                s[:, ~ok] = -np.inf
            if exclude is not None:
                for i, seen in enumerate(exclude[start : start + block]):
                    s[i, cat.slots_of(seen)] = -np.inf
            kk = min(k, size)
            if kk == 0:
                rows += [[] for _ in s]
                scores += [[] for _ in s]
                continue
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            top_s = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-top_s, axis=1, kind="stable")
            top, top_s = np.take_along_axis(top, order, 1), np.take_along_axis(top_s, order, 1)
            for t, ts in zip(top, top_s, strict=True):
                n = int(np.isfinite(ts).sum())
                rows.append(cat.names[t[:n]].tolist())
                scores.append(ts[:n].tolist())
        return _results(rows, scores, k)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        _write_manifest(folder, self.kind, self.dim, None)
        np.savez(folder / _CATALOGUE, **self._cat.arrays())
        np.save(folder / _VECTORS, self._vectors[: self._cat.size])
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ExactIndex:
        folder = Path(folder)
        manifest = json.loads((folder / _MANIFEST).read_text())
        index = cls(int(manifest["dim"]))
        with np.load(folder / _CATALOGUE, allow_pickle=False) as a:
            index._cat = _Catalogue.from_arrays(dict(a))
        index._vectors = np.zeros((index._cat.capacity, index.dim), dtype=np.float32)
        stored = np.load(folder / _VECTORS, allow_pickle=False)
        index._vectors[: len(stored)] = stored
        return index


# ---------------------------------------------------------------------------- faiss


def _import_faiss() -> Any:  # faiss ships no type stubs
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "the faiss index needs the faiss-cpu package: pip install faiss-cpu"
        ) from e
    return faiss


def auto_nlist(n: int) -> int:
    """Inverted lists for `n` training vectors: ~4·sqrt(n), at least 39 vectors per list.

    4·sqrt(n) balances the two costs of a query (comparing with every centroid, scanning the
    probed lists); 39 points per centroid is the least faiss's k-means accepts without warning.
    """
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int, k: int = 10) -> int:
    """Lists scanned per query when the config does not say: 16, or nlist/250 for huge indexes,
    for every 50 neighbours asked (k = 100 scans twice the lists of k = 10).

    On 1M clustered vectors (nlist 4000, benchmarks/ann.py) nprobe 8 gave recall@10 0.979 and
    16 gave 0.985 (p99 0.3 ms); at 100k, 0.953 and 0.967. 16 leaves a margin for embeddings
    less clustered than the benchmark's; more lists need proportionally more probes. The
    k nearest items spread over more lists as k grows: on trained two-tower vectors (5,000
    items, nlist 128) recall@100 was 0.979 at nprobe 16 and 0.998 at 32 (docs/benchmarks.md).
    """
    return min(nlist, max(16, math.ceil(nlist / 250)) * math.ceil(k / 50))


@dataclass(frozen=True)
class FaissConfig:
    """Settings of the IVF index; None means derived from the data (see `auto_nlist`)."""

    nlist: int | None = None
    nprobe: int | None = None
    #: OpenMP threads for faiss (a process-wide setting, applied on every call). One thread is
    #: right for single queries: two made a single query 13× slower (thread start-up per call).
    threads: int = 1
    train_iterations: int = 10
    #: k-means trains on at most this many vectors per list (a random sample): build time grows
    #: with it, recall barely does past ~64.
    train_points_per_list: int = 64
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("nlist", "nprobe"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"faiss {name} must be positive; got {value}")
        if self.threads <= 0 or self.train_iterations <= 0 or self.train_points_per_list <= 0:
            raise ConfigError("faiss threads, train_iterations, train_points_per_list must be > 0")


class FaissIndex:
    """faiss IVF-Flat with inner product: approximate, sub-millisecond on millions of items.

    Trains its centroids on the first vectors it is given (or an explicit `train`). Item slots
    are the int64 faiss labels; a hash-table direct map lets `remove_ids` find an item without
    scanning every list, and removal from an inverted list is immediate. Region filters are
    checked during the scan (`IDSelectorBitmap` over slots), so a rare region still gets k
    results; exclusions over-fetch k + |exclude| and drop afterwards. When the probed lists run
    out of admissible items, the query is repeated with 4× the lists until nprobe reaches nlist.
    """

    kind = "faiss"

    def __init__(self, dim: int, config: FaissConfig | None = None) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise ConfigError(f"dim must be a positive integer; got {dim!r}")
        self._faiss = _import_faiss()
        self.dim = dim
        self.config = config or FaissConfig()
        self._cat = _Catalogue()
        self._ivf: Any = None  # faiss.IndexIVFFlat once trained

    def __len__(self) -> int:
        return len(self._cat)

    @property
    def nlist(self) -> int | None:
        return None if self._ivf is None else int(self._ivf.nlist)

    @property
    def nprobe(self) -> int | None:
        """Lists a 10-nearest query scans (`probes_for` gives it for any k)."""
        return self.probes_for(10)

    def probes_for(self, k: int) -> int | None:
        if self._ivf is None:
            return None
        return min(self.nlist, self.config.nprobe or default_nprobe(self.nlist, k))

    def train(self, vectors: np.ndarray) -> None:
        """Learn the list centroids (spherical k-means, as faiss does for inner product)."""
        if self._ivf is not None:
            raise ConfigError("the faiss index is already trained; build a new one to retrain")
        faiss = self._faiss
        x = _check_vectors(vectors, self.dim, "training vectors")
        nlist = self.config.nlist or auto_nlist(len(x))
        if len(x) < nlist:
            raise ConfigError(f"training needs at least nlist={nlist} vectors; got {len(x)}")
        faiss.omp_set_num_threads(self.config.threads)
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = self.config.train_iterations
        ivf.cp.max_points_per_centroid = self.config.train_points_per_list
        ivf.cp.min_points_per_centroid = 1  # small nlist/n ratios are fine; no stderr warning
        ivf.cp.seed = self.config.seed
        ivf.train(x)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        self._quantizer, self._ivf = quantizer, ivf

    def add(self, ids: Ids, vectors: np.ndarray, regions: Regions = None) -> None:
        x = _check_vectors(vectors, self.dim, "item vectors")
        names, x, regs = _last_wins(_check_ids(ids, len(x)), x, _check_regions(regions, len(x)))
        if not names:
            return
        if self._ivf is None:
            self.train(x)
        self._faiss.omp_set_num_threads(self.config.threads)
        slots, existed = self._cat.assign(names)
        if existed.any():
            self._remove_labels(slots[existed])
        self._ivf.add_with_ids(x, slots)
        self._cat.set_regions(slots, regs)

    def _remove_labels(self, labels: np.ndarray) -> None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        # IDSelectorArray: the only selector the hash-table direct map removes without a scan.
        sel = self._faiss.IDSelectorArray(len(labels), self._faiss.swig_ptr(labels))
        self._ivf.remove_ids(sel)

    def remove(self, ids: Ids) -> int:
        slots = self._cat.release(ids)
        if len(slots):
            self._remove_labels(slots)
        return len(slots)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        region: str | None = None,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> tuple[list[list[str]], np.ndarray]:
        faiss = self._faiss
        q = _check_vectors(queries, self.dim, "queries")
        k = _check_k(k)
        if exclude is not None and len(exclude) != len(q):
            raise ConfigError(f"exclude has {len(exclude)} lists for {len(q)} queries")
        rows: list[list[str]] = [[] for _ in q]
        scores: list[list[float]] = [[] for _ in q]
        if self._ivf is None or len(self) == 0:
            return _results(rows, scores, k)
        faiss.omp_set_num_threads(self.config.threads)
        skip = [self._cat.slots_of(e) for e in exclude] if exclude is not None else None
        fetch = min(len(self), k + max((len(s) for s in skip or ()), default=0))
        bitmap = None if region is None else self._cat.allowed(region)
        sel = (
            None if bitmap is None else faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        )
        pending, nprobe = np.arange(len(q)), self.probes_for(k)
        while len(pending):
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if sel is not None:
                params.sel = sel
            dist, labels = self._ivf.search(q[pending], fetch, params=params)
            short = []
            for i, d, lab in zip(pending, dist, labels, strict=True):
                ran_out = bool(lab[-1] < 0)  # faiss pads with -1 when the lists ran out
                if skip is not None and len(skip[i]):
                    bad = set(skip[i].tolist())
                    top = [
                        j for j, label in enumerate(lab.tolist()) if label >= 0 and label not in bad
                    ]
                    top = top[:k]
                else:
                    top = np.flatnonzero(lab >= 0)[:k]
                rows[i], scores[i] = self._cat.names[lab[top]].tolist(), d[top].tolist()
                if len(top) < k and ran_out and nprobe < self.nlist:
                    short.append(i)
            pending, nprobe = np.array(short, dtype=np.int64), min(self.nlist, 4 * nprobe)
        return _results(rows, scores, k)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        _write_manifest(folder, self.kind, self.dim, asdict(self.config))
        np.savez(folder / _CATALOGUE, **self._cat.arrays())
        if self._ivf is not None:
            self._faiss.write_index(self._ivf, str(folder / _FAISS))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FaissIndex:
        folder = Path(folder)
        manifest = json.loads((folder / _MANIFEST).read_text())
        index = cls(int(manifest["dim"]), FaissConfig(**manifest["config"]))
        with np.load(folder / _CATALOGUE, allow_pickle=False) as a:
            index._cat = _Catalogue.from_arrays(dict(a))
        if (folder / _FAISS).exists():
            index._ivf = index._faiss.read_index(str(folder / _FAISS))
        return index


class ColumnIndex:
    """faiss IVF-Flat over the rows of one matrix, labelled by row number: a scorer's serving
    index over its catalogue (row i = item column i), without string ids.

    `search` takes a bitmap of the rows it may return (bit i of byte i // 8, little-endian:
    the sellable items of a region), checked during the scan as in `FaissIndex`, and repeats
    a query with 4× the lists when the probed ones ran out of admissible rows. `extend` adds
    rows after the last (products listed live). A row's vector is never replaced in place:
    `updated` gives a new index over a new matrix that keeps this one's centroids and the
    lists of the rows whose vectors did not change (a fine-tuned model's catalogue), and
    `to_bytes` / `from_bytes` keep an index in a model folder, so loading one trains nothing.
    """

    def __init__(self, vectors: np.ndarray, config: FaissConfig | None = None) -> None:
        self._faiss = _import_faiss()
        self.config = config or FaissConfig()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ConfigError(f"a column index needs a non-empty (n, dim) matrix; got {x.shape}")
        self.dim = int(x.shape[1])
        faiss = self._faiss
        faiss.omp_set_num_threads(self.config.threads)
        nlist = self.config.nlist or auto_nlist(len(x))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = self.config.train_iterations
        ivf.cp.max_points_per_centroid = self.config.train_points_per_list
        ivf.cp.min_points_per_centroid = 1
        ivf.cp.seed = self.config.seed
        ivf.train(x)
        self._quantizer, self._ivf = quantizer, ivf
        self._size = 0
        self.extend(x)

    @classmethod
    def _wrapping(cls, ivf: Any, config: FaissConfig, quantizer: Any = None) -> ColumnIndex:
        """An index around a trained faiss IVF whose labels are 0 .. ntotal - 1."""
        index = cls.__new__(cls)
        index._faiss, index.config = _import_faiss(), config
        index.dim = int(ivf.d)
        index._quantizer, index._ivf = quantizer, ivf
        index._size = int(ivf.ntotal)
        return index

    def to_bytes(self) -> np.ndarray:
        """The whole index (centroids and lists) as a uint8 array, for a model folder."""
        return np.asarray(self._faiss.serialize_index(self._ivf), dtype=np.uint8)

    @classmethod
    def from_bytes(cls, data: np.ndarray, config: FaissConfig | None = None) -> ColumnIndex:
        """The index `to_bytes` wrote (its lists as they were: nothing is trained or assigned)."""
        faiss = _import_faiss()
        try:
            ivf = faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
        except RuntimeError as exc:  # faiss's message names the C++ reader and its line
            raise ConfigError(f"not a serialized faiss index: {str(exc)[-120:]}") from None
        if not isinstance(ivf, faiss.IndexIVFFlat):
            raise ConfigError(f"not a column index: a serialized {type(ivf).__name__}")
        return cls._wrapping(ivf, config or FaissConfig())

    def lists(self) -> np.ndarray:
        """The inverted list each row is in (-1: none)."""
        faiss, ivf = self._faiss, self._ivf
        out = np.full(self._size, -1, dtype=np.int64)
        lists = ivf.invlists
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if size:
                rows = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
                out[np.asarray(rows, dtype=np.int64)] = list_no
        return out

    def updated(self, vectors: np.ndarray, kept_from: np.ndarray) -> ColumnIndex:
        """A new index over `vectors` (row i = new column i) with this index's centroids:
        row i goes to the list of this index's row `kept_from[i]` (its vector is unchanged
        there), or, at -1, to its nearest centroid, as `extend` places a row. Only those
        rows are compared with the centroids: the rest is a copy."""
        faiss = self._faiss
        x = _check_vectors(vectors, self.dim, "item vectors")
        kept = np.asarray(kept_from, dtype=np.int64)
        if kept.shape != (len(x),) or (kept >= self._size).any():
            raise ConfigError(
                f"kept_from needs one row of this index (< {self._size}) or -1 per vector"
            )
        faiss.omp_set_num_threads(self.config.threads)
        assign = np.where(kept >= 0, self.lists()[np.maximum(kept, 0)], -1)
        fresh = np.flatnonzero(assign < 0)
        if len(fresh):
            _, nearest = self._ivf.quantizer.search(x[fresh], 1)
            assign[fresh] = nearest[:, 0]
        quantizer = faiss.clone_index(self._ivf.quantizer)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.is_trained = True
        labels = np.arange(len(x), dtype=np.int64)
        assign = np.ascontiguousarray(assign)
        ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(labels), faiss.swig_ptr(assign))
        return ColumnIndex._wrapping(ivf, self.config, quantizer)

    def __len__(self) -> int:
        return self._size

    @property
    def nlist(self) -> int:
        return int(self._ivf.nlist)

    def probes_for(self, k: int) -> int:
        return min(self.nlist, self.config.nprobe or default_nprobe(self.nlist, k))

    def extend(self, vectors: np.ndarray) -> None:
        """Add rows after the last (labels len(self), len(self) + 1, ...)."""
        x = _check_vectors(vectors, self.dim, "item vectors")
        if not len(x):
            return
        self._faiss.omp_set_num_threads(self.config.threads)
        self._ivf.add_with_ids(x, np.arange(self._size, self._size + len(x), dtype=np.int64))
        self._size += len(x)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        probe_k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(len(queries), k) rows and inner products, best first; -1 and -inf past the
        admissible rows. `allowed`: uint8 bitmap over rows (None = every row); `probe_k`:
        the list length the scanned lists are sized for (default k; a caller that asks for
        more to drop some afterwards keeps the scan of the list it wants)."""
        faiss = self._faiss
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), self._size))
        faiss.omp_set_num_threads(self.config.threads)
        sel = None
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.uint8)
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(allowed))
        labels = np.full((len(q), k), -1, dtype=np.int64)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        pending, nprobe = np.arange(len(q)), self.probes_for(probe_k or k)
        while len(pending):
            params = faiss.SearchParametersIVF(nprobe=nprobe)
            if sel is not None:
                params.sel = sel
            dist, lab = self._ivf.search(q[pending], k, params=params)
            found = lab >= 0
            labels[pending] = lab
            scores[pending] = np.where(found, dist, -np.inf)
            # faiss pads with -1 when the probed lists ran out of admissible rows
            short = pending[~found[:, -1]]
            if nprobe >= self.nlist:
                break
            pending, nprobe = short, min(self.nlist, 4 * nprobe)
        return labels, scores


def _last_wins(
    names: list[str], x: np.ndarray, regions: list[Sequence[str] | None]
) -> tuple[list[str], np.ndarray, list[Sequence[str] | None]]:
    """Drop all but the last occurrence of ids repeated within one `add` call."""
    last = {name: j for j, name in enumerate(names)}
    if len(last) == len(names):
        return names, x, regions
    keep = sorted(last.values())
    return [names[j] for j in keep], x[keep], [regions[j] for j in keep]


# ---------------------------------------------------------------------------- factory


def build_index(
    ids: Ids,
    vectors: np.ndarray,
    regions: Regions = None,
    *,
    kind: Literal["auto", "exact", "faiss"] = "auto",
    config: FaissConfig | None = None,
) -> VectorIndex:
    """An index holding `vectors`: exact below `EXACT_MAX_ITEMS` items, faiss IVF above.

    The faiss index trains on all of `vectors` (subsampled per `config.train_points_per_list`).
    """
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise ConfigError(f"item vectors must have shape (n, dim); got {x.shape}")
    if kind == "auto":
        kind = "exact" if len(x) < EXACT_MAX_ITEMS else "faiss"
    index: VectorIndex
    if kind == "exact":
        index = ExactIndex(x.shape[1])
    elif kind == "faiss":
        index = FaissIndex(x.shape[1], config)
    else:
        raise ConfigError(f"unknown index kind {kind!r}; expected 'auto', 'exact' or 'faiss'")
    index.add(ids, x, regions)
    return index


def load_index(folder: str | Path) -> VectorIndex:
    """The index saved in `folder` by `save`, whichever its kind."""
    path = Path(folder) / _MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: not a readable vector index manifest ({e})") from e
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ModelError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} folder")
    loaders = {"exact": ExactIndex.load, "faiss": FaissIndex.load}
    if manifest.get("kind") not in loaders:
        raise ModelError(f"{path}: unknown index kind {manifest.get('kind')!r}")
    return loaders[manifest["kind"]](folder)
