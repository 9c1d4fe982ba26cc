"""A persistent translation cache in SQLite: every finished batch is committed, so a killed run loses at most the
batch in flight, and a re-run translates only what is missing. The primary key makes duplicates impossible.

Damage never reaches a translation: a file SQLite cannot read is set aside and replaced by an empty cache, and an
entry whose translation is not UTF-8 text is ignored, so that its text is translated again and the entry replaced;
both with a `TranslationCacheWarning`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import warnings
from pathlib import Path


class TranslationCacheWarning(UserWarning):
    """Part or all of the translation cache was unreadable and is translated again."""


class TranslationCache:
    def __init__(self, path: str | Path, model: str, source: str, target: str, settings: dict) -> None:
        """Entries are keyed by (model, source, target, generation settings) and the text itself. The file (and its
        folder) is made with the first stored translation: a run that fails before it leaves nothing behind."""
        self.path = Path(path)
        identity = json.dumps([model, source, target, settings], sort_keys=True)
        self.namespace = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self._connection: sqlite3.Connection | None = None

    @property
    def connection(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = self._connect()
        return self._connection

    def _connect(self) -> sqlite3.Connection:
        # Processes of a sharded run write to one file: wait for another's transaction rather than fail.
        connection = sqlite3.connect(self.path, timeout=60)
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
            warnings.warn(
                f"Translation cache {self.path} is unreadable ({error}); moved to {damaged}, starting afresh.",
                TranslationCacheWarning,
                stacklevel=3,
            )
            return self._connect()
        return connection

    def lookup(self, texts: list[str]) -> dict[str, str]:
        """The cached translations of `texts`; entries that are not UTF-8 text are left out, with a warning."""
        found, damaged = {}, 0
        if self._connection is None and not self.path.exists():
            return found
        for start in range(0, len(texts), 500):  # SQLite limits the number of bound parameters
            chunk = texts[start : start + 500]
            marks = ",".join("?" * len(chunk))
            # Read as bytes with the stored type: one undecodable entry would otherwise fail the whole query.
            rows = self.connection.execute(
                "SELECT source, typeof(translation), CAST(translation AS BLOB) FROM translations "
                f"WHERE namespace = ? AND source IN ({marks})",
                [self.namespace, *chunk],
            )
            for source, stored_type, raw in rows:
                translation = _text(stored_type, raw)
                if translation is None:
                    damaged += 1
                else:
                    found[source] = translation
        if damaged:
            warnings.warn(
                f"Translation cache {self.path}: {damaged} of {len(found) + damaged} cached entries for these texts "
                "are unreadable (not UTF-8 text); they are skipped and translated again.",
                TranslationCacheWarning,
                stacklevel=3,
            )
        return found

    def store(self, translations: dict[str, str]) -> None:
        with self.connection:  # one transaction per batch: all of it is stored, or none
            self.connection.executemany(
                # REPLACE: a translation made again for an unreadable entry takes that entry's place.
                "INSERT OR REPLACE INTO translations (namespace, source, translation) VALUES (?, ?, ?)",
                [(self.namespace, source, target) for source, target in translations.items()],
            )

    def __len__(self) -> int:
        if self._connection is None and not self.path.exists():
            return 0
        query = "SELECT count(*) FROM translations WHERE namespace = ?"
        return self.connection.execute(query, [self.namespace]).fetchone()[0]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _text(stored_type: str, raw: bytes | None) -> str | None:
    if stored_type != "text" or raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
