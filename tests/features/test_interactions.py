"""Id lookups: rows for known ids, -1 for unknown or missing ones, sorted or not."""

from __future__ import annotations

import polars as pl

from marketrec.features.interactions import IdVocab


def test_lookup_sorted_and_unsorted_vocabularies_agree() -> None:
    ids = ["u10", "u2", "a", "z9"]
    query = pl.Series(["z9", "nope", None, "a", "u2", "", "u10"], dtype=pl.String)
    want = {"z9": 3, "a": 0, "u2": 2, "u10": 1}
    sorted_vocab = IdVocab.from_series(pl.Series(ids))
    assert sorted_vocab.ids.to_list() == ["a", "u10", "u2", "z9"]
    expected = [want.get(q, -1) if q is not None else -1 for q in query.to_list()]
    assert sorted_vocab.lookup(query).tolist() == expected
    unsorted = IdVocab(pl.Series("id", ids))  # rows in the given order, joined instead
    assert unsorted.lookup(query).tolist() == [3, -1, -1, 2, 1, -1, 0]
    assert IdVocab.from_series(pl.Series([], dtype=pl.String)).lookup(query).tolist() == [-1] * 7
    nothing = pl.Series([], dtype=pl.String)
    assert sorted_vocab.lookup(nothing).tolist() == unsorted.lookup(nothing).tolist() == []


def test_lookup_of_few_and_many_ids_agree() -> None:
    vocab = IdVocab.from_series(pl.Series(["b", "a", "ab", "é", "z1"]))
    # "abc" must not match "ab" (the bytes array is as wide as the longest known id)
    query = pl.Series(["ab", "a", "zz", None, "é", "", "b", "abc", "z1z"], dtype=pl.String)
    expected = [1, 0, -1, -1, 4, -1, 2, -1, -1]
    assert vocab.lookup(query).tolist() == expected  # few ids: NumPy bytes search
    assert vocab.lookup(pl.concat([query] * 20)).tolist() == expected * 20  # polars
