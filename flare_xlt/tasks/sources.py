"""Loading one language view of a task split into one record schema.

A record is {"id", "language", <text fields>..., "label": int} for classification or
{"id", "language", "question", "context", "answers": {"text": [...], "answer_start": [...]}} for extractive QA.
Sources: the hub datasets, the original release files (XNLI-1.0 TSV, TyDiQA-GoldP v1.1 JSON, NusaX CSV), and
record files (JSONL/CSV/TSV) such as our own translations or a custom task's data.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from datasets import load_dataset

from .spec import NUSAX, TYDIQA, XNLI, TaskSpec

XNLI_HUB = "facebook/xnli"
TYDIQA_HUB = "google-research-datasets/tydiqa"
NUSAX_HUB = "indonlp/NusaX-senti"
# Where each built-in task's data comes from (`flare-xlt tasks`): --data hub (the default) or --data FOLDER.
DATA_SOURCES = {
    "xnli": f"hub {XNLI_HUB}, or --data the XNLI-1.0 folder (validation and test; XNLI's train set is MultiNLI)",
    "tydiqa": f"hub {TYDIQA_HUB} (secondary_task, i.e. GoldP), or --data the folder of tydiqa-goldp-v1.1-train.json "
    "and -dev.json; the validation split is the test set",
    "nusax": f"hub {NUSAX_HUB}, or --data NusaX's datasets/sentiment folder (<language name>/train, valid, test.csv)",
}
# TyDiQA ids start with the language's English name.
TYDIQA_ID_PREFIX = {
    "ar": "arabic",
    "bn": "bengali",
    "en": "english",
    "fi": "finnish",
    "id": "indonesian",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
}
# NusaX names its hub configs with 3-letter codes and its CSV folders with language names.
NUSAX_HUB_CONFIG = {"en": "eng", "id": "ind"}
NUSAX_FOLDER = {
    "ace": "acehnese",
    "ban": "balinese",
    "bbc": "toba_batak",
    "bjn": "banjarese",
    "bug": "buginese",
    "en": "english",
    "id": "indonesian",
    "jav": "javanese",
    "mad": "madurese",
    "min": "minangkabau",
    "nij": "ngaju",
    "sun": "sundanese",
}
NUSAX_CSV_SPLIT = {"train": "train", "validation": "valid", "test": "test"}


def load_hub_view(task: TaskSpec, language: str, split: str) -> list[dict]:
    """One language view of a split from the model hub (needs network access or a populated HF cache)."""
    task.check_language(language)
    if task is XNLI:
        rows = load_dataset(XNLI_HUB, language, split=split)
        # The hub's language configs are parallel row by row, so the row index is the pairing id.
        return [
            _classification_record(
                task,
                f"{split}-{index}",
                language,
                {"premise": row["premise"], "hypothesis": row["hypothesis"]},
                row["label"],
                f"{XNLI_HUB} {language} {split} row {index}",
            )
            for index, row in enumerate(rows)
        ]
    if task is TYDIQA:
        rows = load_dataset(TYDIQA_HUB, "secondary_task", split=split)
        prefix = TYDIQA_ID_PREFIX[language] + "-"
        return [
            _qa_record(row["id"], language, row["question"], row["context"], row["answers"])
            for row in rows
            if row["id"].startswith(prefix)
        ]
    if task is NUSAX:
        config = NUSAX_HUB_CONFIG.get(language, language)
        try:
            rows = load_dataset(NUSAX_HUB, config, split=split)
        except RuntimeError as error:
            if "script" not in str(error).lower():
                raise
            # datasets >= 4 refuses the repository's loading script; the hub keeps a parquet conversion.
            rows = load_dataset(NUSAX_HUB, config, split=split, revision="refs/convert/parquet")
        return [
            _classification_record(task, row["id"], language, {"text": row["text"]}, row["label"], "hub")
            for row in rows
        ]
    raise ValueError(f"Task {task.name!r} has no hub loader; give its data as record files (JSONL/CSV).")


# XNLI-MT-1.0 names contradiction "contradictory".
XNLI_MT_LABELS = {"contradictory": "contradiction"}


def load_xnli_translated_train(language: str, data: str) -> list[dict]:
    """XNLI's own machine-translated training set: MultiNLI's train split as the XNLI authors translated it into
    `language` (English: the original). From the hub's `train` split of the language's config (`data="hub"`), or from
    multinli/multinli.train.<language>.tsv of an XNLI-MT-1.0 release folder. Rows are parallel across languages, so
    the row index is the pairing id, as in `load_hub_view`."""
    XNLI.check_language(language)
    if data == "hub":
        return load_hub_view(XNLI, language, "train")
    file = Path(data) / "multinli" / f"multinli.train.{language}.tsv"
    with _open(file) as stream:
        rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
    _require_columns(file, rows, ("premise", "hypo", "label"))
    return [
        _classification_record(
            XNLI,
            f"train-{index}",
            language,
            {"premise": row["premise"], "hypothesis": row["hypo"]},
            XNLI_MT_LABELS.get(row["label"], row["label"]),
            f"{file} line {index + 2}",
        )
        for index, row in enumerate(rows)
    ]


def load_task_splits(task: TaskSpec, language: str, splits: list[str], data: str) -> dict[str, list[dict]]:
    """Records of `splits` (roles: train/validation/test) from the hub (`data="hub"`) or the original release files."""
    loaded = {}
    for split in splits:
        dataset_split = task.splits[split] if split in task.splits else split
        if data == "hub":
            loaded[split] = load_hub_view(task, language, dataset_split)
        else:
            loaded[split] = load_original_view(task, language, dataset_split, data)
    return loaded


def load_original_view(task: TaskSpec, language: str, split: str, path: str | Path) -> list[dict]:
    """One language view from the original release files.

    XNLI: the XNLI-1.0 folder (or its xnli.dev.tsv / xnli.test.tsv); ids are the pairIDs shared across languages.
    TyDiQA: the folder with tydiqa-goldp-v1.1-{train,dev}.json (or one of them).
    NusaX: the datasets/sentiment folder with <language name>/{train,valid,test}.csv.
    Custom tasks: a folder with <language>/<split>.jsonl (or .json, .csv, .tsv) record files.
    """
    task.check_language(language)
    path = Path(path)
    if task is XNLI:
        files = {"validation": "xnli.dev.tsv", "test": "xnli.test.tsv"}
        file = _release_file(path, files, split, "XNLI-1.0 (whose train set is MultiNLI)")
        with _open(file) as stream:
            rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
        _require_columns(file, rows, ("language", "gold_label", "sentence1", "sentence2", "pairID"))
        return [
            _classification_record(
                task,
                row["pairID"],
                language,
                {"premise": row["sentence1"], "hypothesis": row["sentence2"]},
                row["gold_label"],
                f"{file} line {line}",
            )
            for line, row in enumerate(rows, start=2)
            if row["language"] == language
        ]
    if task is TYDIQA:
        files = {"train": "tydiqa-goldp-v1.1-train.json", "validation": "tydiqa-goldp-v1.1-dev.json"}
        file = _release_file(path, files, split, "TyDiQA-GoldP")
        with _open(file) as stream:
            squad = json.load(stream)
        prefix = TYDIQA_ID_PREFIX[language] + "-"
        return [
            _qa_record(
                qa["id"],
                language,
                qa["question"],
                paragraph["context"],
                {
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [a["answer_start"] for a in qa["answers"]],
                },
            )
            for article in squad["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
            if qa["id"].startswith(prefix)
        ]
    if task is NUSAX:
        if split not in NUSAX_CSV_SPLIT:
            raise ValueError(f"NusaX ships the splits {list(NUSAX_CSV_SPLIT)}; got {split!r}.")
        file = path / NUSAX_FOLDER[language] / f"{NUSAX_CSV_SPLIT[split]}.csv"
        with _open(file) as stream:
            rows = list(csv.DictReader(stream))
        _require_columns(file, rows, ("id", "text", "label"))
        return [
            _classification_record(
                task, row["id"], language, {"text": row["text"]}, row["label"], f"{file} line {line}"
            )
            for line, row in enumerate(rows, start=2)
        ]
    return _load_record_folder_view(task, language, split, path)


RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def _load_record_folder_view(task: TaskSpec, language: str, split: str, folder: Path) -> list[dict]:
    """A custom task's data: <folder>/<language>/<split>.jsonl (or .json, .csv, .tsv), one record file per split."""
    candidates = [folder / language / f"{split}{suffix}" for suffix in RECORD_SUFFIXES]
    found = [path for path in candidates if path.is_file()]
    if len(found) != 1:
        problem = "none of" if not found else "more than one of"
        raise FileNotFoundError(
            f"Task {task.name!r} reads its {language} {split} split from a record file, but {problem} "
            f"{[str(path) for path in candidates]} exists; give exactly one."
        )
    return load_record_file(task, found[0], language)


def load_record_file(task: TaskSpec, path: str | Path, language: str | None = None) -> list[dict]:
    """Records from JSONL, JSON (a list), CSV or TSV with an `id` column and the task's fields.

    Classification labels may be ids or label names. QA answers are a JSON object (JSONL/JSON) or the columns
    answer_text and answer_start (CSV/TSV, one answer).
    """
    path = Path(path)
    rows = list(read_rows(path))
    records = []
    for line, row in rows:
        where = f"{path} line {line}"
        missing = [name for name in ("id", *task.text_fields) if name not in row]
        if missing:
            raise ValueError(
                f"{where}: missing fields {missing}; the task {task.name!r} needs {['id', *task.text_fields]}."
            )
        row_language = row.get("language", language)
        if row_language is None:
            raise ValueError(f"{where}: no language column and no language given for {path}.")
        if language is not None and row_language != language:
            raise ValueError(f"{where}: language {row_language!r} differs from the expected {language!r}.")
        task.check_language(row_language)
        fields = {name: row[name] for name in task.text_fields}
        if task.kind == "classification":
            if "label" not in row:
                raise ValueError(f"{where}: missing field 'label'.")
            records.append(_classification_record(task, row["id"], row_language, fields, row["label"], where))
        else:
            answers = row.get("answers")
            if answers is None and "answer_text" in row:
                answers = {"text": [row["answer_text"]], "answer_start": [int(row["answer_start"])]}
            records.append(_qa_record(row["id"], row_language, fields["question"], fields["context"], answers, where))
    return records


def read_rows(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, row) of a JSONL/JSON/CSV/TSV file; malformed lines raise ValueError naming the line."""
    with _open(path) as stream:
        if path.suffix in (".jsonl", ".csv", ".tsv"):
            yield from read_stream_rows(stream, path.suffix.lstrip("."), str(path))
        elif path.suffix == ".json":
            try:
                rows = json.load(stream)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {error.lineno}: malformed JSON ({error.msg}).") from error
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON list of records.")
            yield from ((index + 1, row) for index, row in enumerate(rows))
        else:
            raise ValueError(f"{path}: unsupported record file type {path.suffix!r}; valid: .jsonl, .json, .csv, .tsv.")


def read_stream_rows(stream: TextIO, kind: str, name: str) -> Iterator[tuple[int, dict]]:
    """(line number, row) of JSONL, CSV or TSV text (`kind`) as it is read, so that a pipe is read as it arrives;
    malformed lines raise ValueError naming `name` and the line. Blank JSONL lines are skipped."""
    if kind == "jsonl":
        for line, text in enumerate(stream, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{name} line {line}: malformed JSON ({error.msg}).") from error
            if not isinstance(row, dict):
                raise ValueError(f"{name} line {line}: expected a JSON object, got {type(row).__name__}.")
            yield line, row
        return
    reader = csv.DictReader(stream, delimiter="\t" if kind == "tsv" else ",", strict=True)
    header_width = None
    for row in reader:
        header_width = header_width or len(reader.fieldnames)
        if None in row or None in row.values():
            # DictReader puts extra values under the key None and fills missing ones with None.
            extra = len(row.get(None, []))
            missing = sum(value is None for key, value in row.items() if key is not None)
            raise ValueError(
                f"{name} line {reader.line_num}: {header_width + extra - missing} columns, expected "
                f"{header_width} ({', '.join(reader.fieldnames)})."
            )
        yield reader.line_num, row


def _release_file(path: Path, files: dict[str, str], split: str, release: str) -> Path:
    """The file of `split` in a release folder (or `path` itself when it names the file)."""
    if split not in files:
        raise ValueError(f"{release} ships the splits {list(files)}; got {split!r}.")
    return path / files[split] if path.is_dir() else path


def _open(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found.")
    return path.open(encoding="utf-8", newline="")


def _require_columns(file: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    present = set(rows[0]) if rows else set()
    missing = [column for column in columns if column not in present]
    if rows and missing:
        raise ValueError(f"{file}: missing columns {missing}; found {sorted(present)}.")


def _classification_record(task: TaskSpec, example_id, language: str, fields: dict, label, where: str) -> dict:
    return {"id": str(example_id), "language": language, **fields, "label": label_id(task, label, where)}


def label_id(task: TaskSpec, label, where: str) -> int:
    """A class id from an id or a label name; anything outside the label set is an error."""
    names = task.label_names
    if isinstance(label, str) and label.strip() in names:
        return names.index(label.strip())
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names):
        return label
    raise ValueError(
        f"{where}: label {label!r} is outside the label set of {task.name!r}: ids 0..{len(names) - 1} or {list(names)}."
    )


def _qa_record(example_id, language: str, question: str, context: str, answers, where: str = "") -> dict:
    record = {"id": str(example_id), "language": language, "question": question, "context": context}
    if answers is not None:
        texts, starts = list(answers["text"]), [int(start) for start in answers["answer_start"]]
        for text, start in zip(texts, starts, strict=True):
            if context[start : start + len(text)] != text:
                raise ValueError(
                    f"{where or example_id}: answer {text!r} is not at answer_start {start} of its context "
                    f"(found {context[start : start + len(text)]!r})."
                )
        record["answers"] = {"text": texts, "answer_start": starts}
    return record
