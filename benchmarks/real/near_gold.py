"""How much of the target language's signal each training text carries, measured with frozen features only.

    python -m benchmarks.real.near_gold        # after bench-real has built bible-canon (about 4 CPU-minutes)

The linear probe (the frozen base multilingual-e5-small, mean-pooled, standardised, logistic regression: the
`linear-probe` method's head) fitted on each training text of bible-canon and scored on the test verses:

- English train -> English test: what the features give in the source language;
- English train -> target test: the zero-shot floor of the benchmark's tables;
- human target train -> target test: gold target training text;
- MT target train -> target test: the text translate-train methods read (Apertium for Spanish, the human translation
  with word errors elsewhere).

Where the MT text's probe matches the human text's, the benchmark's MT is near-gold training text: translate-train
already has what a method reading both languages could add. No transfer method runs here; the numbers describe the
task and its MT, not any method.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from flare_xlt.methods.linear_probe import probe_classifier, probe_features
from flare_xlt.tasks import load_record_file
from flare_xlt.tasks.spec import load_task_spec

from . import assets

BATCH = 64


def pooled_features(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """(N, D) mean-pooled final hidden states, in batches sorted by length (the order given back)."""
    order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
    rows = torch.empty(len(texts), model.config.hidden_size)
    for start in range(0, len(order), BATCH):
        indices = order[start : start + BATCH]
        batch = tokenizer([texts[i] for i in indices], padding=True, truncation=True, max_length=max_length)
        batch = {name: torch.tensor(values) for name, values in batch.items()}
        with torch.inference_mode():
            rows[indices] = probe_features(model, batch["input_ids"], batch["attention_mask"], "mean")
    return rows


def probe_scores(canon: Path, languages, max_length: int) -> list[dict]:
    """The probes of the module's docstring on bible-canon built in `canon` (its data/ and main/translations/):
    rows of (trained_on, scored_on, accuracy in [0, 1])."""
    from transformers import AutoModel, AutoTokenizer

    task = load_task_spec(canon / "task.yaml")
    translations = canon / "main" / "translations"

    def split(language: str, name: str) -> list[dict]:
        return load_record_file(task, canon / "data" / language / f"{name}.jsonl", language)

    english_train = split("en", "train")
    mt_train = {}  # checked before the model is loaded: a misaligned file fails before minutes of features
    for language in languages:
        mt_train[language] = load_record_file(task, translations / f"{task.name}_train_en-{language}.jsonl", language)
        if [record["id"] for record in mt_train[language]] != [record["id"] for record in english_train]:
            raise ValueError(f"The {language} MT training file does not hold the English training verses in order.")

    folder = assets.e5_folder()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def features(records: list[dict]) -> torch.Tensor:
        return pooled_features(model, tokenizer, [record["text"] for record in records], max_length)

    def labels(records: list[dict]) -> list[int]:
        return [record["label"] for record in records]

    def probe(train: list[dict]):
        return probe_classifier().fit(features(train).numpy(), labels(train))

    def row(trained_on: str, classifier, scored_on: str, test: list[dict]) -> dict:
        correct = (classifier.predict(features(test).numpy()) == labels(test)).mean()
        return {"trained_on": trained_on, "scored_on": scored_on, "accuracy": float(correct)}

    english = probe(english_train)
    rows = [row("English train", english, "English test", split("en", "test"))]
    for language in languages:
        test = split(language, "test")
        rows += [
            row("English train", english, f"{language} test", test),
            row(f"{language} human train", probe(split(language, "train")), f"{language} test", test),
            row(f"{language} MT train", probe(mt_train[language]), f"{language} test", test),
        ]
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| Probe trained on | Scored on | Accuracy (%) |", "| :--- | :--- | ---: |"]
    lines += [f"| {row['trained_on']} | {row['scored_on']} | {100 * row['accuracy']:.1f} |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    from .run import SIZES, workspace

    parser = argparse.ArgumentParser(prog="python -m benchmarks.real.near_gold", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    arguments = parser.parse_args(argv)
    size = SIZES[arguments.size]
    canon = workspace(arguments.size, size) / "canon"
    if not (canon / "task.yaml").is_file():
        raise SystemExit(f"{canon} has no built bible-canon: run `python -m benchmarks.real.run --grids canon` first.")
    table = markdown(probe_scores(canon, size.languages, size.train.max_length))
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
