"""The result cache: SQLite (WAL) rows keyed by (backend cache key, normalised query, top_k).

The backend part of the key is the backend's `cache_key` (name + a hash of its corpus and scoring
options), so changing the corpus or BM25's k1 never serves stale answers. Each write is one transaction,
so a crash loses at most the batch in flight, never earlier rows. Blocking: the proxy calls it from one
worker thread; a lock makes it safe from others too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import unicodedata
from pathlib import Path

from services.search_proxy.backends import Hit

CACHE_FILE = "results.sqlite"


def normalize_query(query: str) -> str:
    """The cache's view of a query: Unicode NFKC, lower case, runs of whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", query).lower().split())


class ResultCache:
    """Persistent (backend, query, top_k) -> hits store."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS results (backend TEXT NOT NULL, query TEXT NOT NULL, "
                "top_k INTEGER NOT NULL, hits TEXT NOT NULL, created_at REAL NOT NULL, "
                "PRIMARY KEY (backend, query, top_k)) WITHOUT ROWID"
            )
        except sqlite3.DatabaseError as exc:
            raise ValueError(
                f"result cache {self.path} cannot be opened as SQLite ({exc}); move it away"
            ) from None

    def get_many(
        self, backend: str, queries: list[str], top_k: int, *, max_age_s: float = 0.0
    ) -> dict[str, list[Hit]]:
        """Cached hits of those queries that have them (younger than max_age_s when it is > 0)."""
        oldest = time.time() - max_age_s if max_age_s > 0 else float("-inf")
        found: dict[str, list[Hit]] = {}
        unique = list(dict.fromkeys(queries))
        with self._lock:
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start : start + 500]
                rows = self._db.execute(
                    f"SELECT query, hits, created_at FROM results WHERE backend = ? AND top_k = ? "
                    f"AND query IN ({','.join('?' * len(chunk))})",
                    (backend, top_k, *chunk),
                ).fetchall()
                for query, hits, created_at in rows:
                    if created_at >= oldest:
                        found[query] = [Hit(**h) for h in json.loads(hits)]
        return found

    def missing(self, backend: str, queries: list[str], top_k: int) -> list[str]:
        """Those queries (in order, once each) with no cached hits at any age; reads keys only, not hits."""
        unique = list(dict.fromkeys(queries))
        present: set[str] = set()
        with self._lock:
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start : start + 500]
                rows = self._db.execute(
                    f"SELECT query FROM results WHERE backend = ? AND top_k = ? "
                    f"AND query IN ({','.join('?' * len(chunk))})",
                    (backend, top_k, *chunk),
                ).fetchall()
                present.update(query for (query,) in rows)
        return [q for q in unique if q not in present]

    def put_many(self, backend: str, top_k: int, results: dict[str, list[Hit]]) -> None:
        """Store (replace) the hits of several queries in one transaction."""
        now = time.time()
        rows = [
            (backend, query, top_k, json.dumps([h.to_dict() for h in hits], ensure_ascii=False), now)
            for query, hits in results.items()
        ]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)", rows)
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
