"""A persistent, crash-safe cache of model calls and computed features (SQLite, WAL mode).

Entries are keyed by ``(stage, model, key)`` where ``key`` is a hash of the question (and of
whatever else the result depends on). Each result is committed as soon as it arrives, so killing
the process at any moment loses at most the calls still in flight, and a rerun redoes none of
the finished ones.

Example:
    >>> from budget_forcing.selection.cache import Cache
    >>> cache = Cache(":memory:")
    >>> cache.put("attempt", "qwen", "abc", "42")
    >>> cache.get_many("attempt", "qwen", ["abc", "zzz"])
    {'abc': '42'}
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Cache"]


class Cache:
    """Key-value store of JSON values under ``(stage, model, key)``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS entries (stage TEXT NOT NULL, model TEXT NOT NULL, key TEXT NOT NULL, "
            "value TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (stage, model, key))"
        )
        self.conn.commit()

    def get_many(self, stage: str, model: str, keys: Sequence[str]) -> dict[str, Any]:
        """The cached values of those ``keys`` that have one."""
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT key, value FROM entries WHERE stage=? AND model=? AND key IN ({marks})",
                [stage, model, *chunk],
            )
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put(self, stage: str, model: str, key: str, value: Any) -> None:
        """Store one value and commit it."""
        self.put_many(stage, model, [(key, value)])

    def put_many(self, stage: str, model: str, items: Iterable[tuple[str, Any]]) -> None:
        """Store several values in one committed transaction."""
        now = time.time()
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                [(stage, model, k, json.dumps(v), now) for k, v in items],
            )

    def count(self, stage: str | None = None) -> int:
        """Number of entries (of one stage when given)."""
        if stage is None:
            return self.conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM entries WHERE stage=?", [stage]).fetchone()[0]

    def close(self) -> None:
        self.conn.close()
