"""A persistent translation cache in SQLite: every finished batch is committed, so a killed run loses at most the
batch in flight, and a re-run translates only what is missing. The primary key makes duplicates impossible."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path

logger = logging.getLogger(__name__)


class TranslationCache:
    def __init__(self, path: str | Path, model: str, source: str, target: str, settings: dict) -> None:
        """Entries are keyed by (model, source, target, generation settings) and the text itself."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        identity = json.dumps([model, source, target, settings], sort_keys=True)
        self.namespace = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.connection = self._connect()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path)
        try:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS translations (namespace TEXT NOT NULL, source TEXT NOT NULL, "
                "translation TEXT NOT NULL, PRIMARY KEY (namespace, source))"
            )
            connection.execute("SELECT count(*) FROM translations").fetchone()
        except sqlite3.DatabaseError as error:
            # A damaged file must not stop the run or poison results: set it aside and start an empty cache.
            connection.close()
            damaged = self.path.with_suffix(self.path.suffix + ".corrupt")
            self.path.replace(damaged)
            logger.warning(
                "Translation cache %s is unreadable (%s); moved to %s, starting afresh.", self.path, error, damaged
            )
            return self._connect()
        return connection

    def lookup(self, texts: list[str]) -> dict[str, str]:
        found = {}
        for start in range(0, len(texts), 500):  # SQLite limits the number of bound parameters
            chunk = texts[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.connection.execute(
                f"SELECT source, translation FROM translations WHERE namespace = ? AND source IN ({marks})",
                [self.namespace, *chunk],
            )
            found.update(rows.fetchall())
        return found

    def store(self, translations: dict[str, str]) -> None:
        with self.connection:  # one transaction per batch: all of it is stored, or none
            self.connection.executemany(
                "INSERT OR IGNORE INTO translations (namespace, source, translation) VALUES (?, ?, ?)",
                [(self.namespace, source, target) for source, target in translations.items()],
            )

    def __len__(self) -> int:
        query = "SELECT count(*) FROM translations WHERE namespace = ?"
        return self.connection.execute(query, [self.namespace]).fetchone()[0]

    def close(self) -> None:
        self.connection.close()
