"""One contract suite for every `VectorIndex`: exact answers on small data (faiss probing all
lists is exact), upserts, immediate removal, region filters, exclusions, save/load, errors."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest

from marketrec.core.errors import ConfigError, ModelError
from marketrec.retrieval.index import (
    EXACT_MAX_ITEMS,
    ColumnIndex,
    ExactIndex,
    FaissConfig,
    FaissIndex,
    VectorIndex,
    auto_nlist,
    build_index,
    default_nprobe,
    load_index,
)

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss-cpu is not installed")

DIM, N = 8, 600
IDS = [f"item{i}" for i in range(N)]
#: Every 3rd item sells only in "north", every 3rd+1 in "north" and "south", the rest anywhere.
REGIONS = [
    ["north"] if i % 3 == 0 else ["north", "south"] if i % 3 == 1 else None for i in range(N)
]


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


VECTORS = _vectors(N, 0)
QUERIES = _vectors(7, 1)


def _exact_nprobe_all() -> FaissIndex:
    # nprobe far above nlist is clamped to nlist: every list is scanned, so results are exact.
    return FaissIndex(DIM, FaissConfig(nprobe=10_000))


MAKERS: dict[str, Callable[[], VectorIndex]] = {
    "exact": lambda: ExactIndex(DIM),
    "faiss": _exact_nprobe_all,
}


@pytest.fixture(params=[pytest.param("exact"), pytest.param("faiss", marks=needs_faiss)])
def make(request: pytest.FixtureRequest) -> Callable[[], VectorIndex]:
    return MAKERS[request.param]


@pytest.fixture
def index(make: Callable[[], VectorIndex]) -> VectorIndex:
    ix = make()
    ix.add(IDS, VECTORS, REGIONS)
    return ix


def brute_force(
    ids: list[str], vectors: np.ndarray, query: np.ndarray, k: int, keep=lambda i: True
) -> list[str]:
    scores = vectors @ query
    order = [j for j in np.argsort(-scores, kind="stable") if keep(j)]
    return [ids[j] for j in order[:k]]


def test_search_matches_brute_force(index: VectorIndex) -> None:
    found, scores = index.search(QUERIES, 10)
    assert len(index) == N and index.dim == DIM
    assert scores.shape == (len(QUERIES), 10) and scores.dtype == np.float32
    for q, row, s in zip(QUERIES, found, scores, strict=True):
        assert row == brute_force(IDS, VECTORS, q, 10)
        np.testing.assert_allclose(s, np.sort(VECTORS @ q)[::-1][:10], rtol=1e-5, atol=1e-5)


def test_single_query_as_1d_array(index: VectorIndex) -> None:
    found, scores = index.search(QUERIES[0], 3)
    assert found == [brute_force(IDS, VECTORS, QUERIES[0], 3)] and scores.shape == (1, 3)


def test_k_larger_than_catalogue_pads_with_minus_inf(make: Callable[[], VectorIndex]) -> None:
    ix = make()
    ix.add(IDS[:20], VECTORS[:20])
    found, scores = ix.search(QUERIES[:2], 30)
    assert [len(r) for r in found] == [20, 20]
    assert np.isfinite(scores[:, :20]).all() and np.isneginf(scores[:, 20:]).all()


def test_add_replaces_existing_id(index: VectorIndex) -> None:
    target = QUERIES[0] * 100  # a vector that is everyone's best match for query 0
    index.add(["item5", "new"], np.stack([target, -target]), [["east"], None])
    assert len(index) == N + 1
    found, _ = index.search(QUERIES[:1], 3)
    assert found[0][0] == "item5" and "new" not in found[0]
    assert index.search(QUERIES[:1], 1, region="east")[0][0] == ["item5"]
    assert "item5" not in index.search(QUERIES[:1], N, region="north")[0][0]  # regions replaced


def test_repeated_id_in_one_call_last_wins(make: Callable[[], VectorIndex]) -> None:
    ix = make()
    ix.add(
        ["a", "b", "a"], np.stack([QUERIES[0], -QUERIES[0], 2 * QUERIES[0]]), [["x"], None, None]
    )
    found, scores = ix.search(QUERIES[:1], 5)
    assert len(ix) == 2 and found[0] == ["a", "b"]
    assert scores[0, 0] == pytest.approx(2 * float(QUERIES[0] @ QUERIES[0]), rel=1e-5)


def test_remove_is_immediate(index: VectorIndex) -> None:
    top = index.search(QUERIES, 5)[0]
    gone = sorted({i for row in top for i in row})
    assert index.remove([*gone, "unknown", gone[0]]) == len(gone)
    assert len(index) == N - len(gone)
    found, _ = index.search(QUERIES, 50)
    assert not set(gone) & {i for row in found for i in row}
    keep = set(IDS) - set(gone)
    for q, row in zip(QUERIES, found, strict=True):
        assert row == brute_force(IDS, VECTORS, q, 50, lambda j: IDS[j] in keep)
    assert index.remove(gone) == 0


def test_removed_slots_are_reused(index: VectorIndex) -> None:
    index.remove(IDS[:100])
    index.add(["fresh"], QUERIES[:1] * 100)
    assert index.search(QUERIES[:1], 1)[0] == [["fresh"]]
    index.remove(["fresh"])
    index.add(IDS[:100], VECTORS[:100], REGIONS[:100])
    assert len(index) == N
    found, _ = index.search(QUERIES, 10, region="south")
    for q, row in zip(QUERIES, found, strict=True):
        assert row == brute_force(IDS, VECTORS, q, 10, lambda j: REGIONS[j] != ["north"])


@pytest.mark.parametrize("region", ["north", "south", "nowhere-listed"])
def test_region_filter(index: VectorIndex, region: str) -> None:
    found, _ = index.search(QUERIES, 10, region=region)

    def sells(j: int) -> bool:
        return REGIONS[j] is None or region in REGIONS[j]

    for q, row in zip(QUERIES, found, strict=True):
        assert row == brute_force(IDS, VECTORS, q, 10, sells)


def test_empty_region_list_sells_nowhere(make: Callable[[], VectorIndex]) -> None:
    ix = make()
    ix.add(["a", "b"], VECTORS[:2], [[], None])
    assert ix.search(QUERIES[:1], 5, region="north")[0] == [["b"]]
    assert sorted(ix.search(QUERIES[:1], 5)[0][0]) == ["a", "b"]


def test_exclusions_still_give_k(index: VectorIndex) -> None:
    seen = [brute_force(IDS, VECTORS, q, 30)[::2] for q in QUERIES]  # 15 of each top-30
    found, scores = index.search(QUERIES, 10, exclude=[[*s, "unknown"] for s in seen])
    for q, s, row in zip(QUERIES, seen, found, strict=True):
        assert len(row) == 10 and not set(row) & set(s)
        assert row == brute_force(IDS, VECTORS, q, 10, lambda j, s=set(s): IDS[j] not in s)
    assert np.isfinite(scores).all()


def test_exclusions_with_region(index: VectorIndex) -> None:
    seen = brute_force(IDS, VECTORS, QUERIES[0], 5, lambda j: REGIONS[j] is None)
    found, _ = index.search(QUERIES[:1], 10, region="south", exclude=[seen])

    def ok(j: int) -> bool:
        return (REGIONS[j] is None or "south" in REGIONS[j]) and IDS[j] not in seen

    assert found[0] == brute_force(IDS, VECTORS, QUERIES[0], 10, ok)


def test_save_load_round_trip(index: VectorIndex, tmp_path) -> None:
    index.remove(IDS[:50])
    index.add(["late"], QUERIES[:1], [["west"]])
    before = [index.search(QUERIES, 10, region=r) for r in (None, "north", "west")]
    loaded = load_index(index.save(tmp_path / "ix"))
    assert type(loaded) is type(index) and len(loaded) == len(index) and loaded.dim == DIM
    for r, (ids, scores) in zip((None, "north", "west"), before, strict=True):
        got_ids, got_scores = loaded.search(QUERIES, 10, region=r)
        assert got_ids == ids
        np.testing.assert_allclose(got_scores, scores, rtol=1e-6)
    # still mutable after loading: removal and upsert work on the reloaded index
    assert loaded.remove(["late", IDS[60]]) == 2 and loaded.remove(IDS[:50]) == 0
    loaded.add(["after"], QUERIES[:1] * 100)
    assert loaded.search(QUERIES[:1], 1)[0] == [["after"]]


def test_empty_index(make: Callable[[], VectorIndex], tmp_path) -> None:
    ix = make()
    found, scores = ix.search(QUERIES[:2], 3, region="north", exclude=[["a"], []])
    assert found == [[], []] and scores.shape == (2, 3) and np.isneginf(scores).all()
    assert ix.remove(["a"]) == 0 and len(ix) == 0
    assert len(load_index(ix.save(tmp_path / "empty"))) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ix: ix.add(["a"], np.zeros((1, DIM + 1))), "shape"),
        (lambda ix: ix.add(["a", "b"], np.zeros((1, DIM))), "lengths must match"),
        (lambda ix: ix.add(["a"], np.zeros((1, DIM)), [None, None]), "lengths must match"),
        (lambda ix: ix.add(["a"], np.zeros((1, DIM)), ["north"]), "list per item"),
        (lambda ix: ix.add([1], np.zeros((1, DIM))), "strings"),
        (lambda ix: ix.add(["a"], np.full((1, DIM), np.nan)), "NaN"),
        (lambda ix: ix.search(np.zeros((1, DIM + 1)), 3), "shape"),
        (lambda ix: ix.search(np.zeros((1, DIM)), 0), "k must be"),
        (lambda ix: ix.search(np.zeros((1, DIM)), -2), "k must be"),
        (lambda ix: ix.search(np.zeros((2, DIM)), 3, exclude=[[]]), "exclude has 1 lists"),
    ],
)
def test_errors(make: Callable[[], VectorIndex], call, message: str) -> None:
    ix = make()
    ix.add(IDS[:50], VECTORS[:50])
    with pytest.raises(ConfigError, match=message):
        call(ix)


def test_load_rejects_other_folders(tmp_path) -> None:
    with pytest.raises(ModelError, match="manifest"):
        load_index(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "something-else", "version": 1}')
    with pytest.raises(ModelError, match="not a"):
        load_index(tmp_path)


def test_build_index_picks_by_size() -> None:
    assert isinstance(build_index(IDS, VECTORS, REGIONS), ExactIndex)
    assert N < EXACT_MAX_ITEMS
    with pytest.raises(ConfigError, match="unknown index kind"):
        build_index(IDS, VECTORS, kind="annoy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dim must be"):
        ExactIndex(0)


@needs_faiss
def test_build_index_faiss_and_approximate_recall() -> None:
    # Clustered data, default nprobe: approximate, but it must find most true neighbours.
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 16)).astype(np.float32)
    x = centres[rng.integers(0, 40, 8000)] + 0.3 * rng.standard_normal((8000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"i{j}" for j in range(len(x))]
    ix = build_index(ids, x, kind="faiss")
    assert isinstance(ix, FaissIndex) and ix.nlist == auto_nlist(8000)
    assert ix.nprobe == default_nprobe(ix.nlist)
    queries = x[:50] + 0.05
    found, _ = ix.search(queries, 10)
    exact, _ = build_index(ids, x, kind="exact").search(queries, 10)
    hits = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert hits >= 0.9
    # asking for more neighbours scans more lists: the 100 nearest span more of them
    assert ix.probes_for(100) == min(ix.nlist, 2 * ix.probes_for(10))
    found, _ = ix.search(queries, 100)
    exact, _ = build_index(ids, x, kind="exact").search(queries, 100)
    hits = np.mean([len(set(f) & set(e)) / 100 for f, e in zip(found, exact, strict=True)])
    assert hits >= 0.95


@needs_faiss
def test_faiss_rare_region_still_gets_k() -> None:
    # 20 of 6,000 items sell in "island"; one list probed would hold almost none of them, so
    # the index must widen its probe until it finds k admissible items.
    x = _vectors(6000, 5)
    regions = [["island"] if i % 300 == 0 else ["mainland"] for i in range(6000)]
    ix = FaissIndex(DIM, FaissConfig(nlist=60, nprobe=1))
    ix.add([f"i{i}" for i in range(6000)], x, regions)
    found, _ = ix.search(QUERIES[:3], 10, region="island")
    assert all(len(r) == 10 and all(int(i[1:]) % 300 == 0 for i in r) for r in found)


@needs_faiss
def test_faiss_training_rules() -> None:
    ix = FaissIndex(DIM, FaissConfig(nlist=100))
    with pytest.raises(ConfigError, match="at least nlist=100"):
        ix.add(IDS[:50], VECTORS[:50])
    ix.train(VECTORS)
    with pytest.raises(ConfigError, match="already trained"):
        ix.train(VECTORS)
    with pytest.raises(ConfigError, match="must be positive"):
        FaissConfig(nprobe=0)
    assert auto_nlist(1_000_000) == 4000 and auto_nlist(100) == 2 and auto_nlist(5) == 1


@needs_faiss
def test_column_index_rows_bitmaps_and_growth() -> None:
    """The scorer's serving index: labels are row numbers, a bitmap keeps the allowed rows
    (a rare set still fills k: the query widens until it does), rows added later are found."""
    x = _vectors(N, 3)
    q = _vectors(4, 4)
    index = ColumnIndex(x, FaissConfig(nlist=20, nprobe=20))  # every list: exact
    rows, scores = index.search(q, 10)
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    assert (np.sort(rows, 1) == np.sort(exact, 1)).all()
    assert np.allclose(scores, np.take_along_axis(q @ x.T, rows, 1), atol=1e-5)
    allowed = np.zeros(N, dtype=bool)
    allowed[::50] = True  # 12 rows, scattered over the lists
    narrow = ColumnIndex(x, FaissConfig(nlist=20, nprobe=1))
    rows, scores = narrow.search(q, 12, np.packbits(allowed, bitorder="little"))
    assert (np.sort(rows, 1) == np.flatnonzero(allowed)).all() and np.isfinite(scores).all()
    rows, scores = narrow.search(q, 15, np.packbits(allowed, bitorder="little"))
    assert (rows[:, 12:] == -1).all() and np.isneginf(scores[:, 12:]).all()
    extra = q[:1] * 100.0  # far along the first query: its best match
    index.extend(extra)
    assert len(index) == N + 1
    rows, _ = index.search(q[:1], 3)
    assert rows[0, 0] == N


@needs_faiss
def test_column_index_round_trips_and_updates_rows_under_its_centroids() -> None:
    """`to_bytes` / `from_bytes` give the same index (nothing retrained); `updated` keeps the
    centroids and the lists of kept rows, places the other rows at their nearest centroid,
    and names a bad `kept_from`."""
    x = _vectors(N, 3)
    q = _vectors(4, 4)
    index = ColumnIndex(x, FaissConfig(nlist=20, nprobe=3))
    copy = ColumnIndex.from_bytes(index.to_bytes(), index.config)
    assert len(copy) == N and copy.nlist == 20
    assert np.array_equal(copy.lists(), index.lists())
    for got, want in zip(copy.search(q, 10), index.search(q, 10), strict=True):
        assert np.array_equal(got, want)
    # new matrix: row 0 is new (a far-away vector), rows 1.. are the old rows 1.. reversed,
    # the odd ones moved
    moved = x[1:][::-1].copy()
    moved[1::2] = _vectors(len(moved[1::2]), 5)
    y = np.vstack([q[:1] * 100.0, moved])
    kept_from = np.r_[-1, np.arange(N - 1, 0, -1)]
    kept_from[2::2] = -1  # the moved rows
    updated = index.updated(y, kept_from)
    assert len(updated) == N and len(index) == N  # the old index is untouched
    centroids = index._ivf.quantizer.reconstruct_n(0, 20)
    assert np.array_equal(updated._ivf.quantizer.reconstruct_n(0, 20), centroids)
    lists = updated.lists()
    keep = kept_from >= 0
    assert np.array_equal(lists[keep], index.lists()[kept_from[keep]])
    assert np.array_equal(lists[~keep], np.argmax(y[~keep] @ centroids.T, axis=1))
    every = ColumnIndex.from_bytes(updated.to_bytes(), FaissConfig(nprobe=20))
    rows, _ = every.search(q, 10)
    exact = np.argsort(-(q @ y.T), axis=1, kind="stable")[:, :10]
    assert (np.sort(rows, 1) == np.sort(exact, 1)).all()
    with pytest.raises(ConfigError, match="kept_from"):
        index.updated(y, kept_from[:-1])
    with pytest.raises(ConfigError, match="kept_from"):
        index.updated(y, np.full(N, N))
    with pytest.raises(ConfigError, match="not a serialized faiss index"):
        ColumnIndex.from_bytes(np.frombuffer(b"garbage!" * 4, dtype=np.uint8))
