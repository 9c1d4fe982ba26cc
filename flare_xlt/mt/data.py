"""Translating task splits and record files into the record format the tasks module loads.

translate-train: English train/validation -> target language (QA answers projected into the translation).
translate-test: target-language test -> English. Ids are kept on every record, so pairing is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import write_text_atomic
from ..tasks import XNLI, TaskSpec, load_record_file, load_task_splits, read_rows
from ..tasks.sources import load_xnli_translated_train
from .languages import nllb_code
from .projection import project_qa_records
from .states import EncoderStateStore, encoder_states
from .translator import TranslationReport, Translator


def translate_splits(
    task: TaskSpec, splits: dict[str, list[dict]], translator: Translator, source: str, target: str
) -> tuple[dict[str, list[dict]], dict]:
    """Translate every split; identical strings are translated once across fields and splits.

    translate-train (into a target language): QA records with answers go through mark-then-translate projection;
    records that cannot be projected are left out and counted in the report with their ids, never shifted silently.
    translate-test (into the task's source language, English): every record is kept, without answers, which would
    point into the other language's context; FLARE reads only the English text at test time.
    """
    report: dict = {"task": task.name, "source": source, "target": target, "splits": {}}
    translate_test = target == task.source_language
    projected_splits = {
        name: records for name, records in splits.items() if not translate_test and _has_answers(task, records)
    }
    plain_splits = {name: records for name, records in splits.items() if name not in projected_splits}

    texts = [record[name] for records in plain_splits.values() for record in records for name in task.text_fields]
    translations, translation_report = translator.translate(texts, source, target)
    report["translation"] = _report_dict(translation_report)
    report["mt"] = translation_settings(translator)
    translated_iter = iter(translations)
    output = {}
    for split, records in plain_splits.items():
        output[split] = [
            {
                **{key: value for key, value in record.items() if key != "answers"},
                "language": target,
                **{name: next(translated_iter) for name in task.text_fields},
            }
            for record in records
        ]
        report["splits"][split] = {"records": len(records)}

    for split, records in projected_splits.items():
        calls: list[TranslationReport] = []

        def translate(batch: list[str], calls=calls) -> list[str]:
            result, call_report = translator.translate(batch, source, target)
            calls.append(call_report)
            return result

        projected, failed, stats = project_qa_records(records, translate, target)
        output[split] = projected
        report["splits"][split] = {
            "records": len(records),
            "kept": len(projected),
            "dropped": len(failed),
            "dropped_ids": failed,
            "projection": stats.as_dict(),
            "translation": [_report_dict(call) for call in calls],
        }
    return {name: output[name] for name in splits}, report


def translation_settings(translator: Translator) -> dict:
    """What a report records of the MT that wrote it: the translator's options and its cache (an absolute path), so
    that text arriving later is translated the same way, reading the same cache (flare-xlt predict)."""
    cache = str(translator.cache_path.resolve()) if translator.cache_path is not None else None
    return {**translator.options, "cache": cache}


def _has_answers(task: TaskSpec, records: list[dict]) -> bool:
    return task.kind == "extractive_qa" and any(record.get("answers") for record in records)


def _report_dict(report: TranslationReport) -> dict:
    return {**vars(report), "summary": report.summary()}


def write_records(path: str | Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def output_name(task: TaskSpec, split: str, source: str, target: str) -> str:
    return f"{task.name}_{split}_{source}-{target}.jsonl"


def translate_task(
    task: TaskSpec,
    splits: list[str],
    source: str,
    target: str,
    translator: Translator,
    output: str | Path,
    data: str = "hub",
) -> dict:
    """Load `splits` in `source`, translate them into `target`, write one JSONL per split plus a report."""
    output = Path(output)
    translated, report = translate_splits(
        task, load_task_splits(task, source, splits, data), translator, source, target
    )
    if translator.shards.main:  # every process of a sharded run holds the whole result; one writes it
        for split, records in translated.items():
            write_records(output / output_name(task, split, source, target), records)
        name = f"{task.name}_report_{'-'.join(splits)}_{source}-{target}.json"  # one report per call: none overwritten
        write_text_atomic(output / name, json.dumps(report, indent=2) + "\n")
    return report


def write_dataset_translation(task: TaskSpec, source: str, target: str, output: str | Path, data: str = "hub") -> dict:
    """translate-train without MT: XNLI's own machine-translated train split in `target`, written where `translate_task`
    would write its translation, with a report that says where it came from."""
    if task is not XNLI or source != task.source_language:
        raise ValueError(
            f"Only XNLI ships translated training data (from English); got task {task.name!r} from {source!r}. "
            "Translate it instead (leave out --dataset_translation)."
        )
    records = load_xnli_translated_train(target, data)
    origin = "hub (facebook/xnli)" if data == "hub" else f"XNLI-MT-1.0 at {data}"
    report = {
        "task": task.name,
        "source": source,
        "target": target,
        "splits": {"train": {"records": len(records)}},
        "translation": {"summary": f"{len(records)} records of XNLI's own machine-translated train split, {origin}"},
    }
    output = Path(output)
    write_records(output / output_name(task, "train", source, target), records)
    write_text_atomic(output / f"{task.name}_report_train_{source}-{target}.json", json.dumps(report, indent=2) + "\n")
    return report


def translate_record_file(
    task: TaskSpec, path: str | Path, source: str, target: str, translator: Translator, output: str | Path
) -> dict:
    """A record file of `task` (JSONL/JSON/CSV/TSV with id and the task's fields) into `target`."""
    records = load_record_file(task, path, language=source)
    translated, report = translate_splits(task, {"file": records}, translator, source, target)
    if translator.shards.main:
        write_records(output, translated["file"])
    return report


def translate_fields(
    path: str | Path, fields: list[str], source: str, target: str, translator: Translator, output: str | Path
) -> dict:
    """Any JSONL/JSON/CSV/TSV file: the named fields translated, every other column kept, written as JSONL."""
    path = Path(path)
    rows = list(read_rows(path))
    for line, row in rows:
        missing = [name for name in fields if name not in row]
        if missing:
            raise ValueError(f"{path} line {line}: missing fields {missing}; present: {sorted(row)}.")
    texts = [str(row[name]) for _, row in rows for name in fields]
    translations, translation_report = translator.translate(texts, source, target)
    translated_iter = iter(translations)
    records = [{**row, "language": target, **{name: next(translated_iter) for name in fields}} for _, row in rows]
    if translator.shards.main:
        write_records(output, records)
    return {
        "source": source,
        "target": target,
        "records": len(records),
        "translation": _report_dict(translation_report),
    }


def template_texts(records: list[dict], template: str) -> list[tuple[str, str]]:
    """(id, text) per record: `template` filled with the record's fields."""
    texts = []
    for position, record in enumerate(records, start=1):
        if "id" not in record:
            raise ValueError(f"record {position}: no id.")
        try:
            texts.append((str(record["id"]), template.format(**record)))
        except KeyError as error:
            raise ValueError(
                f"record {position} ({record['id']}): the template needs field {error}; present: {sorted(record)}."
            ) from error
    return texts


def write_encoder_states(
    keyed_texts: list[tuple[str, str]],
    language: str,
    output: str | Path,
    translator: Translator,
    max_length: int = 256,
    batch_size: int = 32,
    shard_size: int = 1024,
    metadata: dict | None = None,
) -> EncoderStateStore:
    """FLARE-MT: the NLLB encoder states of each (key, text), stored by key (see TaskEncoder.state_texts)."""
    ids = [key for key, _ in keyed_texts]
    texts = [text for _, text in keyed_texts]
    states = encoder_states(translator.model, translator.tokenizer, texts, nllb_code(language), max_length, batch_size)
    metadata = {"model": translator.model_name, "language": language, **(metadata or {})}
    return EncoderStateStore.write(output, ids, states, shard_size=shard_size, metadata=metadata)
