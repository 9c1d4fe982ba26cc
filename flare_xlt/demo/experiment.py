"""`flare-xlt demo`: the whole cross-lingual workflow on the synthetic world, small enough for a CPU.

It writes the task as a custom task (a spec file and a folder of record files), the noisy translations in the layout
`flare-xlt translate` writes, and FLARE-MT states from a pretrained encoder, then runs the real recipe code: stage-1
English fine-tuning and every transfer method for each seed, and the report (table and plot).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import yaml
from transformers import AutoModel, AutoTokenizer

from ..io import write_text_atomic
from ..methods import REGISTRY
from ..methods.base import ARCHITECTURES
from ..mt.data import output_name, write_records
from ..mt.states import EncoderStateStore
from ..pipeline.loading import load_state_reader
from ..pipeline.recipe_file import Recipe
from ..pipeline.recipes import default_workers, run_recipe
from ..pipeline.settings import AdapterConfig, TrainConfig
from ..report import write_report
from ..tasks import TaskEncoder, TaskSpec, get_task, read_rows
from .pretrain import MODEL_TYPES, PretrainingConfig, pretrained_model
from .world import LABELS, Lexicon, Meaning, NoisyMT, realise_english, realise_tolan, sample_meaning

TARGET = "tol"
TASK_NAME = "tolan_sentiment"
# The registered methods that run on both the demo's models and need no MT states (those join when a setting writes
# the states).
TRANSFER_METHODS = tuple(
    name for name, method in REGISTRY.items() if method.architectures == ARCHITECTURES and not method.needs_mt_states
)
MT_STATE_METHODS = tuple(name for name, method in REGISTRY.items() if method.needs_mt_states)
ENCODER_EPOCH_FACTOR = 2
# Both models train their token embeddings with the LoRA (decoders also the LM head, as the authors' Llama runs do).
# The world's pretraining text puts every adjective and verb of one kind in the same contexts whatever its polarity,
# so pretraining cannot tell "good" from "bad" (their embeddings are as close as "good" and "great"), and a LoRA only
# transforms embeddings it cannot pull apart; the decoder's prompt tokens are also untrained. docs/demo.md, "Why
# both models train their embeddings".
TRAINABLE = "lora+head+embeddings"


@dataclass(frozen=True)
class DemoSizes:
    """Corpus, task and training sizes; the defaults fit the 5-minute CPU budget, tests shrink them."""

    pretraining: PretrainingConfig = field(default_factory=PretrainingConfig)
    train_examples: int = 1000
    test_examples: int = 600
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=5e-3, batch_size=32, epochs=5.0, max_length=128)
    )
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(r=8, lora_alpha=16.0, target_modules="all-linear")
    )

    def train_for(self, model_type: str) -> TrainConfig:
        """The encoder trains ENCODER_EPOCH_FACTOR times the decoder's epochs: its classification head reads the
        `<s>` state, which masked-LM pretraining never trains, so stage 1 must also teach `<s>` to gather the
        sentence (its loss is still falling after the decoder's 5 epochs; docs/demo.md)."""
        if model_type == "decoder":
            return self.train
        return replace(self.train, epochs=ENCODER_EPOCH_FACTOR * self.train.epochs)


# The demo's sizes by name: "full" is the measured benchmark (about 4 minutes on 2 cores), "tiny" tries the whole
# demo in well under a minute (a 500-sentence world, 48 training examples, one epoch): the same kind of table, scores
# that mean little.
DEMO_SIZES = {
    "full": DemoSizes(),
    "tiny": DemoSizes(
        pretraining=PretrainingConfig(
            english_sentences=500,
            target_resource=0.1,
            parallel_sentences=30,
            code_switched_sentences=30,
            vocab_size=300,
            hidden_size=32,
            layers=2,
            heads=2,
            batch_size=32,
        ),
        train_examples=48,
        test_examples=24,
        train=TrainConfig(learning_rate=5e-3, batch_size=16, epochs=1.0, max_length=128),
        adapter=AdapterConfig(r=4, lora_alpha=8.0, target_modules="all-linear"),
    ),
}


def demo_sizes(name: str) -> DemoSizes:
    if name not in DEMO_SIZES:
        raise ValueError(f"Unknown size {name!r}; valid choices: {', '.join(DEMO_SIZES)}.")
    return DEMO_SIZES[name]


@dataclass(frozen=True)
class DemoConfig:
    output: Path = Path("demo")
    model_type: str = "decoder"
    target_resource: float = 0.05
    mt_error_rate: float = 0.1  # both directions, unless one is given below
    flare_mt: bool = True
    seeds: tuple[int, ...] = (1, 2, 3)
    world_seed: int = 0
    sizes: DemoSizes = field(default_factory=DemoSizes)
    variants: dict[str, dict] = field(default_factory=dict)  # named method variants, as in a recipe
    mt_error_rate_train: float | None = None  # English -> Tolan: what the translate-train methods learn from
    mt_error_rate_test: float | None = None  # Tolan -> English: what translate-test and FLARE read at test time
    workers: int | None = None  # runs side by side; None: default_workers(DEMO_MOST_WORKERS)

    @property
    def train_error(self) -> float:
        return self.mt_error_rate if self.mt_error_rate_train is None else self.mt_error_rate_train

    @property
    def test_error(self) -> float:
        return self.mt_error_rate if self.mt_error_rate_test is None else self.mt_error_rate_test

    def __post_init__(self) -> None:
        for rate in (self.mt_error_rate, self.mt_error_rate_train, self.mt_error_rate_test):
            if rate is not None and not 0.0 <= rate <= 1.0:
                raise ValueError(f"MT error rates must lie in [0, 1], got {rate}.")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"Unknown model_type {self.model_type!r}; valid choices: {', '.join(MODEL_TYPES)}.")
        if not self.seeds:
            raise ValueError("Give at least one seed.")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1 (or unset: one per CPU core), got {self.workers}.")


def task_spec() -> dict:
    return {
        "name": TASK_NAME,
        "kind": "classification",
        "text_fields": ["text"],
        "languages": ["en", TARGET],
        "metric": "macro_f1",
        "label_names": list(LABELS),
        "encoder_template": "{text}",
        "decoder_template": "{text}\nSentiment:",
    }


def _records(meanings: list[Meaning], language: str, texts: list[str], split: str) -> list[dict]:
    return [
        {"id": f"{split}-{index}", "language": language, "text": text, "label": LABELS[meaning.label]}
        for index, (meaning, text) in enumerate(zip(meanings, texts, strict=True))
    ]


def write_task_data(config: DemoConfig, lexicon: Lexicon, folder: Path) -> TaskSpec:
    """The task spec, English train/test, the gold Tolan test, and both MT directions (train English -> Tolan for
    translate-train, test Tolan -> English for translate-test and FLARE's English side)."""
    # Task examples are drawn from their own stream, apart from the pretraining corpus's.
    rng = random.Random(f"task/{config.world_seed}")
    meanings = {
        "train": [sample_meaning(rng) for _ in range(config.sizes.train_examples)],
        "test": [sample_meaning(rng) for _ in range(config.sizes.test_examples)],
    }
    train_mt = NoisyMT(lexicon, config.train_error, seed=config.world_seed)
    test_mt = NoisyMT(lexicon, config.test_error, seed=config.world_seed)
    write_text_atomic(folder / "task.yaml", yaml.safe_dump(task_spec(), sort_keys=False))
    task = get_task(folder / "task.yaml")
    for split, split_meanings in meanings.items():
        english = [realise_english(meaning) for meaning in split_meanings]
        tolan = [realise_tolan(meaning, lexicon) for meaning in split_meanings]
        write_records(folder / "data" / "en" / f"{split}.jsonl", _records(split_meanings, "en", english, split))
        write_records(folder / "data" / TARGET / f"{split}.jsonl", _records(split_meanings, TARGET, tolan, split))
    translations = folder / "translations"
    train_tolan = [train_mt.translate(m, TARGET, f"train-{i}") for i, m in enumerate(meanings["train"])]
    test_english = [test_mt.translate(m, "en", f"test-{i}") for i, m in enumerate(meanings["test"])]
    write_records(
        translations / output_name(task, "train", "en", TARGET),
        _records(meanings["train"], TARGET, train_tolan, "train"),
    )
    write_records(
        translations / output_name(task, "test", TARGET, "en"), _records(meanings["test"], "en", test_english, "test")
    )
    return task


def write_mt_states(encoder_folder: Path, folder: Path, task: TaskSpec, reader: TaskEncoder) -> None:
    """FLARE-MT's source: the pretrained encoder's last hidden states of the Tolan text the demo model reads (MT
    output for train, the original for test), standing in for an NLLB encoder, stored as `flare-xlt mt-states`
    stores them."""
    tokenizer = AutoTokenizer.from_pretrained(encoder_folder)
    encoder = AutoModel.from_pretrained(encoder_folder).eval()
    sources = {
        "train": folder / "translations" / output_name(task, "train", "en", TARGET),
        "test": folder / "data" / TARGET / "test.jsonl",
    }
    for split, path in sources.items():
        keyed_texts = reader.state_texts([row for _, row in read_rows(path)])
        states = []
        for start in range(0, len(keyed_texts), 64):
            texts = [text for _, text in keyed_texts[start : start + 64]]
            batch = tokenizer(texts, padding=True, return_tensors="pt")
            with torch.no_grad():
                hidden = encoder(**batch).last_hidden_state  # (B, T, d)
            states += [row[mask.bool()] for row, mask in zip(hidden, batch["attention_mask"], strict=True)]
        EncoderStateStore.write(
            folder / "mt_states" / TARGET / split,
            [key for key, _ in keyed_texts],
            states,
            metadata={"model": str(encoder_folder), "language": TARGET, "reader": reader.state_signature()},
        )


def setting_name(config: DemoConfig) -> str:
    """The folder of one setting; the hash covers everything else that changes the data or the runs."""
    # Seeds and variants add runs to a setting; they change neither its data nor its other runs. The MT error is
    # hashed per direction.
    excluded = ("output", "seeds", "variants", "mt_error_rate", "mt_error_rate_train", "mt_error_rate_test", "workers")
    rest = {key: value for key, value in asdict(config).items() if key not in excluded}
    rest["mt_error_rate"] = config.train_error
    if config.test_error != config.train_error:
        rest["mt_error_rate_test"] = config.test_error
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]
    if config.test_error == config.train_error:
        errors = f"mterror{config.train_error:g}"
    else:
        errors = f"mterror-train{config.train_error:g}-test{config.test_error:g}"
    return f"{config.model_type}-resource{config.target_resource:g}-{errors}-{digest}"


# One run per core, at most 4: the demo's models are too small for one run to use several cores (measured on 2 cores:
# a seed's runs take 84 s with 2 threads and 105 s with 1, so two runs side by side with one thread each finish
# sooner).
DEMO_MOST_WORKERS = 4


def run_demo(config: DemoConfig) -> str:
    """Pretrain (or reuse), write the world's task, run every method over the seeds, and return the report table."""
    started = time.perf_counter()
    output = Path(config.output)
    lexicon = Lexicon.invent(config.world_seed)
    pretraining = PretrainingConfig(**{**asdict(config.sizes.pretraining), "target_resource": config.target_resource})
    # Pretraining stays in this process with all its threads, not side by side: the encoder world's weights depend
    # on the thread count (by 3e-7 between 1 and 2 threads), and a world is reused by every later setting.
    model_folder = pretrained_model(output / "pretrained", pretraining, config.model_type, lexicon, config.world_seed)
    folder = output / setting_name(config)
    task = write_task_data(config, lexicon, folder)
    methods = list(TRANSFER_METHODS)
    if config.flare_mt:
        encoder_folder = (
            model_folder
            if config.model_type == "encoder"
            else pretrained_model(output / "pretrained", pretraining, "encoder", lexicon, config.world_seed)
        )
        reader = load_state_reader(str(model_folder), task, config.model_type, config.sizes.train.max_length)
        write_mt_states(encoder_folder, folder, task, reader)
        methods += MT_STATE_METHODS
    methods += list(config.variants)
    recipe = Recipe(
        model=str(model_folder),
        task=str(folder / "task.yaml"),
        languages=[TARGET],
        methods=methods,
        seeds=list(config.seeds),
        output=str(folder / "runs"),
        data=str(folder / "data"),
        translations=str(folder / "translations"),
        mt_states=str(folder / "mt_states"),
        architecture=config.model_type,
        trainable=TRAINABLE,
        adapter=config.sizes.adapter,
        train=config.sizes.train_for(config.model_type),
        variants=dict(config.variants),
    )
    run_recipe(recipe, workers=config.workers or default_workers(DEMO_MOST_WORKERS))
    paths = write_report(folder / "runs", folder)
    table = paths[0].read_text(encoding="utf-8")
    lines = [
        f"flare-xlt demo: {config.model_type}, Tolan at {config.target_resource:g}x English pretraining text, "
        f"MT error rate {config.train_error:g} (English -> Tolan) and {config.test_error:g} (Tolan -> English), "
        f"seeds {', '.join(map(str, config.seeds))}",
        "",
        table.rstrip(),
        "",
        f"Report, table and plot: {folder}",
        f"Wall time: {time.perf_counter() - started:.0f} s",
    ]
    return "\n".join(lines)
