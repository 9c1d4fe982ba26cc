"""Stage 1 (English fine-tuning) and stage 2 (transfer with every method), each in its own run directory.

A run directory is named by task, language, method and seed plus a hash of the resolved config, so a different
run never overwrites another; a finished run (metrics.json present) is skipped when asked again, and an interrupted
one continues from its newest checkpoint. It holds config.json and environment.json (written first), checkpoints/
while training, the adapter (PEFT format, plus flare_config.json for FLARE), predictions.jsonl and metrics.json
(written last), each written atomically.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments, set_seed

from .. import __version__
from ..config import FlareConfig
from ..evaluation import task_scores
from ..io import replace_directory_atomically, write_text_atomic
from ..model import FlareModel, get_flare_model, keep_trainables_in_float32
from ..mt.states import EncoderStateStore
from ..tasks import PairedCollator, TaskEncoder, TaskSpec, get_task, load_record_file, load_task_splits, pair_views
from ..xmixup import XMixupConfig, XMixupModel
from .checkpoints import CheckpointedCallback, CheckpointSchedule, ResumableTrainer, latest_checkpoint
from .models import check_max_length, load_model
from .predict import predict

METHODS = ("zero-shot", "translate-test", "lora", "input-fusion", "flare", "flare-mt", "x-mixup")
TRAINING_METHODS = ("lora", "input-fusion", "flare", "flare-mt", "x-mixup")
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
STAGE1_MODES = ("auto", "merge", "frozen")


def resolve_stage1_mode(stage1_mode: str, load_in_4bit: bool) -> str:
    """auto: frozen on a 4-bit base (merging into it re-quantises: the trained methods would start from another
    model than the evaluation-only ones), merge otherwise (the authors' way)."""
    if stage1_mode not in STAGE1_MODES:
        raise ValueError(f"Unknown stage1_mode {stage1_mode!r}; valid choices: {', '.join(STAGE1_MODES)}.")
    if stage1_mode == "auto":
        return "frozen" if load_in_4bit else "merge"
    return stage1_mode


CHECKPOINTS = "checkpoints"


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
    save_steps: int = field(
        default=500,
        metadata={
            "help": "Write a resumable checkpoint every this many steps and at the end of every epoch; 0: none. "
            "Not part of the run's config: it does not change the result."
        },
    )
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
    pairing: str = "start"
    unpaired: str = "lora"

    def __post_init__(self) -> None:
        self.flare_config(self.fusion)  # FlareConfig's checks, before any model loads

    def flare_config(
        self, fusion: str | None, modules_to_save: list[str] | None = None, mt_source_dim: int | None = None
    ) -> FlareConfig:
        return FlareConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            fusion_modules=self.fusion_modules,
            fusion=fusion,
            source_site=self.source_site,
            source_layer_offset=self.source_layer_offset,
            cross_attention_heads=self.cross_attention_heads,
            pairing=self.pairing,
            unpaired=self.unpaired,
            modules_to_save=modules_to_save,
            mt_source_dim=mt_source_dim,
        )


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


def _finished(run_dir: Path, config: dict) -> bool:
    """A run whose metrics.json exists is complete (it is written last): asking for it again does nothing. A run
    directory that records another config is refused, before it could be skipped or resumed as this run."""
    _check_run_directory(run_dir, config)
    if (run_dir / "metrics.json").exists():
        shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # left if a crash followed metrics.json
        print(f"{run_dir.name}: finished earlier, skipped")
        return True
    return False


def _check_run_directory(run_dir: Path, config: dict) -> None:
    """The name of a run directory is a hash of its config, but a folder can be copied, edited or collide: the
    config.json it holds must be this config (compared as the hash compares, numbers and paths in one spelling)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} line {error.lineno}: not valid JSON ({error.msg}); the run directory {run_dir} cannot be "
            "checked, so it is neither resumed nor skipped. Remove it to start this run again."
        ) from error
    expected = json.loads(json.dumps(config, default=str))
    differences = _differences(_canonical(recorded), _canonical(expected))
    if differences:
        raise ValueError(
            f"{run_dir} holds a different run: its config.json differs from this one in {len(differences)} "
            f"settings ({'; '.join(differences[:5])}). Give another --output, or remove the folder."
        )


def _differences(recorded, expected, prefix: str = "") -> list[str]:
    """'setting: recorded -> asked' for every setting that differs, nested settings as dotted names."""
    if isinstance(recorded, dict) and isinstance(expected, dict):
        return [
            difference
            for key in sorted(recorded.keys() | expected.keys())
            for difference in _differences(recorded.get(key), expected.get(key), f"{prefix}{key}.")
        ]
    return [] if recorded == expected else [f"{prefix.rstrip('.')}: {recorded!r} -> {expected!r}"]


def _start_run(run_dir: Path, config: dict) -> None:
    """config.json and environment.json come first, so that an interrupted run is recognised when asked again."""
    if _is_main_process():
        _write_json(run_dir / "config.json", config)
        _write_json(run_dir / "environment.json", environment())


def _save_adapter(model: torch.nn.Module, run_dir: Path) -> None:
    if _is_main_process():
        replace_directory_atomically(run_dir / "adapter", model.save_pretrained)


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


VALIDATION_HISTORY_NAME = "validation_history.json"
BEST_WEIGHTS_NAME = "best_trainable.safetensors"


class BestOnValidation(CheckpointedCallback):
    """After each epoch, score the validation set; at the end, put back the trainable weights of the best epoch.
    The scores and the best weights so far are part of every checkpoint."""

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

    def save_state(self, directory: Path) -> None:
        (directory / VALIDATION_HISTORY_NAME).write_text(json.dumps(self.history) + "\n", encoding="utf-8")
        if self.best_weights is not None:
            best = {name: weight.to("cpu").contiguous() for name, weight in self.best_weights.items()}
            save_file(best, str(directory / BEST_WEIGHTS_NAME), metadata={"format": "pt"})

    def load_state(self, directory: Path) -> None:
        self.history = json.loads((directory / VALIDATION_HISTORY_NAME).read_text(encoding="utf-8"))
        best_path = directory / BEST_WEIGHTS_NAME
        self.best_weights = None
        if best_path.is_file():
            devices = {name: parameter.device for name, parameter in self.model.named_parameters()}
            self.best_weights = {name: weight.to(devices[name]) for name, weight in load_file(best_path).items()}


def _train(
    model, features: list[dict], config: TrainConfig, run_dir: Path, collator, callbacks=(), resume: bool = True
) -> None:
    """Train with the HF Trainer, continuing from the newest checkpoint of `run_dir` when `resume` allows."""
    if config.gradient_checkpointing:
        peft_model = model.model if isinstance(model, XMixupModel) else model
        # A FlareModel enables it itself, so that each recompute reads its own forward's source.
        target = peft_model if isinstance(peft_model, FlareModel) else peft_model.get_base_model()
        target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpoints = run_dir / CHECKPOINTS
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    arguments = TrainingArguments(
        output_dir=str(checkpoints),
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
        save_strategy="no",  # CheckpointSchedule decides when to save
        logging_steps=10,
        use_cpu=not torch.cuda.is_available(),
    )
    schedule = [CheckpointSchedule(config.save_steps)] if config.save_steps > 0 else []
    trainer = ResumableTrainer(
        model=model,
        args=arguments,
        train_dataset=features,
        data_collator=collator,
        callbacks=[*callbacks, *schedule],
    )
    checkpoint = latest_checkpoint(checkpoints)
    if checkpoint is not None:
        print(f"{run_dir.name}: resuming from {checkpoint.name}")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)


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
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # the run is complete: nothing is left to resume
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
    resume: bool = True,
) -> Path:
    """Stage 1: a LoRA (plus the task head) trained on English, evaluated on the English test set.

    Args:
        resume: Continue an interrupted run from the newest checkpoint in its run directory (asking for the same run
            again does this); false discards the run's checkpoints and trains from the start.
        name: The run's name in folders and reports, for a variant of a method (e.g. flare-end, a FLARE adapter
            with pairing=end); default: the method.
    """
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
        "train": _result_settings(train),
    }
    run_dir = run_directory(output, f"{spec.name}-{spec.source_language}-finetune-seed{train.seed}", config)
    if _finished(run_dir, config):
        return run_dir
    loaded = _load(model, spec, architecture, load_in_4bit, train)
    _check_target_modules(loaded.model, adapter.target_modules, model)
    lora = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=adapter.target_modules,
        modules_to_save=loaded.head_modules(spec, trainable),
    )
    network = get_peft_model(loaded.model, lora)
    keep_trainables_in_float32(network)  # a bf16 checkpoint's head copy would round most updates away
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
    _start_run(run_dir, config)
    _train(network, features, train, run_dir, collator, callbacks, resume)
    _save_adapter(network, run_dir)
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
    stage1_mode: str = "auto",
    architecture: str = "auto",
    trainable: str = "lora",
    load_in_4bit: bool = False,
    adapter: AdapterConfig | None = None,
    train: TrainConfig | None = None,
    resume: bool = True,
    name: str | None = None,
) -> Path:
    """Stage 2 for one target language: evaluate the stage-1 model (zero-shot, translate-test) or train a new
    adapter on translated data (lora, input-fusion, flare, flare-mt, x-mixup) and evaluate it on the target test set.

    Args:
        translations: Folder with {task}_train_<source>-{language}.jsonl and {task}_test_{language}-<source>.jsonl
            (and {task}_validation_<source>-{language}.jsonl when selecting on validation), as written by
            flare-xlt translate.
        mt_states: For flare-mt, a folder with the encoder-state stores train/, test/ (and validation/ when
            selecting), as written by flare-xlt mt-states.
        resume: Continue an interrupted run from the newest checkpoint in its run directory (asking for the same run
            again does this); false discards the run's checkpoints and trains from the start.
        name: The run's name in folders and reports, for a variant of a method (e.g. flare-end, a FLARE adapter
            with pairing=end); default: the method.
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
    stage1_mode = resolve_stage1_mode(stage1_mode, load_in_4bit)
    needs_translations = method != "zero-shot"
    if needs_translations and translations is None:
        raise ValueError(f"Method {method!r} needs --translations (the folder written by flare-xlt translate).")
    if method == "flare-mt" and mt_states is None:
        raise ValueError("Method 'flare-mt' needs --mt_states (a folder with train/ and test/ state stores).")
    stage1_adapter = Path(stage1) / "adapter"
    if not (stage1_adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{stage1_adapter / 'adapter_config.json'} not found: --stage1 must be a stage-1 run directory, as "
            "flare-xlt finetune writes it."
        )
    trains_adapter = method in TRAINING_METHODS
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
        "stage1_mode": stage1_mode,
        "architecture": architecture,
        "trainable": trainable if trains_adapter else None,
        "load_in_4bit": load_in_4bit,
        "adapter": asdict(adapter) if trains_adapter else None,
        "train": _result_settings(train),
    }
    label = name or method
    if name is not None:
        config["variant"] = name
    run_dir = run_directory(output, f"{spec.name}-{language}-{label}-seed{train.seed}", config)
    if _finished(run_dir, config):
        return run_dir
    loaded = _load(model, spec, architecture, load_in_4bit, train)
    if trains_adapter:
        _check_target_modules(loaded.model, adapter.target_modules, model)
    network = _load_stage1(loaded.model, stage1_adapter, model)
    if not trains_adapter and stage1_mode == "merge":
        # Evaluate the model the trained methods start from: on a 4-bit base a merge re-quantises.
        network = network.merge_and_unload()
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
        # The training features; for FLARE-MT also the reader whose text the encoder states must cover.
        state_reader = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, view, train.max_length)
        if store is not None:  # the test states are read after training: check them before it
            states = EncoderStateStore(Path(mt_states) / "test")
            _check_states(states, state_reader, test_pairs)
        flare_config = adapter.flare_config(
            adapter.fusion if method.startswith("flare") else None,
            loaded.head_modules(spec, trainable),
            store.d_model if store else None,
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
        if store is not None:
            train_keys = _check_states(store, state_reader, train_pairs)
        features, report, _ = state_reader.encode(train_pairs)
        print(f"train: {report.summary()}")
        collator = PairedCollator.for_tokenizer(loaded.tokenizer)
        if store is not None:
            for feature, key in zip(features, train_keys, strict=True):
                feature["state_key"] = key
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
            validation_states = None
            if store is not None:
                validation_states = EncoderStateStore(Path(mt_states) / "validation")
                _check_states(validation_states, state_reader, validation)
            callbacks.append(_validation_callback(network, loaded, spec, validation, view, train, validation_states))
        _start_run(run_dir, config)
        _train(network, features, train, run_dir, collator, callbacks, resume)
        _save_adapter(network, run_dir)
        selection = callbacks[0].summary() if callbacks else {}
    else:
        _start_run(run_dir, config)
    summary = {
        **selection,
        "task": spec.name,
        "method": label,
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


def _result_settings(train: TrainConfig) -> dict:
    """The training settings that enter a run's config and hash: all but how often it is checkpointed."""
    return {name: value for name, value in asdict(train).items() if name != "save_steps"}


def _check_target_modules(model: torch.nn.Module, target_modules: list[str] | str | None, model_name: str) -> None:
    """PEFT names only the missing targets; the linear layers the model does have are the valid choices."""
    if not isinstance(target_modules, list):  # None (PEFT's default), "all-linear" or a regex
        return
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    missing = [target for target in target_modules if not any(_is_suffix(target, name) for name in names)]
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise ValueError(
            f"target_modules {missing} match no linear layer of {model_name}; its linear layers are named: "
            f"{', '.join(leaves)}."
        )


def _is_suffix(target: str, name: str) -> bool:
    return name == target or name.endswith("." + target)


def _load_stage1(base: torch.nn.Module, adapter: Path, model_name: str) -> PeftModel:
    try:
        return PeftModel.from_pretrained(base, adapter)
    except RuntimeError as error:  # torch's load_state_dict lists every size mismatch
        raise ValueError(f"The stage-1 adapter {adapter} does not fit {model_name}: {error}") from error


def _check_states(store: EncoderStateStore, reader: TaskEncoder, pairs: list[dict]) -> list[str]:
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


def _with_mt_states(collator: PairedCollator, store: EncoderStateStore):
    def collate(features: list[dict]) -> dict:
        batch = collator(features)
        batch["source_embeds"], batch["source_attention_mask"] = store.batch([f["state_key"] for f in features])
        return batch

    return collate
