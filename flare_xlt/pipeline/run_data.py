"""The data a run reads: the model and tokenizer, the target-language pairs, translation files and FLARE-MT
state stores, each checked before training."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import set_seed

from ..mt.data import output_name
from ..mt.states import EncoderStateStore
from ..tasks import PairedCollator, TaskEncoder, TaskSpec, load_record_file, load_task_splits, pair_views
from .loading import check_max_length, load_model
from .phases import phase
from .settings import TrainConfig


@phase("load")
def load(
    model: str, task: TaskSpec, architecture: str, load_in_4bit: bool, train: TrainConfig, pooling: str | None = None
):
    """The model of a run, seeded by its training seed, with its (resolved) classification pooling."""
    set_seed(train.seed)
    loaded = load_model(model, task, architecture, load_in_4bit, pooling)
    check_max_length(loaded, train.max_length)
    if torch.cuda.is_available() and not load_in_4bit:  # 4-bit weights are placed on the GPU when loaded
        # Evaluation-only methods (zero-shot, translate-test) never pass through the Trainer, which moves models.
        loaded.model.to("cuda")
    return loaded


def self_pairs(task: TaskSpec, records: list[dict]) -> list[dict]:
    """English-only data as pairs whose two views are the same records (stage 1 reads the target view)."""
    return pair_views(task, records, records)


def target_pairs(
    task: TaskSpec, language: str, role: str, data: str, translated: Path | None, limit: int | None
) -> list[dict]:
    """The first `limit` records of a target-language split, paired with their translation into the source
    language where the method reads it (`translated`), or with themselves."""
    records = load_task_splits(task, language, [role], data)[role]
    if translated is None:
        return self_pairs(task, records)[:limit]
    return pair_views(task, records, load_record_file(task, translated))[:limit]


def translation_file(translations: Path, task: TaskSpec, role: str, source: str, target: str) -> Path:
    """A translated file this run reads; a missing one is named with the command that writes it."""
    path = translations / output_name(task, role, source, target)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. Write it with: flare-xlt translate --task {task.name} --src {source} --tgt {target} "
            f"--splits '[{role}]' --output {translations}"
        )
    return path


def check_states(store: EncoderStateStore, reader: TaskEncoder, pairs: list[dict]) -> list[str]:
    """The store must hold states of the text this run's model reads (its prompts, its QA windows), one per
    feature; checked before training rather than at its first batch, or, for the test set, after it. Returns the
    state key of each feature, in the order of `reader.encode(pairs)`."""
    expected, recorded = reader.state_signature(), store.metadata.get("reader")
    if recorded != expected:
        raise ValueError(
            f"The encoder state store {store.directory} holds states of the text {recorded or 'of a plain template'}"
            f" reads, but this run reads text as {expected}. FLARE-MT states must cover what the model reads: write "
            f"them with flare-xlt mt-states --task {reader.task.name} --reader <this model> --reader_max_length "
            f"{reader.max_length}."
        )
    keys = [key for key, _ in reader.state_texts(pairs)]
    missing = [key for key in keys if key not in store]
    if missing:
        raise ValueError(
            f"The encoder state store {store.directory} lacks {len(missing)} of {len(keys)} features (first: "
            f"{missing[:5]}); write it from the same records with flare-xlt mt-states."
        )
    return keys


def with_mt_states(collator: PairedCollator, store: EncoderStateStore):
    def collate(features: list[dict]) -> dict:
        batch = collator(features)
        batch["source_embeds"], batch["source_attention_mask"] = store.batch([f["state_key"] for f in features])
        return batch

    return collate


def check_validation_role(task: TaskSpec) -> None:
    if task.splits["validation"] == task.splits["test"]:
        raise ValueError(
            f"{task.name} uses its {task.splits['test']!r} split as the test set, so it has no separate validation "
            "set to select on; turn select_best_on_validation off (the paper does not select for it either)."
        )
