"""Corpus files: both JSON-lines layouts, gzip, and bad lines named by file and line number."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from services.search_proxy.corpus import Passage, corpus_fingerprint, read_corpus, split_contents
from tests.services.conftest import TINY_PASSAGES, write_corpus


def test_both_layouts_give_the_same_passages(tmp_path: Path):
    plain = read_corpus(write_corpus(tmp_path / "a.jsonl"))
    searchr1 = read_corpus(write_corpus(tmp_path / "b.jsonl", layout="contents"))
    expected = [Passage(p["id"], p["title"], p["text"]) for p in TINY_PASSAGES]
    assert plain == expected
    assert searchr1 == expected
    assert (
        searchr1[1].contents == '"Lima"\nLima is the capital and largest city of Peru, on the Pacific coast.'
    )


def test_gzip_integer_ids_urls_and_blank_lines(tmp_path: Path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": 7, "contents": "no title line", "url": "https://x.org"}) + "\n\n")
        handle.write(json.dumps({"id": "8", "text": "only text"}) + "\n")
    assert read_corpus(path) == [
        Passage("7", "", "no title line", "https://x.org"),
        Passage("8", "", "only text"),
    ]


def test_split_contents():
    assert split_contents('"Title"\nbody\nmore') == ("Title", "body\nmore")
    assert split_contents("Title\nbody") == ("Title", "body")
    assert split_contents("just text") == ("", "just text")


def test_untitled_passages_keep_the_title_line():
    # Search-R1's corpora write '""' as an untitled passage's first line (a quarter of ../shared/data's
    # passages); its client reads the first line as the title, so the line must be there.
    assert Passage("8", "", "only text").contents == '""\nonly text'
    assert split_contents('""\nonly text') == ("", "only text")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"id": 1, "text": "a"}', "{not json"], r"bad.jsonl:2: not valid JSON"),
        (['{"id": 1, "text": "a"}', "[1, 2]"], r"bad.jsonl:2: expected a JSON object, got list"),
        (['{"text": "a"}'], r"bad.jsonl:1: 'id' must be a string or an integer, got None"),
        (
            ['{"id": 1, "body": "a"}'],
            r"bad.jsonl:1: needs a string 'contents' .* found keys \['body', 'id'\]",
        ),
        (['{"id": 1, "text": "a", "title": 3}'], r"bad.jsonl:1: 'title' must be a string"),
        (
            ['{"id": 1, "text": "a"}', "", '{"id": "1", "text": "b"}'],
            r"bad.jsonl:3: duplicate id '1' \(first seen on line 1\)",
        ),
        (["", "  "], r"holds no passages"),
    ],
)
def test_bad_lines_are_named(tmp_path: Path, lines: list[str], message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        read_corpus(path)


def test_bad_files(tmp_path: Path):
    with pytest.raises(ValueError, match=r"unsupported file type; accepted: .jsonl, .jsonl.gz"):
        read_corpus(tmp_path / "corpus.csv")
    with pytest.raises(ValueError, match="does not exist"):
        read_corpus(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_corpus(broken)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": 1, "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="not UTF-8"):
        read_corpus(latin)


def test_fingerprint_changes_with_the_file(tmp_path: Path):
    path = write_corpus(tmp_path / "a.jsonl")
    first = corpus_fingerprint(path)
    assert corpus_fingerprint(path) == first
    os.utime(path, ns=(1, 1))
    assert corpus_fingerprint(path) != first
