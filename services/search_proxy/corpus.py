"""Passage corpora in JSON lines: reading, Search-R1's `contents` layout, and a fingerprint for caches.

A line is either `{"id", "contents"}` with contents = '"Title"\\ntext' (Search-R1's layout) or
`{"id", "title", "text"}`; extra keys are ignored, except an optional `url`. Files are `.jsonl` or `.jsonl.gz`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CORPUS_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrievable passage."""

    id: str
    title: str
    text: str
    url: str | None = None

    @property
    def contents(self) -> str:
        """Search-R1's layout: the title in double quotes on the first line, then the text."""
        return search_r1_contents(self.title, self.text)


def search_r1_contents(title: str, text: str) -> str:
    """Search-R1's `contents`: '"Title"\\ntext', the title line there even when the title is empty.

    Search-R1's corpora (wiki-18, ../shared/data's) always have that line (`""` when untitled), and its
    client takes the first line as the title: without the line, the text's first line would become the title.
    """
    return f'"{title}"\n{text}'


def split_contents(contents: str) -> tuple[str, str]:
    """(title, text) from Search-R1's '"Title"\\ntext'; without a newline the whole string is the text."""
    first, newline, rest = contents.partition("\n")
    if not newline:
        return "", contents
    title = first.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, rest


def _lines(path: Path) -> Iterator[str]:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            yield from handle
    else:
        with path.open(encoding="utf-8") as handle:
            yield from handle


def _passage(record: object, where: str) -> Passage:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    pid = record.get("id")
    if isinstance(pid, bool) or not isinstance(pid, str | int):
        raise ValueError(f"{where}: 'id' must be a string or an integer, got {pid!r}")
    url = record.get("url")
    if url is not None and not isinstance(url, str):
        raise ValueError(f"{where}: 'url' must be a string, got {url!r}")
    title, text = record.get("title"), record.get("text")
    if isinstance(text, str):
        if title is not None and not isinstance(title, str):
            raise ValueError(f"{where}: 'title' must be a string, got {title!r}")
        return Passage(str(pid), title or "", text, url)
    contents = record.get("contents")
    if isinstance(contents, str):
        title, text = split_contents(contents)
        return Passage(str(pid), title, text, url)
    raise ValueError(
        f"{where}: needs a string 'contents' (Search-R1 layout '\"Title\"\\ntext') or a string 'text' "
        f"(with an optional 'title'); found keys {sorted(record)}"
    )


def read_corpus(path: str | Path) -> list[Passage]:
    """All passages of a `.jsonl` / `.jsonl.gz` file; a bad line is a ValueError naming file and line."""
    path = Path(path)
    if not path.name.endswith(CORPUS_SUFFIXES):
        raise ValueError(f"corpus {path}: unsupported file type; accepted: {', '.join(CORPUS_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"corpus {path} does not exist (relative paths are resolved against {Path.cwd()})")
    passages: list[Passage] = []
    first_line_of: dict[str, int] = {}
    lineno = 0
    try:
        for lineno, line in enumerate(_lines(path), start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            passage = _passage(record, where)
            if passage.id in first_line_of:
                raise ValueError(
                    f"{where}: duplicate id {passage.id!r} (first seen on line {first_line_of[passage.id]})"
                )
            first_line_of[passage.id] = lineno
            passages.append(passage)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"corpus {path}: not a readable gzip file after line {lineno} ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"corpus {path}:{lineno + 1}: not UTF-8 text ({exc.reason})") from None
    if not passages:
        raise ValueError(f"corpus {path} holds no passages")
    return passages


def corpus_fingerprint(path: str | Path) -> str:
    """A short key that changes when the corpus file does: its absolute path, size and modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    return hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
