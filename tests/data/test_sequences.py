"""Item-sequence importer (S3-Rec format): tiny fixture files, the CLI, and the real Amazon Toys.

The real-data test pins the counts of ../shared/data/amazon-toys-s3rec/PROVENANCE.md and skips
when that folder is not present.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from marketrec.cli import main
from marketrec.core.errors import DataError
from marketrec.data.importers import import_sequences
from marketrec.data.importers.sequences import SEQUENCE_BASE_TIME
from marketrec.data.schema import load_dataset
from marketrec.data.split import split_leave_one_out

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TOYS = SHARED_DATA / "amazon-toys-s3rec"

SEQUENCES = "1 10 11 12\n2 12 10 13 14\n3 11 13 10\n"
ATTRIBUTES = {"10": [1, 2], "11": [1, 3], "12": [], "13": [4], "14": [2, 5], "15": [6]}


def write_fixture(folder: Path, *, attributes: bool = True, text: str = SEQUENCES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Tiny.txt").write_text(text)
    if attributes:
        (folder / "Tiny_item2attributes.json").write_text(json.dumps(ATTRIBUTES))
    return folder


def _notes(ds) -> str:
    return "\n".join(ds.notes)


def test_counts_and_event_mapping(tmp_path: Path) -> None:
    ds = import_sequences(write_fixture(tmp_path / "tiny"))
    assert ds.events.height == 10
    assert ds.events.get_column("user_id").n_unique() == 3
    assert ds.events.get_column("item_id").n_unique() == 5
    assert set(ds.events.get_column("event").to_list()) == {"purchase"}
    assert ds.events.get_column("value").null_count() == 10
    assert "no timestamps" in _notes(ds)
    assert "implicit positive" in _notes(ds)


def test_order_preserved_by_synthetic_time(tmp_path: Path) -> None:
    ds = import_sequences(write_fixture(tmp_path / "tiny"))
    user2 = ds.events.filter(user_id="2").sort("ts")
    assert user2.get_column("item_id").to_list() == ["12", "10", "13", "14"]
    assert user2.get_column("ts").to_list() == [
        SEQUENCE_BASE_TIME + timedelta(seconds=s) for s in range(4)
    ]
    # the file order is kept in the frame too, and the last event is the leave-one-out target
    assert ds.events.get_column("item_id").to_list()[:3] == ["10", "11", "12"]
    test = split_leave_one_out(ds).test.events
    assert dict(zip(test["user_id"], test["item_id"], strict=True)) == {
        "1": "12",
        "2": "14",
        "3": "10",
    }


def test_attributes_become_tags(tmp_path: Path) -> None:
    ds = import_sequences(write_fixture(tmp_path / "tiny"))
    tags = dict(zip(ds.items["item_id"], ds.items["tags"].to_list(), strict=True))
    assert tags["10"] == ["a1", "a2"]
    assert tags["12"] == []
    assert tags["15"] == ["a6"]  # attributes without interactions stay in the catalogue
    assert ds.items.height == 6
    assert ds.items.get_column("brand").null_count() == 6
    assert ds.items.get_column("category").null_count() == 6
    assert "anonymised" in _notes(ds)
    assert "1 items have attributes but no interaction" in _notes(ds)


def test_txt_file_and_no_attributes(tmp_path: Path) -> None:
    folder = write_fixture(tmp_path / "tiny")
    assert import_sequences(folder / "Tiny.txt").items.height == 6  # sibling attributes found
    bare = write_fixture(tmp_path / "bare", attributes=False)
    ds = import_sequences(bare)
    assert ds.items.height == 5
    assert ds.items.get_column("tags").null_count() == 5
    assert "items have no tags" in _notes(ds)


def test_whitespace_and_blank_lines(tmp_path: Path) -> None:
    ds = import_sequences(write_fixture(tmp_path / "ws", text="1  10\t11\r\n\n2 12\n   \n3\n"))
    assert ds.events.height == 3
    assert ds.events.filter(user_id="1").get_column("item_id").to_list() == ["10", "11"]
    assert "1 users without any item (first at line 5)" in _notes(ds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 10 11\n2 12 x13\n", "'x13' at line 2"),
        ("1 10 11\n\n2 12 1.5\n", "'1.5' at line 3"),
        ("u1 10 11\n", "'u1' at line 1"),
        ("1 10\n2 11\n1 12\n", "user ids on more than one line (first '1' at line 1)"),
        ("\n\n", "no sequences"),
    ],
)
def test_bad_sequences(tmp_path: Path, text: str, message: str) -> None:
    folder = write_fixture(tmp_path / "bad", attributes=False, text=text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_sequences(folder)


def test_missing_and_ambiguous_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        import_sequences(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no item-sequence file"):
        import_sequences(tmp_path / "empty")
    folder = write_fixture(tmp_path / "two", attributes=False)
    (folder / "Other.txt").write_text("1 2\n")
    with pytest.raises(DataError, match=r"several \.txt files"):
        import_sequences(folder)
    # an attributes file beside exactly one of them settles it
    (folder / "Tiny_item2attributes.json").write_text(json.dumps(ATTRIBUTES))
    assert import_sequences(folder).events.height == 10
    with pytest.raises(DataError, match="attributes file"):
        import_sequences(folder / "Tiny_item2attributes.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"10": [1, "b"]}', "first item '10'"),
        ('{"x": [1]}', "first item 'x'"),
        ('{"10": 3}', "first item '10'"),
    ],
)
def test_bad_attributes(tmp_path: Path, content: str, message: str) -> None:
    folder = write_fixture(tmp_path / "bad", attributes=False)
    (folder / "Tiny_item2attributes.json").write_text(content)
    with pytest.raises(DataError, match=message):
        import_sequences(folder)


def test_cli_import_sequences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_fixture(tmp_path / "tiny")
    assert main(["import", "sequences", str(src), str(tmp_path / "out")]) == 0
    ds = load_dataset(tmp_path / "out")
    assert ds.events.height == 10
    assert ds.items.height == 6
    assert main(["import", "sequences", str(tmp_path / "nowhere"), str(tmp_path / "x")]) != 0
    assert "not found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not TOYS.exists(), reason="../shared/data/amazon-toys-s3rec not present")
def test_real_amazon_toys() -> None:
    ds = import_sequences(TOYS)
    assert ds.events.height == 167_597
    assert ds.events.get_column("user_id").n_unique() == 19_412
    assert ds.events.get_column("item_id").n_unique() == 11_924
    assert ds.items.height == 11_924
    assert ds.items.get_column("tags").null_count() == 0
    first = ds.events.filter(user_id="1").sort("ts").get_column("item_id").to_list()
    assert first == ["1", "2", "3", "4", "5"]  # line 1 of Toys_and_Games.txt
    split = split_leave_one_out(ds)
    assert split.test.events.height == 19_412  # 5-core: every user has ≥ 5 events
    assert split.train.events.height == 167_597 - 19_412
