"""Stage 1 (English fine-tuning) and stage 2 (transfer with every method), each in its own run directory.

A run directory is named by task, language, method and seed plus a hash of the resolved config, so a different
run never overwrites another; a finished run (metrics.json present) is skipped when asked again. It holds the
adapter (PEFT format, plus flare_config.json for FLARE), metrics.json, predictions.jsonl, config.json and
environment.json, each written atomically.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .. import __version__
from ..config import FlareConfig
from ..evaluation import task_scores
from ..io import write_text_atomic
from ..model import get_flare_model
from ..mt.states import EncoderStateStore
from ..tasks import PairedCollator, TaskEncoder, TaskSpec, get_task, load_record_file, load_task_splits, pair_views
from ..xmixup import XMixupConfig, XMixupModel
from .models import check_max_length, load_model
from .predict import predict

METHODS = ("zero-shot", "translate-test", "lora", "input-fusion", "flare", "flare-mt", "x-mixup")
# The input each method sees: the target text, the English text, both in one sequence, or both as a FLARE pair.
METHOD_VIEWS = {
    "zero-shot": "target",
    "translate-test": "source",
    "lora": "target",
    "input-fusion": "input_fusion",
    "flare": "paired",
    "flare-mt": "target",
    "x-mixup": "paired",
}
STAGE1_MODES = ("merge", "frozen")


@dataclass
class TrainConfig:
    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (linear schedule)."})
    batch_size: int = field(default=32, metadata={"help": "Examples per device and step."})
    epochs: float = field(default=3.0, metadata={"help": "Training epochs."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many steps (-1: use epochs)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps with linear warm-up."})
    max_length: int = field(default=128, metadata={"help": "Tokens per input; cuts are counted in the report."})
    seed: int = field(default=42, metadata={"help": "Seed of data order and adapter initialisation."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations; fusion stays on."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)."})
    report_to: str = field(default="none", metadata={"help": "Trainer loggers: none, tensorboard, wandb."})
    select_best_on_validation: bool = field(
        default=False,
        metadata={
            "help": "Score the (translated) validation set after every epoch and keep the best adapter, as the paper "
            "selects its checkpoints. Transfer runs read {task}_validation_<source>-{language}.jsonl."
        },
    )


@dataclass
class AdapterConfig:
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    fusion: str = "add_relu"
    fusion_modules: list[str] | str | None = None
    source_site: str = "linear_input"
    source_layer_offset: int = 0
    cross_attention_heads: int = 1


PATH_SETTINGS = ("model", "data", "stage1", "translations", "mt_states")


def _canonical(value, key: str = ""):
    """One spelling per setting, so the same run asked for from a recipe or the CLI gets one hash: numbers as floats,
    path settings that name an existing file or folder as absolute paths."""
    if isinstance(value, dict):
        return {name: _canonical(item, name) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if key in PATH_SETTINGS and value is not None and Path(value).exists():
        return str(Path(value).resolve())
    return value


def run_directory(output: Path, name: str, config: dict) -> Path:
    canonical = json.dumps(_canonical(config), sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return Path(output) / f"{name}-{digest}"


def environment() -> dict:
    return {
        "flare_xlt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _write_json(path: Path, value: dict) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def _finished(run_dir: Path) -> bool:
    """A run whose metrics.json exists is complete (it is written last): asking for it again does nothing."""
    if (run_dir / "metrics.json").exists():
        print(f"{run_dir.name}: finished earlier, skipped")
        return True
    return False


def _load(model: str, task: TaskSpec, architecture: str, load_in_4bit: bool, train: TrainConfig):
    set_seed(train.seed)
    loaded = load_model(model, task, architecture, load_in_4bit)
    check_max_length(loaded, train.max_length)
    if torch.cuda.is_available() and not load_in_4bit:  # 4-bit weights are placed on the GPU when loaded
        # Evaluation-only methods (zero-shot, translate-test) never pass through the Trainer, which moves models.
        loaded.model.to("cuda")
    return loaded


def _is_main_process() -> bool:
    """Under torchrun every process trains; only the first evaluates and writes the run's files."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _self_pairs(task: TaskSpec, records: list[dict]) -> list[dict]:
    """English-only data as pairs whose two views are the same records (stage 1 reads the target view)."""
    return pair_views(task, records, records)


class BestOnValidation(TrainerCallback):
    """After each epoch, score the validation set; at the end, put back the trainable weights of the best epoch."""

    def __init__(self, model: torch.nn.Module, score: Callable[[], float]) -> None:
        self.model, self.score = model, score
        self.history: list[float] = []
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, args, state, control, **kwargs):
        self.history.append(self.score())
        if self.history[-1] >= max(self.history):  # ties keep the later, longer-trained epoch
            self.best_weights = {
                name: parameter.detach().clone()
                for name, parameter in self.model.named_parameters()
                if parameter.requires_grad
            }
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.best_weights is not None:
            with torch.no_grad():
                for name, parameter in self.model.named_parameters():
                    if name in self.best_weights:
                        parameter.copy_(self.best_weights[name])
        return control

    def summary(self) -> dict:
        return {"validation_history": self.history, "best_epoch": self.history.index(max(self.history)) + 1}


def _train(model, tokenizer, features: list[dict], config: TrainConfig, run_dir: Path, collator, callbacks=()) -> None:
    if config.gradient_checkpointing:
        peft_model = model.model if isinstance(model, XMixupModel) else model
        peft_model.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    arguments = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float in [0, 1) is the share of steps
        lr_scheduler_type="linear",
        seed=config.seed,
        bf16=config.bf16,
        report_to=config.report_to,
        remove_unused_columns=False,  # the Trainer would drop source_* (not in the base model's forward signature)
        save_strategy="no",
        logging_steps=10,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model, args=arguments, train_dataset=features, data_collator=collator, callbacks=list(callbacks)
    )
    trainer.train()


def _score(model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, states=None):
    """(predictions, raw outputs, references, per-language scores) of `model` on `pairs`."""
    predictions, raw = predict(
        model,
        loaded.tokenizer,
        task,
        loaded.architecture,
        pairs,
        view,
        config.max_length,
        config.batch_size,
        source_embeds=states.batch if states is not None else None,
    )
    if task.kind == "classification":
        references = [pair["label"] for pair in pairs]
    else:
        answers_key = "source_answers" if view == "source" else "answers"
        references = [pair[answers_key]["text"] for pair in pairs]
    ids = [pair["id"] for pair in pairs]
    return (
        predictions,
        raw,
        references,
        task_scores(task, ids, [pair["language"] for pair in pairs], predictions, references),
    )


def _headline(task: TaskSpec) -> str:
    return "f1" if task.metric == "squad" else task.metric


def _validation_callback(model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, states=None):
    def score() -> float:
        return _score(model, loaded, task, pairs, view, config, states)[3]["average"][_headline(task)]

    return BestOnValidation(model, score)


def _evaluate(
    model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, run_dir: Path, summary: dict, states=None
):
    if not _is_main_process():
        return None
    predictions, raw, references, scores = _score(model, loaded, task, pairs, view, config, states)
    ids = [pair["id"] for pair in pairs]
    rows = [
        {"id": i, "prediction": p, "reference": r, "output": o}
        for i, p, r, o in zip(ids, predictions, references, raw, strict=True)
    ]
    write_text_atomic(
        run_dir / "predictions.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    metrics = {
        **summary,
        "metric": _headline(task),
        "scores": scores,
        "run": run_dir.name,
    }
    _write_json(run_dir / "metrics.json", metrics)
    headline = scores["average"][metrics["metric"]]
    print(f"{run_dir.name}: {metrics['metric']} {headline:.4f} on {scores['average']['count']} examples")
    return metrics


def finetune(
    model: str,
    task: str,
    output: Path = Path("runs"),
    data: str = "hub",
    architecture: str = "auto",
    trainable: str = "lora",
    load_in_4bit: bool = False,
    adapter: AdapterConfig | None = None,
    train: TrainConfig | None = None,
) -> Path:
    """Stage 1: a LoRA (plus the task head) trained on English, evaluated on the English test set."""
    spec, adapter, train = get_task(task), adapter or AdapterConfig(), train or TrainConfig()
    config = {
        "stage": "finetune",
        "model": model,
        "task": spec.name,
        "data": data,
        "architecture": architecture,
        "trainable": trainable,
        "load_in_4bit": load_in_4bit,
        "adapter": asdict(adapter),
        "train": asdict(train),
    }
    run_dir = run_directory(output, f"{spec.name}-{spec.source_language}-finetune-seed{train.seed}", config)
    if _finished(run_dir):
        return run_dir
    loaded = _load(model, spec, architecture, load_in_4bit, train)
    lora = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=adapter.target_modules,
        modules_to_save=loaded.head_modules(spec, trainable),
    )
    network = get_peft_model(loaded.model, lora)
    roles = ["train", "validation", "test"] if train.select_best_on_validation else ["train", "test"]
    splits = load_task_splits(spec, spec.source_language, roles, data)
    features, report, _ = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, "target", train.max_length).encode(
        _self_pairs(spec, splits["train"])
    )
    print(f"train: {report.summary()}")
    callbacks = []
    if train.select_best_on_validation:
        _check_validation_role(spec)
        pairs = _self_pairs(spec, splits["validation"])
        callbacks.append(_validation_callback(network, loaded, spec, pairs, "target", train))
    collator = PairedCollator.for_tokenizer(loaded.tokenizer)
    _train(network, loaded.tokenizer, features, train, run_dir, collator, callbacks)
    if _is_main_process():
        network.save_pretrained(run_dir / "adapter")
        _write_json(run_dir / "config.json", config)
        _write_json(run_dir / "environment.json", environment())
    summary = {
        **(callbacks[0].summary() if callbacks else {}),
        "task": spec.name,
        "method": "finetune",
        "seed": train.seed,
        "language": spec.source_language,
        "config_hash": run_dir.name.rsplit("-", 1)[1],
    }
    _evaluate(network, loaded, spec, _self_pairs(spec, splits["test"]), "target", train, run_dir, summary)
    return run_dir


def transfer(
    model: str,
    task: str,
    language: str,
    method: str,
    stage1: Path,
    translations: Path | None = None,
    output: Path = Path("runs"),
    data: str = "hub",
    mt_states: Path | None = None,
    stage1_mode: str = "merge",
    architecture: str = "auto",
    trainable: str = "lora",
    load_in_4bit: bool = False,
    adapter: AdapterConfig | None = None,
    train: TrainConfig | None = None,
) -> Path:
    """Stage 2 for one target language: evaluate the stage-1 model (zero-shot, translate-test) or train a new
    adapter on translated data (lora, input-fusion, flare, flare-mt, x-mixup) and evaluate it on the target test set.

    translations: folder with {task}_train_<source>-{language}.jsonl and {task}_test_{language}-<source>.jsonl
    (and {task}_validation_<source>-{language}.jsonl when selecting on validation), as written by flare-xlt translate.
    mt_states: for flare-mt, a folder with the encoder-state stores train/, test/ (and validation/ when selecting),
    as written by flare-xlt mt-states.
    """
    spec, adapter, train = get_task(task), adapter or AdapterConfig(), train or TrainConfig()
    spec.check_language(language)
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; valid choices: {', '.join(METHODS)}.")
    if method == "translate-test" and spec.kind == "extractive_qa":
        raise ValueError(
            "translate-test for extractive QA would need the English answer spans projected back into the target "
            "context, which flare-xlt does not do; it runs for classification tasks."
        )
    if stage1_mode not in STAGE1_MODES:
        raise ValueError(f"Unknown stage1_mode {stage1_mode!r}; valid choices: {', '.join(STAGE1_MODES)}.")
    needs_translations = method != "zero-shot"
    if needs_translations and translations is None:
        raise ValueError(f"Method {method!r} needs --translations (the folder written by flare-xlt translate).")
    if method == "flare-mt" and mt_states is None:
        raise ValueError("Method 'flare-mt' needs --mt_states (a folder with train/ and test/ state stores).")
    trains_adapter = method in ("lora", "input-fusion", "flare", "flare-mt", "x-mixup")
    # Only what changes this method's result enters the config (and its hash): the same run asked again is found.
    config = {
        "stage": "transfer",
        "model": model,
        "task": spec.name,
        "language": language,
        "method": method,
        "stage1": str(stage1),
        "translations": str(translations) if needs_translations else None,
        "data": data,
        "mt_states": str(mt_states) if method == "flare-mt" else None,
        "stage1_mode": stage1_mode if trains_adapter else None,
        "architecture": architecture,
        "trainable": trainable if trains_adapter else None,
        "load_in_4bit": load_in_4bit,
        "adapter": asdict(adapter) if trains_adapter else None,
        "train": asdict(train),
    }
    run_dir = run_directory(output, f"{spec.name}-{language}-{method}-seed{train.seed}", config)
    if _finished(run_dir):
        return run_dir
    loaded = _load(model, spec, architecture, load_in_4bit, train)
    network = PeftModel.from_pretrained(loaded.model, Path(stage1) / "adapter")
    view = METHOD_VIEWS[method]

    test_target = load_task_splits(spec, language, ["test"], data)["test"]
    if needs_translations:
        test_english = load_record_file(
            spec, Path(translations) / f"{spec.name}_test_{language}-{spec.source_language}.jsonl"
        )
        test_pairs = pair_views(spec, test_target, test_english)
    else:
        test_pairs = _self_pairs(spec, test_target)
    states, selection = None, {}
    if trains_adapter:
        store = EncoderStateStore(Path(mt_states) / "train") if method == "flare-mt" else None
        flare_config = FlareConfig(
            r=adapter.r,
            lora_alpha=adapter.lora_alpha,
            lora_dropout=adapter.lora_dropout,
            target_modules=adapter.target_modules,
            fusion_modules=adapter.fusion_modules,
            fusion=adapter.fusion if method.startswith("flare") else None,
            source_site=adapter.source_site,
            source_layer_offset=adapter.source_layer_offset,
            cross_attention_heads=adapter.cross_attention_heads,
            modules_to_save=loaded.head_modules(spec, trainable),
            mt_source_dim=store.d_model if store else None,
        )
        network = get_flare_model(network, flare_config, stage1=stage1_mode)
        if method == "x-mixup":
            if loaded.architecture != "encoder":
                raise ValueError("x-mixup mixes encoder hidden states; it runs on encoder models only.")
            # A new LoRA trains together with the mixing gates, on top of the stage-1 model.
            network = XMixupModel(network, XMixupConfig())
        train_target = load_record_file(
            spec, Path(translations) / f"{spec.name}_train_{spec.source_language}-{language}.jsonl"
        )
        english = load_task_splits(spec, spec.source_language, ["train"], data)["train"]
        train_pairs = pair_views(spec, train_target, english)
        encoder = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, view, train.max_length)
        features, report, windows = encoder.encode(train_pairs)
        print(f"train: {report.summary()}")
        collator = PairedCollator.for_tokenizer(loaded.tokenizer)
        if store is not None:
            indices = windows.example_index if windows is not None else range(len(features))
            for feature, index in zip(features, indices, strict=True):
                feature["example_id"] = train_pairs[index]["id"]
            collator = _with_mt_states(collator, store)
        callbacks = []
        if train.select_best_on_validation:
            _check_validation_role(spec)
            validation = pair_views(
                spec,
                load_record_file(
                    spec, Path(translations) / f"{spec.name}_validation_{spec.source_language}-{language}.jsonl"
                ),
                load_task_splits(spec, spec.source_language, ["validation"], data)["validation"],
            )
            validation_states = EncoderStateStore(Path(mt_states) / "validation") if store is not None else None
            callbacks.append(_validation_callback(network, loaded, spec, validation, view, train, validation_states))
        _train(network, loaded.tokenizer, features, train, run_dir, collator, callbacks)
        if _is_main_process():
            network.save_pretrained(run_dir / "adapter")
        states = EncoderStateStore(Path(mt_states) / "test") if store is not None else None
        selection = callbacks[0].summary() if callbacks else {}
    if _is_main_process():
        _write_json(run_dir / "config.json", config)
        _write_json(run_dir / "environment.json", environment())
    summary = {
        **selection,
        "task": spec.name,
        "method": method,
        "seed": train.seed,
        "language": language,
        "config_hash": run_dir.name.rsplit("-", 1)[1],
    }
    _evaluate(network, loaded, spec, test_pairs, view, train, run_dir, summary, states)
    return run_dir


def _check_validation_role(task: TaskSpec) -> None:
    if task.splits["validation"] == task.splits["test"]:
        raise ValueError(
            f"{task.name} uses its {task.splits['test']!r} split as the test set, so it has no separate validation "
            "set to select on; turn select_best_on_validation off (the paper does not select for it either)."
        )


def _with_mt_states(collator: PairedCollator, store: EncoderStateStore):
    def collate(features: list[dict]) -> dict:
        batch = collator(features)
        batch["source_embeds"], batch["source_attention_mask"] = store.batch([f["example_id"] for f in features])
        return batch

    return collate
