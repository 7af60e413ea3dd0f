"""The SQLite result cache: keys, TTL, persistence, WAL mode, a corrupt file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from services.search_proxy.backends import Hit
from services.search_proxy.cache import CACHE_FILE, ResultCache, normalize_query

HITS = [
    Hit("p1", "Lima", "Lima is the capital of Peru.", 1.5),
    Hit("u", "Web", "snippet", 0.5, url="https://x.org"),
]


def test_normalize_query():
    assert normalize_query("  Who   WROTE\tHamlet? ") == "who wrote hamlet?"
    assert normalize_query("ｆｕｌｌ　width") == "full width"  # NFKC folds full-width letters and spaces


def test_round_trip_and_key_parts(tmp_path: Path):
    cache = ResultCache(tmp_path)
    cache.put_many("bm25:abc", 3, {"capital of peru": HITS, "empty": []})
    assert cache.get_many("bm25:abc", ["capital of peru", "empty", "unknown"], 3) == {
        "capital of peru": HITS,
        "empty": [],
    }
    assert cache.get_many("bm25:abc", ["capital of peru"], 5) == {}  # other top_k
    assert cache.get_many("bm25:other", ["capital of peru"], 3) == {}  # other backend / corpus / options
    cache.put_many("bm25:abc", 3, {"capital of peru": HITS[:1]})  # replaced, not duplicated
    assert cache.get_many("bm25:abc", ["capital of peru"], 3) == {"capital of peru": HITS[:1]}
    assert len(cache) == 2
    cache.close()


def test_ttl(tmp_path: Path):
    cache = ResultCache(tmp_path)
    cache.put_many("serper:x", 3, {"q": HITS})
    assert cache.get_many("serper:x", ["q"], 3, max_age_s=60) == {"q": HITS}
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:  # age the row by two minutes
        db.execute("UPDATE results SET created_at = ?", (time.time() - 120,))
    assert cache.get_many("serper:x", ["q"], 3, max_age_s=60) == {}
    assert cache.get_many("serper:x", ["q"], 3, max_age_s=0) == {"q": HITS}  # 0 = never expires


def test_survives_reopening_and_uses_wal(tmp_path: Path):
    cache = ResultCache(tmp_path)
    cache.put_many("bm25:abc", 3, {f"q{i}": HITS for i in range(600)})  # more than one SELECT chunk
    cache.close()
    again = ResultCache(tmp_path)
    assert len(again.get_many("bm25:abc", [f"q{i}" for i in range(600)], 3)) == 600
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path):
    (tmp_path / CACHE_FILE).write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match=f"result cache {tmp_path / CACHE_FILE} cannot be opened as SQLite"):
        ResultCache(tmp_path)
