"""The flare-xlt command line: typed function signatures are the CLI (jsonargparse), YAML configs via --config."""

from __future__ import annotations

import json
from pathlib import Path

from jsonargparse import CLI

from .mt.data import translate_record_file, translate_task
from .mt.translator import DEFAULT_MT_MODEL, GenerationSettings, Translator
from .tasks import get_task


def translate(
    task: str,
    tgt: str,
    src: str = "en",
    splits: list[str] | None = None,
    input: Path | None = None,
    data: str = "hub",
    output: Path = Path("translations"),
    model: str = DEFAULT_MT_MODEL,
    num_beams: int = 4,
    max_input_length: int = 256,
    max_new_tokens: int = 256,
    tokens_per_batch: int = 8192,
    cache: Path | None = None,
    dtype: str = "auto",
    device: str = "auto",
) -> None:
    """Translate a task's splits or a record file with NLLB; re-running the same command resumes from the cache.

    Args:
        task: A built-in task (xnli, tydiqa, nusax) or a task spec file (.yaml/.json).
        tgt: Target language (task code such as sw, or an NLLB code such as swh_Latn).
        src: Source language of the data.
        splits: Split roles to translate (train, validation, test). Default: train and validation.
        input: A record file (JSONL/JSON/CSV/TSV with id and the task's fields) to translate instead of task splits.
        data: Where task splits come from: "hub", or a folder with the original release files.
        output: Folder for the translated JSONL files and the report (a file path when --input is given).
        model: NLLB checkpoint name or local path (nllb-200-distilled-600M, -1.3B, nllb-200-3.3B, ...).
        num_beams: Beam size.
        max_input_length: Input tokens kept per text; longer texts are cut and counted.
        max_new_tokens: Most tokens generated per text.
        tokens_per_batch: Token budget of a batch (texts are batched in length order).
        cache: SQLite translation cache; default: <output folder>/translation_cache.sqlite.
        dtype: auto, float32, float16 or bfloat16.
        device: auto, cpu, cuda, cuda:1, ...
    """
    task_spec = get_task(task)
    task_spec.check_language(src)
    folder = output.parent if input is not None else output
    translator = Translator(
        model,
        GenerationSettings(num_beams, max_input_length, max_new_tokens),
        tokens_per_batch=tokens_per_batch,
        cache=cache or folder / "translation_cache.sqlite",
        device=device,
        dtype=dtype,
    )
    if input is not None:
        report = translate_record_file(task_spec, input, src, tgt, translator, output)
    else:
        report = translate_task(task_spec, splits or ["train", "validation"], src, tgt, translator, output, data)
    print(json.dumps(_summary(report), indent=2, ensure_ascii=False))


def _summary(report: dict) -> dict:
    return {key: value for key, value in report.items() if key != "translation"} | {
        "translation": report.get("translation", {}).get("summary")
    }


def main() -> None:
    CLI({"translate": translate}, as_positional=False)


if __name__ == "__main__":
    main()
