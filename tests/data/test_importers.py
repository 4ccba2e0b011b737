"""Importers: tiny synthetic fixtures for every layout, plus exact counts on the real datasets.

The synthetic files reproduce the quirks the importers exist for (latin-1 titles, `::`
separators, Canadian postal codes, duplicate review lines, HTML titles, CSS prices, Python-literal
2014 metadata, RetailRocket event names), so each cleaning rule is checked in milliseconds. The
real-data tests pin the counts documented in each dataset's PROVENANCE.md and skip when the
shared data folder is not present.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from marketrec.core.errors import ConfigError, DataError
from marketrec.data.importers import (
    RETAILROCKET_MAPPING,
    import_amazon,
    import_csv,
    import_movielens,
    parse_mapping,
)
from marketrec.data.schema import TIMESTAMP, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k"
MAGAZINES = SHARED_DATA / "amazon2018_magazine_subscriptions"

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES)


def _notes(ds: object) -> str:
    return "\n".join(ds.notes)  # type: ignore[attr-defined]


# --- MovieLens ---------------------------------------------------------------------------------


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    root = tmp_path / "ml-100k"
    root.mkdir()
    (root / "u.data").write_text(
        "1\t10\t5\t881250949\n2\t10\t3\t891717742\n2\t20\t4\t878887116\n3\t30\t1\t880000000\n"
    )
    items = [
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{_flags('Animation', 'Comedy')}",
        f"20|Les Misérables (1995)|15-Mar-1995||http://y|{_flags('Drama')}",
        f"30|unknown|||http://z|{_flags()}",
    ]
    (root / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")
    (root / "u.user").write_text(
        "1|24|M|technician|85711\n2|53|F|other|02139\n3|23|M|writer|T8H1N\n4|40|F|artist|60614\n"
    )
    return root


def test_ml100k_counts_types_and_attributes(ml100k: Path) -> None:
    ds = import_movielens(ml100k)
    assert ds.events.height == 4
    assert ds.events.schema["ts"] == TIMESTAMP
    assert ds.events.get_column("value").to_list() == [5.0, 3.0, 4.0, 1.0]
    assert set(ds.events.get_column("event")) == {"rating"}
    assert ds.events.row(0, named=True)["ts"] == datetime.fromtimestamp(881250949, UTC)
    assert ds.events.get_column("user_id").dtype == pl.String

    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["10"]["tags"] == ["Animation", "Comedy"]
    assert items["10"]["category"] == "Animation"
    assert items["10"]["created_at"] == datetime(1995, 1, 1, tzinfo=UTC)
    assert items["20"]["title"] == "Les Misérables (1995)"  # latin-1 decoded
    assert items["30"]["tags"] == [] and items["30"]["category"] == "unknown"
    assert items["30"]["created_at"] is None
    assert ds.items.get_column("description").null_count() == 3

    users = {r["user_id"]: r for r in ds.users.iter_rows(named=True)}
    assert users["1"]["region"] == "west"
    assert users["2"]["region"] == "northeast"
    assert users["3"]["region"] == "other"  # Canadian postal code
    assert users["4"]["region"] == "midwest"
    assert ds.users.schema["age"] == pl.Int64
    assert users["1"]["occupation"] == "technician" and users["1"]["gender"] == "M"
    assert "without a parsable release date" in _notes(ds)


def test_ml100k_accepts_ratings_file_and_round_trips(ml100k: Path, tmp_path: Path) -> None:
    ds = import_movielens(ml100k / "u.data")
    out = ds.save(tmp_path / "out")
    again = load_dataset(out)
    assert again.events.height == 4 and again.items.height == 3 and again.users.height == 4


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    root = tmp_path / "ml-1m"
    root.mkdir()
    (root / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    )
    (root / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1")
    )
    (root / "users.dat").write_text(
        "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::T8H1N\n4::F::45::0::98107-2117\n"
    )
    return root


def test_ml1m_layout(ml1m: Path) -> None:
    ds = import_movielens(ml1m)
    assert ds.events.height == 3
    assert ds.events.get_column("item_id").to_list() == ["1193", "661", "1193"]
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["661"]["tags"] == ["Animation", "Children's", "Musical"]
    assert items["661"]["category"] == "Animation"
    assert items["3"]["title"] == "Misérables, Les (1995)"
    assert items["1193"]["created_at"] == datetime(1975, 1, 1, tzinfo=UTC)
    users = {r["user_id"]: r for r in ds.users.iter_rows(named=True)}
    assert users["1"]["occupation"] == "K-12 student" and users["1"]["age"] == 1
    assert users["2"]["occupation"] == "self-employed" and users["2"]["region"] == "south"
    assert users["3"]["region"] == "other"
    assert users["4"]["region"] == "west" and users["4"]["occupation"] == "other"
    assert ds.users.schema["age"] == pl.Int64


def test_movielens_bad_input(tmp_path: Path, ml100k: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        import_movielens(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"u\.data"):
        import_movielens(empty)
    with (ml100k / "u.data").open("a") as f:
        f.write("4\t10\n")
    with pytest.raises(DataError, match="line 5") as err:
        import_movielens(ml100k)
    assert "u.data" in str(err.value)


def test_movielens_non_numeric_rating(ml100k: Path) -> None:
    with (ml100k / "u.data").open("a") as f:
        f.write("4\t10\tfive\t881250949\n")
    with pytest.raises(DataError, match="rating"):
        import_movielens(ml100k)


# --- Amazon ------------------------------------------------------------------------------------


def _review(user: str, asin: str, stars: float, ts: int, text: str = "ok") -> str:
    return json.dumps(
        {"reviewerID": user, "asin": asin, "overall": stars, "unixReviewTime": ts,
         "reviewTime": "01 1, 2014", "reviewText": text, "vote": "3"}
    )  # fmt: skip


@pytest.fixture
def amazon2018(tmp_path: Path) -> Path:
    root = tmp_path / "mags"
    root.mkdir()
    reviews = [
        _review("U1", "A1", 5.0, 1393372800),
        _review("U1", "A1", 5.0, 1393372800),  # exact duplicate line
        _review("U2", "A1", 4.0, 1393372900),
        _review("U2", "A2", 3.0, 1393373000),
        _review("U3", "A9", 1.0, 1393373100),  # no metadata
    ]
    (root / "Mags_5.json").write_text("\n".join(reviews) + "\n\n")
    junk = '<span class="a-size-medium a-color-secondary"'
    meta = [
        {"asin": "A1", "title": "Canoe &amp; Kayak", "description": ["Paddling.", "", "Fun."],
         "brand": "Pub Co", "category": ["Magazine Subscriptions", "Sports &amp; Outdoors"],
         "price": "$12.99", "rank": ["1 in X"]},
        {"asin": "A2", "title": junk, "description": "A plain string.", "brand": "",
         "category": ["Magazine Subscriptions"], "price": ".a-box-inner{background-color:#fff}",
         "rank": "742 in Magazine Subscriptions ("},
        {"asin": "A1", "title": "Second copy", "description": [], "price": ""},
        {"asin": "A3", "title": ' Magazines" />', "description": [], "category": [],
         "price": "$1,299.00", "details": {"Format:": "Print"}},
    ]  # fmt: skip
    (root / "meta_Mags.json").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    return root


def test_amazon2018_reviews_and_meta(amazon2018: Path) -> None:
    ds = import_amazon(amazon2018)
    assert ds.events.height == 4  # 5 lines − 1 exact duplicate
    assert set(ds.events.get_column("event")) == {"rating"}
    assert ds.events.get_column("value").to_list() == [5.0, 4.0, 3.0, 1.0]
    assert ds.events.row(0, named=True)["ts"] == datetime.fromtimestamp(1393372800, UTC)
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert set(items) == {"A1", "A2", "A3", "A9"}
    assert items["A1"]["title"] == "Canoe & Kayak"  # first row kept, entity decoded
    assert items["A1"]["description"] == "Paddling.\nFun."
    assert items["A1"]["category"] == "Magazine Subscriptions > Sports & Outdoors"
    assert items["A1"]["price"] == 12.99
    assert items["A1"]["brand"] == "Pub Co"
    assert items["A2"]["title"] is None and items["A3"]["title"] is None
    assert items["A2"]["description"] == "A plain string."
    assert items["A2"]["price"] is None and items["A2"]["brand"] is None
    assert items["A3"]["price"] == 1299.0
    assert items["A3"]["category"] is None and items["A3"]["description"] is None
    assert items["A9"]["title"] is None and items["A9"]["category"] is None
    notes = _notes(ds)
    assert "1 exact duplicate review lines removed" in notes
    assert "1 metadata rows repeat an earlier asin" in notes
    assert "2 titles are HTML/CSS fragments" in notes
    assert "1 prices are not a single amount" in notes
    assert "1 reviewed items have no metadata" in notes


def test_amazon_accepts_reviews_file_and_finds_meta(amazon2018: Path) -> None:
    ds = import_amazon(amazon2018 / "Mags_5.json")
    assert ds.items.height == 4
    assert ds.items.filter(pl.col("item_id") == "A1").get_column("price").item() == 12.99


@pytest.fixture
def amazon2014(tmp_path: Path) -> Path:
    root = tmp_path / "toys"
    root.mkdir()
    reviews = [
        json.dumps({"reviewerID": "R1", "asin": "0000031852", "overall": 5.0,
                    "unixReviewTime": 1370304000, "helpful": [0, 0]}),
        json.dumps({"reviewerID": "R2", "asin": "0000031852", "overall": 2.0,
                    "unixReviewTime": 1370390400, "helpful": [1, 2]}),
    ]  # fmt: skip
    with gzip.open(root / "reviews_Toys_5.json.gz", "wt") as f:
        f.write("\n".join(reviews) + "\n")
    meta = [  # the 2014 metadata is Python literals, not JSON
        "{'asin': '0000031852', 'title': 'Girls Ballet Tutu', 'price': 3.17, "
        "'salesRank': {'Toys & Games': 211836}, 'description': 'A tutu.', "
        "'categories': [['Toys & Games', 'Dress Up', 'Tutus'], ['Clothing']]}",
        "{'asin': 'B000X', 'categories': [['Toys & Games']], 'brand': 'Acme'}",
    ]
    with gzip.open(root / "meta_Toys.json.gz", "wt") as f:
        f.write("\n".join(meta) + "\n")
    return root


def test_amazon2014_categories_and_literal_meta(amazon2014: Path) -> None:
    ds = import_amazon(amazon2014)
    assert ds.events.height == 2
    items = {r["item_id"]: r for r in ds.items.iter_rows(named=True)}
    assert items["0000031852"]["category"] == "Toys & Games > Dress Up > Tutus"
    assert items["0000031852"]["price"] == 3.17
    assert items["0000031852"]["description"] == "A tutu."
    assert items["B000X"]["brand"] == "Acme" and items["B000X"]["category"] == "Toys & Games"
    assert "Python literals" in _notes(ds)


def test_amazon_bad_input(tmp_path: Path, amazon2018: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        import_amazon(tmp_path / "missing")
    with (amazon2018 / "Mags_5.json").open("a") as f:
        f.write('{"reviewerID": "U9", "asin": \n')
    with pytest.raises(DataError, match=r"line 7") as err:
        import_amazon(amazon2018)
    assert "Mags_5.json" in str(err.value) and "(1 row)" in str(err.value)
    (amazon2018 / "Mags_5.json").write_text(json.dumps({"asin": "A1", "title": "x"}) + "\n")
    with pytest.raises(DataError, match="reviewerID"):
        import_amazon(amazon2018)


# --- CSV ---------------------------------------------------------------------------------------


@pytest.fixture
def retailrocket(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text(
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,view,248676,\n"
        "1433221999827,111016,addtocart,0123,\n"
        "1433223236124,111016,transaction,0123,4000\n"
        "1433223236125,111016,view,,\n"
        "1433223236126,5,wishlist,9,\n"
    )
    return path


def test_csv_retailrocket(retailrocket: Path) -> None:
    ds = import_csv(retailrocket, RETAILROCKET_MAPPING)
    ev = ds.events
    assert ev.height == 5  # the row without itemid is dropped, and reported
    assert ev.get_column("event").to_list() == [
        "view",
        "view",
        "add_to_cart",
        "purchase",
        "wishlist",
    ]
    assert ev.get_column("item_id").to_list()[2] == "0123"  # ids kept as text, leading zero
    assert ev.schema["ts"] == TIMESTAMP
    assert ev.row(0, named=True)["ts"] == datetime.fromtimestamp(1433221332.117, UTC)
    notes = _notes(ds)
    assert "'addtocart' renamed 'add_to_cart' (1 rows)" in notes
    assert "1 rows with empty required fields dropped (item_id 1)" in notes
    assert "transactionid" in notes and "'wishlist'" in notes
    assert "epoch ms" in notes


def test_csv_explicit_unit_constant_event_and_tables(tmp_path: Path) -> None:
    orders = tmp_path / "orders.tsv"
    orders.write_text(
        "when\tcustomer\tsku\tamount\n1700000000\tc1\ts1\t9.5\n1700000100\tc2\ts2\tx\n"
    )
    items = tmp_path / "items.tsv"
    items.write_text(
        "sku\tname\tprice\ttags\tcolour\n"
        "s1\tMug\t4.5\tkitchen|gift\tred\ns2\tCup\tjunk\t\tblue\ns1\tMug again\t1\t\tred\n"
    )
    users = tmp_path / "users.tsv"
    users.write_text("customer\tregion\tage\tsegment\nc1\twest\t31\tgold\nc2\teast\t\tsilver\n")
    ds = import_csv(
        orders,
        {"user_id": "customer", "item_id": "sku", "ts": "when", "event": "=purchase",
         "value": "amount"},
        ts_unit="s",
        separator="\t",
        items=items,
        item_mapping={"item_id": "sku", "title": "name"},
        users=users,
        user_mapping={"user_id": "customer"},
    )  # fmt: skip
    assert ds.events.get_column("event").to_list() == ["purchase", "purchase"]
    assert ds.events.get_column("value").to_list() == [9.5, None]
    assert ds.events.row(0, named=True)["ts"] == datetime.fromtimestamp(1700000000, UTC)
    mug = ds.items.filter(pl.col("item_id") == "s1").row(0, named=True)
    assert mug["title"] == "Mug" and mug["price"] == 4.5 and mug["tags"] == ["kitchen", "gift"]
    assert "colour" not in ds.items.columns
    assert ds.items.height == 2
    assert ds.users.schema["age"] == pl.Int64 and ds.users.schema["segment"] == pl.String
    notes = _notes(ds)
    assert "1 'value' values are not numbers" in notes
    assert "1 rows repeat an earlier item_id" in notes
    assert "columns not imported: colour" in notes


def test_csv_iso_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("t,u,i,e\n2024-01-02T03:04:05Z,u1,i1,click\n2024-01-02 04:00:00,u2,i2,view\n")
    ds = import_csv(path, {"user_id": "u", "item_id": "i", "ts": "t", "event": "e"})
    assert ds.events.get_column("ts").to_list() == [
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2024, 1, 2, 4, 0, tzinfo=UTC),
    ]


def test_csv_bad_input(tmp_path: Path, retailrocket: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        import_csv(tmp_path / "nope.csv", RETAILROCKET_MAPPING)
    mapping = {**RETAILROCKET_MAPPING, "user_id": "visitor"}
    with pytest.raises(DataError) as err:
        import_csv(retailrocket, mapping)
    assert err.value.column == "visitor"
    assert "visitorid" in str(err.value)  # the available columns are listed
    with pytest.raises(ConfigError, match="event"):
        import_csv(retailrocket, {"user_id": "visitorid", "item_id": "itemid", "ts": "timestamp"})
    with pytest.raises(ConfigError, match="ts_unit"):
        import_csv(retailrocket, RETAILROCKET_MAPPING, ts_unit="minutes")
    with pytest.raises(DataError, match="epoch"):
        bad = tmp_path / "bad.csv"
        bad.write_text("t,u,i,e\nyesterday,u1,i1,view\n")
        import_csv(bad, {"user_id": "u", "item_id": "i", "ts": "t", "event": "e"}, ts_unit="s")


def test_parse_mapping() -> None:
    assert parse_mapping(["user_id=visitorid", "item_id = itemid", "event==view"]) == {
        "user_id": "visitorid",
        "item_id": "itemid",
        "event": "=view",
    }
    for bad in (["user_id"], ["=x"], ["user_id="], ["colour=c"], ["ts=a", "ts=b"]):
        with pytest.raises(ConfigError):
            parse_mapping(bad)
    assert parse_mapping(["title=name"], allowed=["item_id", "title"]) == {"title": "name"}


# --- real datasets -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not ML100K.exists(), reason="../shared/data/ml-100k not present")
def test_real_ml100k() -> None:
    ds = import_movielens(ML100K)
    assert ds.events.height == 100_000
    assert ds.events.get_column("user_id").n_unique() == 943
    assert ds.items.height == 1_682
    assert ds.events.get_column("item_id").n_unique() == 1_682
    assert ds.users.height == 943
    assert ds.users.get_column("region").null_count() == 0
    assert ds.users.filter(pl.col("region") == "other").height == 18  # Canadian postal codes
    assert ds.items.get_column("tags").explode().drop_nulls().n_unique() == 19
    counts = dict(ds.events.group_by("value").len().iter_rows())
    assert counts == {1.0: 6110, 2.0: 11370, 3.0: 27145, 4.0: 34174, 5.0: 21201}
    assert ds.items.get_column("created_at").null_count() == 1  # item 267, no release date


@pytest.mark.slow
@pytest.mark.skipif(
    not MAGAZINES.exists(), reason="../shared/data/amazon2018_magazine_subscriptions not present"
)
def test_real_amazon_magazines() -> None:
    ds = import_amazon(MAGAZINES)
    assert ds.events.height == 2_375 - 42  # exact duplicate review lines removed
    assert ds.events.get_column("user_id").n_unique() == 348
    reviewed = ds.events.get_column("item_id").unique()
    assert reviewed.len() == 157
    assert ds.items.height == 2_320 + 6  # unique meta asins + reviewed items without meta
    covered = ds.items.filter(
        pl.col("item_id").is_in(reviewed.implode()) & pl.col("brand").is_not_null()
    )
    assert covered.height >= 140
    assert covered.get_column("description").is_not_null().sum() >= 140
    assert covered.get_column("category").is_not_null().sum() >= 140
    titles = ds.items.get_column("title").drop_nulls()
    assert not titles.str.contains("<span").any()
    assert "42 exact duplicate review lines removed" in _notes(ds)
    assert "1,065 metadata rows repeat an earlier asin" in _notes(ds)
