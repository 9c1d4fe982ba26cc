"""Stage 1 (English fine-tuning) and stage 2 (transfer with every method), each in its own run directory.

A run directory is named by task, language, method and seed plus a hash of the resolved config, so a different
run never overwrites another; a finished run (metrics.json present) is skipped when asked again, and an interrupted
one continues from its newest checkpoint. It holds config.json and environment.json (written first), checkpoints/
while training, the adapter (PEFT format, plus flare_config.json for FLARE), predictions.jsonl and metrics.json
(written last), each written atomically.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback, TrainingArguments, set_seed

from .. import __version__
from ..config import FlareConfig
from ..evaluation import task_scores
from ..io import replace_directory_atomically, write_text_atomic
from ..methods import REGISTRY, STAGE1_ADAPTER_SETTINGS, get_method
from ..model import FlareModel, get_flare_model, keep_trainables_in_float32
from ..mt.data import output_name
from ..mt.states import EncoderStateStore
from ..source_cache import FlushSourceCache, SourceCache, open_source_cache
from ..tasks import PairedCollator, TaskEncoder, TaskSpec, get_task, load_record_file, load_task_splits, pair_views
from ..xmixup import XMixupModel
from .checkpoints import (
    TRAINER_STATE_NAME,
    CheckpointedCallback,
    CheckpointSchedule,
    ResumableTrainer,
    latest_checkpoint,
)
from .models import LoadedModel, check_max_length, load_model
from .predict import predict
from .settings import DEFAULT_ADAPTER, DEFAULT_TRAIN, AdapterConfig, TrainConfig

STAGE1_MODES = ("auto", "merge", "frozen")


def resolve_stage1_mode(stage1_mode: str, load_in_4bit: bool) -> str:
    """auto: frozen on a 4-bit base (merging into it re-quantises: the trained methods would start from another
    model than the evaluation-only ones), merge otherwise (the authors' way)."""
    if stage1_mode not in STAGE1_MODES:
        raise ValueError(f"Unknown stage1_mode {stage1_mode!r}; valid choices: {', '.join(STAGE1_MODES)}.")
    if stage1_mode == "auto":
        return "frozen" if load_in_4bit else "merge"
    return stage1_mode


# Warnings about what the pipeline does on purpose, silenced inside its commands only (a caller's own PEFT use still
# sees them), each with its reason.
EXPECTED_WARNINGS = (
    # trainable=lora+head+embeddings trains lm_head and embed_tokens as two full copies (the authors' setting), so on
    # a model with tied embeddings PEFT warns at every adapter that the tie breaks, and again when a merge unties them.
    (UserWarning, r"Model has `tie_word_embeddings=True` and a tied layer is part of the adapter"),
    (UserWarning, r"Input and output embeddings are no longer tied after merging"),
    # peft 0.21's PeftModel.__init__ reads the attribute transformers 5.23 renamed; not ours to fix.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


def without_expected_warnings(command: Callable) -> Callable:
    """`command` with EXPECTED_WARNINGS silenced while it runs."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            for category, message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            return command(*args, **kwargs)

    return run


CHECKPOINTS = "checkpoints"
SOURCE_CACHE = "source_cache"  # the disk source cache: kept while the run is unfinished, so a resumed run reads it
LOGS = "logs"  # the Trainer's loggers and its trainer_state.json (loss and validation history); kept after the run


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


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what asking for the same run again does."""


@contextmanager
def _started(run_dir: Path, config: dict) -> Iterator[None]:
    """config.json and environment.json come first, so that an interrupted run is recognised when asked again. A
    run that stops before its first checkpoint has nothing to resume: its folder is removed, so a failed start leaves
    nothing behind; a run that checkpointed keeps its folder for the resume."""
    if _is_main_process():
        _write_json(run_dir / "config.json", config)
        _write_json(run_dir / "environment.json", environment())
    try:
        yield
    except BaseException as error:
        checkpoint = latest_checkpoint(run_dir / CHECKPOINTS)
        finished = (run_dir / "metrics.json").exists()  # interrupted while printing its score: keep it
        if checkpoint is None and not finished and _is_main_process():
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(
                f"interrupted; run the same command to resume {run_dir.name} from {checkpoint.name}"
                if checkpoint is not None
                else f"interrupted before {run_dir.name} wrote a checkpoint; run the same command to start it again"
            ) from None
        raise


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
    The scores and the best weights so far are part of every checkpoint; each score also enters the Trainer's log
    history as eval_<metric>, next to the training loss."""

    def __init__(self, model: torch.nn.Module, score: Callable[[], float], metric: str = "score") -> None:
        self.model, self.score, self.metric = model, score, metric
        self.history: list[float] = []
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, args, state, control, **kwargs):
        self.history.append(self.score())
        state.log_history.append(
            {"epoch": state.epoch, "step": state.global_step, f"eval_{self.metric}": self.history[-1]}
        )
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
    checkpoints, logs = run_dir / CHECKPOINTS, run_dir / LOGS
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    arguments = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        **({"optim": config.optim} if config.optim is not None else {}),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,  # transformers 5: a float in [0, 1) is the share of steps
        lr_scheduler_type="linear",
        seed=config.seed,
        bf16=config.bf16,
        report_to=config.report_to,
        remove_unused_columns=False,  # the Trainer would drop source_* (not in the base model's forward signature)
        save_strategy="no",  # CheckpointSchedule decides when to save
        logging_steps=config.logging_steps,
        dataloader_num_workers=config.dataloader_num_workers,
        disable_tqdm=True,  # RunProgress draws the bar, named after the run
        use_cpu=not torch.cuda.is_available(),
    )
    schedule = [CheckpointSchedule(config.save_steps)] if config.save_steps > 0 else []
    cache = _source_cache(model, features, config, run_dir, arguments)
    if cache is not None:
        schedule.append(FlushSourceCache(cache))
    logs.mkdir(parents=True, exist_ok=True)
    with _loggers_writing_into(logs):  # TensorBoard's callback reads its folder when the Trainer builds it
        trainer = ResumableTrainer(
            model=model,
            args=arguments,
            train_dataset=features,
            data_collator=collator,
            callbacks=[*callbacks, *schedule, RunProgress(_run_label(run_dir))],
        )
        trainer.remove_callback(PrinterCallback)  # RunProgress writes the logs above its bar
        checkpoint = latest_checkpoint(checkpoints)
        if checkpoint is not None:
            print(f"{run_dir.name}: resuming from {checkpoint.name}")
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
        finally:
            if cache is not None:
                model.source_cache = None  # evaluation reads no cache, and a memory cache is freed
    if cache is not None:  # training is over: a rerun resumes from its final checkpoint, which needs no source
        trainer.accelerator.wait_for_everyone()  # every process has written its last shard
        if _is_main_process():
            shutil.rmtree(run_dir / SOURCE_CACHE, ignore_errors=True)
    if _is_main_process():  # the loss and validation history, which outlive checkpoints/
        _write_json(logs / TRAINER_STATE_NAME, asdict(trainer.state))


def _source_cache(
    model, features: list[dict], config: TrainConfig, run_dir: Path, arguments: TrainingArguments
) -> SourceCache | None:
    """The source cache `config` asks for, attached to a FLARE model; None when off or when the method runs no
    source pass (LoRA, input-level fusion, FLARE-MT, X-Mixup: said once, as a recipe sets it for every method)."""
    if config.source_cache == "off":
        return None
    if not (isinstance(model, FlareModel) and model.fused_modules and model.flare_config.mt_source_dim is None):
        if _is_main_process():
            print(f"{run_dir.name}: source_cache={config.source_cache} unused: this method runs no source pass")
        return None
    return open_source_cache(
        model,
        features,
        config.source_cache,
        config.source_cache_max_gb,
        directory=run_dir / SOURCE_CACHE,
        rank=arguments.process_index,
        world_size=arguments.world_size,
        autocast=torch.bfloat16 if config.bf16 else None,
        announce=_is_main_process(),
    )


@contextmanager
def _loggers_writing_into(logs: Path) -> Iterator[None]:
    """The Trainer's TensorBoard callback and wandb take their folder from these variables; checkpoints/ (the
    Trainer's output_dir, their default) is deleted when the run finishes. A folder the user set wins."""
    added = {name: str(logs) for name in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR") if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _run_label(run_dir: Path) -> str:
    """task-language-method-seed: the run's name without its hash."""
    return run_dir.name.rsplit("-", 1)[0]


class RunProgress(TrainerCallback):
    """The training progress bar, named after its run (a grid trains many), with the Trainer's logs above it."""

    def __init__(self, label: str) -> None:
        self.label, self.bar = label, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc=self.label, unit="step", disable=None
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None:
            self.bar.write(f"{self.label}: {json.dumps(logs)}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
        config.eval_batch_size or config.batch_size,
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

    return BestOnValidation(model, score, _headline(task))


def _evaluation(
    model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, summary: dict, states=None
) -> tuple[list[dict], dict]:
    """(one prediction row per pair, the metrics: `summary` with the headline metric and the scores)."""
    predictions, raw, references, scores = _score(model, loaded, task, pairs, view, config, states)
    ids = [pair["id"] for pair in pairs]
    rows = [
        {"id": i, "prediction": p, "reference": r, "output": o}
        for i, p, r, o in zip(ids, predictions, references, raw, strict=True)
    ]
    return rows, {**summary, "metric": _headline(task), "scores": scores}


def _write_evaluation(directory: Path, rows: list[dict], metrics: dict, metrics_name: str) -> None:
    """predictions.jsonl, then the metrics file, each atomically; prints the headline score."""
    write_text_atomic(
        directory / "predictions.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )
    _write_json(directory / metrics_name, metrics)
    headline = metrics["scores"]["average"][metrics["metric"]]
    print(f"{metrics['run']}: {metrics['metric']} {headline:.4f} on {metrics['scores']['average']['count']} examples")


def _evaluate(
    model, loaded, task: TaskSpec, pairs, view, config: TrainConfig, run_dir: Path, summary: dict, states=None
):
    if not _is_main_process():
        return None
    rows, metrics = _evaluation(model, loaded, task, pairs, view, config, summary, states)
    metrics["run"] = run_dir.name
    _write_evaluation(run_dir, rows, metrics, "metrics.json")  # metrics.json last: it marks the run finished
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # the run is complete: nothing is left to resume
    return metrics


@without_expected_warnings
def finetune(
    model: str,
    task: str,
    output: Path = Path("runs"),
    data: str = "hub",
    architecture: str = "auto",
    trainable: str = "lora",
    load_in_4bit: bool = False,
    adapter: AdapterConfig = DEFAULT_ADAPTER,
    train: TrainConfig = DEFAULT_TRAIN,
    resume: bool = True,
) -> Path:
    """Stage 1: train a LoRA and the task head on English and score it on the English test set.

    Prints the run folder last; <output>/latest-finetune links to it.

    Args:
        model: Base model: a hub name or a local folder with the model and its tokenizer.
        task: A built-in task (xnli, tydiqa, nusax) or a task spec file (.yaml/.json).
        output: Folder that receives the run folder.
        data: Where the splits come from: hub, or a folder of the original release files.
        architecture: auto (from the model's config), encoder, decoder or seq2seq.
        trainable: lora, lora+head (decoders: also lm_head) or lora+head+embeddings (also embed_tokens). Encoders
            always train their task head.
        load_in_4bit: Load the base in 4-bit NF4 with bitsandbytes (GPU).
        adapter: The LoRA's settings; stage 1 reads r, lora_alpha, lora_dropout and target_modules.
        train: Training settings.
        resume: Continue an interrupted run from the newest checkpoint in its run folder (asking for the same run
            again does this); false discards the run's checkpoints and trains from the start.
    """
    spec = get_task(task)
    run_dir, config = finetune_run(model, task, output, data, architecture, trainable, load_in_4bit, adapter, train)
    if _finished(run_dir, config):
        _link_latest(run_dir, "finetune")
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
    report_untrained(loaded, network, model)
    keep_trainables_in_float32(network)  # a bf16 checkpoint's head copy would round most updates away
    roles = ["train", "validation", "test"] if train.select_best_on_validation else ["train", "test"]
    splits = load_task_splits(spec, spec.source_language, roles, data)
    features, report, _ = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, "target", train.max_length).encode(
        _self_pairs(spec, splits["train"][: train.max_train_samples])
    )
    print(f"train: {report.summary()}")
    callbacks = []
    if train.select_best_on_validation:
        _check_validation_role(spec)
        pairs = _self_pairs(spec, splits["validation"][: train.max_eval_samples])
        callbacks.append(_validation_callback(network, loaded, spec, pairs, "target", train))
    collator = PairedCollator.for_tokenizer(loaded.tokenizer)
    test_pairs = _self_pairs(spec, splits["test"][: train.max_eval_samples])
    with _started(run_dir, config):
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
        _evaluate(network, loaded, spec, test_pairs, "target", train, run_dir, summary)
    _link_latest(run_dir, "finetune")
    return run_dir


@without_expected_warnings
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
    adapter: AdapterConfig = DEFAULT_ADAPTER,
    train: TrainConfig = DEFAULT_TRAIN,
    resume: bool = True,
    name: str | None = None,
) -> Path:
    """Stage 2: transfer the stage-1 model to one target language with one method and score it on its test set.

    zero-shot and translate-test evaluate the stage-1 model; lora, input-fusion, flare, flare-mt and x-mixup train
    a new adapter on translated data first; ensemble averages the lora run (made first if missing) with
    translate-test. Prints the run folder last; <output>/latest-transfer links to it.

    Args:
        model: The base model of the stage-1 run (a hub name or a local folder).
        task: A built-in task (xnli, tydiqa, nusax) or a task spec file (.yaml/.json).
        language: Target language; one of the task's languages.
        method: zero-shot, translate-test, lora, input-fusion, x-mixup, ensemble, flare or flare-mt
            (translate-test and ensemble: classification tasks only; x-mixup: encoders only).
        stage1: The stage-1 run folder that flare-xlt finetune wrote, e.g. runs/latest-finetune.
        output: Folder that receives the run folder.
        data: Where the target test set and the English splits come from: hub, or a folder of the original release
            files.
        stage1_mode: How the stage-1 adapter is kept: auto (frozen on 4-bit bases, merge otherwise), merge (folded
            into the base) or frozen (a frozen LoRA under the new one).
        architecture: auto (from the model's config), encoder, decoder or seq2seq.
        trainable: The new adapter's trained modules: lora, lora+head or lora+head+embeddings.
        load_in_4bit: Load the base in 4-bit NF4 with bitsandbytes (GPU).
        adapter: The new adapter's settings (methods that train).
        train: Training settings.
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
    spec = get_task(task)
    spec.check_language(language)
    transfer_method = get_method(method)
    transfer_method.check_fit(spec.kind, None if architecture == "auto" else architecture)
    stage1_mode = resolve_stage1_mode(stage1_mode, load_in_4bit)
    if transfer_method.needs_translations and translations is None:
        raise ValueError(f"Method {method!r} needs --translations (the folder written by flare-xlt translate).")
    if transfer_method.needs_mt_states and mt_states is None:
        raise ValueError(f"Method {method!r} needs --mt_states (a folder with train/ and test/ state stores).")
    stage1_adapter = _check_stage1(Path(stage1), model, spec)
    settings = (model, task, language, method, stage1, translations, output, data, mt_states, stage1_mode)
    run_dir, config = transfer_run(*settings, architecture, trainable, load_in_4bit, adapter, train, name)
    if _finished(run_dir, config):
        _link_latest(run_dir, "transfer")
        return run_dir
    if transfer_method.reuses is not None:  # the run it reads, made first if missing (skipped when finished)
        reused = (transfer_method.reuses, *settings[4:])
        transfer(model, task, language, *reused, architecture, trainable, load_in_4bit, adapter, train, resume)
    # The translated files this method reads, each checked here, before any model loads.
    source = spec.source_language
    translated = {
        role: _translation_file(Path(translations), spec, role, *((source, language) if out else (language, source)))
        for role, out in transfer_method.translation_roles(train.select_best_on_validation).items()
    }
    loaded = _load(model, spec, architecture, load_in_4bit, train)
    transfer_method.check_fit(spec.kind, loaded.architecture)
    trains_adapter = transfer_method.trains
    if trains_adapter:
        _check_target_modules(loaded.model, adapter.target_modules, model)
    network = _stage1_model(loaded, stage1_adapter, model, stage1_mode, trains_adapter)
    view = transfer_method.view
    test_pairs = _target_pairs(spec, language, "test", data, translated.get("test"), train.max_eval_samples)
    states = None
    if transfer_method.reuses is not None:
        reused_dir = run_dir.parent / config["reuses"]
        reused_loaded = _load(model, spec, architecture, load_in_4bit, train)
        reused_config = json.loads((reused_dir / "config.json").read_text(encoding="utf-8"))
        reused_model = _run_model(reused_loaded, reused_dir, reused_config, model, spec)
        encoder = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, view, train.max_length)
        network = transfer_method.combine(network, reused_model, encoder)
    if trains_adapter:
        store = EncoderStateStore(Path(mt_states) / "train") if transfer_method.needs_mt_states else None
        # The training features; for FLARE-MT also the reader whose text the encoder states must cover.
        state_reader = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, view, train.max_length)
        if store is not None:  # the test states are read after training: check them before it
            states = EncoderStateStore(Path(mt_states) / "test")
            _check_states(states, state_reader, test_pairs)
        flare_config = adapter.flare_config(
            transfer_method.fusion(adapter.fusion),
            loaded.head_modules(spec, trainable),
            store.d_model if store else None,
        )
        # A new adapter on the stage-1 model (merged or kept frozen), in what the method trains around it.
        network = transfer_method.wrap(get_flare_model(network, flare_config, stage1=stage1_mode))
        english = load_task_splits(spec, source, ["train"], data)["train"]
        train_pairs = pair_views(spec, load_record_file(spec, translated["train"]), english)
        train_pairs = train_pairs[: train.max_train_samples]
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
                load_record_file(spec, translated["validation"]),
                load_task_splits(spec, source, ["validation"], data)["validation"],
            )[: train.max_eval_samples]
            validation_states = None
            if store is not None:
                validation_states = EncoderStateStore(Path(mt_states) / "validation")
                _check_states(validation_states, state_reader, validation)
            callbacks.append(_validation_callback(network, loaded, spec, validation, view, train, validation_states))
    summary = {
        "task": spec.name,
        "method": name or method,
        "seed": train.seed,
        "language": language,
        "config_hash": run_dir.name.rsplit("-", 1)[1],
    }
    with _started(run_dir, config):
        if trains_adapter:
            _train(network, features, train, run_dir, collator, callbacks, resume)
            _save_adapter(network, run_dir)
            summary = {**(callbacks[0].summary() if callbacks else {}), **summary}
        _evaluate(network, loaded, spec, test_pairs, view, train, run_dir, summary, states)
    _link_latest(run_dir, "transfer")
    return run_dir


# What `evaluate` writes next to predictions.jsonl: not metrics.json, which marks a finished run, so that a report
# over a folder holding evaluations does not count one as a second run of its method.
EVALUATION_NAME = "evaluation.json"
SAVED_ADAPTER = "saved-adapter"  # the `stage` of an adapter folder that no run of this pipeline recorded


@without_expected_warnings
def evaluate(
    run: Path,
    language: str | None = None,
    split: str = "test",
    output: Path | None = None,
    data: str | None = None,
    translations: Path | None = None,
    mt_states: Path | None = None,
    model: str | None = None,
    task: str | None = None,
    stage1: Path | None = None,
    max_length: int | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
) -> dict:
    """Score a finished run, or a saved FLARE adapter, on one language and split; print or write the scores.

    The run's model is rebuilt as it was scored (base model, stage-1 adapter, the run's adapter) and reads the split
    as its method does. Evaluating a run on its own language and test split reproduces its metrics.json. Returns the
    scores as metrics.json holds them, with `split` and `evaluated` (the run folder) added.

    Args:
        run: A run folder that flare-xlt finetune or transfer wrote (or its adapter/), or a folder that
            FlareModel.save_pretrained wrote (then give --model and --task).
        language: The language to score; default: the run's (English for a stage-1 run).
        split: train, validation or test (the task's roles), or a split name of the dataset.
        output: A new folder for predictions.jsonl and evaluation.json (written whole or not at all; a folder of an
            earlier evaluation is replaced). Default: print the scores only.
        data: Where the split comes from: hub, or a folder of the original release files; default: the run's.
        translations: For the methods that read an English translation (translate-test, input-fusion, flare,
            x-mixup): the folder with {task}_{split}_{language}-<source>.jsonl; default: the run's.
        mt_states: For flare-mt: a folder with a state store named after the split; default: the run's.
        model: The base model; default: the run's. Required for a saved adapter.
        task: A built-in task or a task spec file; default: the run's. Required for a saved adapter.
        stage1: A saved adapter: the stage-1 run folder whose adapter is merged into the base first, if any.
        max_length: Tokens per input; default: the run's train.max_length (128 for a saved adapter).
        max_samples: Score the first N examples only; default: the run's train.max_eval_samples (all).
        batch_size: Examples per batch; default: the run's training batch size (32 where it has none).
    """
    run_dir, config = _recorded_run(Path(run), model, task, stage1)
    model = model or config["model"]
    spec = get_task(task or config["task"])
    method = config["method"]
    language = language or config.get("language") or spec.source_language
    spec.check_language(language)
    data = data or config["data"]
    scored_method = get_method(method) if config["stage"] != "finetune" else None
    # A stage-1 run reads the target view, as in its own evaluation.
    view = scored_method.view if scored_method is not None else "target"
    translated = None
    if scored_method is not None and scored_method.reads_test_translation:
        translations = translations or config.get("translations")
        if translations is None:
            raise ValueError(f"A {method} run reads the split's translation into English: give --translations.")
        translated = _translation_file(Path(translations), spec, split, language, spec.source_language)
    recorded = config.get("train", {})
    train = TrainConfig(
        **{
            **recorded,
            "max_length": max_length or recorded.get("max_length", DEFAULT_TRAIN.max_length),
            "max_eval_samples": max_samples or recorded.get("max_eval_samples"),
            "eval_batch_size": batch_size,
        }
    )
    pairs = _target_pairs(spec, language, split, data, translated, train.max_eval_samples)
    states = None
    loaded = _load(model, spec, config["architecture"], config["load_in_4bit"], train)
    if scored_method is not None and scored_method.needs_mt_states:
        folder = mt_states or config.get("mt_states")
        if folder is None:
            raise ValueError("A flare-mt run reads encoder states: give --mt_states.")
        states = EncoderStateStore(Path(folder) / split)
        _check_states(states, TaskEncoder(spec, loaded.tokenizer, loaded.architecture, view, train.max_length), pairs)
    network = _run_model(loaded, run_dir, config, model, spec)
    summary = {
        "task": spec.name,
        "method": config.get("variant") or method,
        "seed": train.seed,
        "language": language,
        "split": split,
        "evaluated": str(run_dir),
        "run": run_dir.name,
    }
    rows, metrics = _evaluation(network, loaded, spec, pairs, view, train, summary, states)
    if output is None:
        headline = metrics["scores"]["average"][metrics["metric"]]
        print(f"{run_dir.name} on {language} {split}: {metrics['metric']} {headline:.4f}")
        print(json.dumps(metrics["scores"], indent=2))
    else:
        _check_evaluation_folder(Path(output))
        replace_directory_atomically(output, lambda folder: _write_evaluation(folder, rows, metrics, EVALUATION_NAME))
    return metrics


def _recorded_run(path: Path, model: str | None, task: str | None, stage1: Path | None) -> tuple[Path, dict]:
    """(the run folder, the config it recorded) of a run folder or its adapter/; for an adapter saved outside a run,
    (its folder, the settings of a FLARE adapter on `model`, merged onto `stage1` if given)."""
    for folder in (path, path.parent) if path.name == "adapter" else (path,):
        config_path = folder / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            if config.get("stage") in ("finetune", "transfer"):  # not a model's config.json
                return folder, {"method": "finetune", **config}
    if not (path / "flare_config.json").is_file():
        raise FileNotFoundError(
            f"{path} is neither a run folder (with the config.json flare-xlt finetune or transfer writes) nor a "
            "FLARE adapter folder (with flare_config.json)."
        )
    if model is None or task is None:
        raise ValueError(f"{path} is a saved FLARE adapter, not a run folder: give --model and --task.")
    flare_config = FlareConfig.load(path)
    fuses, reads_states = flare_config.fusion is not None, flare_config.mt_source_dim is not None
    method = next(  # the first method, in registry order, that trains such an adapter
        name
        for name, candidate in REGISTRY.items()
        if candidate.trains and candidate.fuses == fuses and candidate.needs_mt_states == reads_states
    )
    return path, {
        "stage": SAVED_ADAPTER,
        "model": model,
        "task": task,
        "method": method,
        "stage1": str(stage1) if stage1 is not None else None,
        "stage1_mode": "merge",
        "data": "hub",
        "architecture": "auto",
        "load_in_4bit": False,
    }


def _run_model(loaded, run_dir: Path, config: dict, model_name: str, task: TaskSpec) -> torch.nn.Module:
    """The model a run scored: its stage-1 adapter on the base, and the run's own adapter, as the run built them."""
    adapter = run_dir if config["stage"] == SAVED_ADAPTER else run_dir / "adapter"
    if config["stage"] == "finetune":
        return _load_stage1(loaded, adapter, model_name)
    scored_method = get_method(config["method"])
    trained = scored_method.trains
    network = loaded.model
    if config["stage1"] is not None:
        stage1_adapter = _check_stage1(Path(config["stage1"]), model_name, task)
        network = _stage1_model(loaded, stage1_adapter, model_name, config["stage1_mode"], trained)
    if scored_method.reuses is not None:
        reused_dir = run_dir.parent / config["reuses"]
        reused_config = json.loads((reused_dir / "config.json").read_text(encoding="utf-8"))
        reused_loaded = load_model(model_name, task, config["architecture"], config["load_in_4bit"])
        reused = _run_model(reused_loaded, reused_dir, reused_config, model_name, task)
        max_length = config["train"].get("max_length", DEFAULT_TRAIN.max_length)
        encoder = TaskEncoder(task, loaded.tokenizer, loaded.architecture, scored_method.view, max_length)
        return scored_method.combine(network, reused, encoder)
    if not trained:
        return network
    flare = FlareModel.from_pretrained(network, adapter, stage1=config["stage1_mode"])
    if config["stage1"] is None:  # a saved adapter on the bare base: its own modules_to_save must hold the head
        report_untrained(loaded, flare, model_name)
    return scored_method.restore(flare, adapter)


def _check_evaluation_folder(output: Path) -> None:
    """`output` is replaced whole: only an empty folder or an earlier evaluation may be there (not, say, runs/)."""
    if output.exists() and not {entry.name for entry in output.iterdir()} <= {EVALUATION_NAME, "predictions.jsonl"}:
        raise ValueError(
            f"--output {output} exists and holds other files than an evaluation's; evaluate writes a new folder, "
            "which would replace it: give another --output."
        )


def finetune_run(
    model: str,
    task: str,
    output: Path = Path("runs"),
    data: str = "hub",
    architecture: str = "auto",
    trainable: str = "lora",
    load_in_4bit: bool = False,
    adapter: AdapterConfig = DEFAULT_ADAPTER,
    train: TrainConfig = DEFAULT_TRAIN,
) -> tuple[Path, dict]:
    """The run folder `finetune` with these settings writes, and the config it records (nothing is read)."""
    spec = get_task(task)
    config = {
        "stage": "finetune",
        "model": model,
        "task": spec.name,
        "data": data,
        "architecture": architecture,
        "trainable": trainable,
        "load_in_4bit": load_in_4bit,
        "adapter": {name: value for name, value in asdict(adapter).items() if name in STAGE1_ADAPTER_SETTINGS},
        "train": _result_settings(train),
    }
    return run_directory(output, f"{spec.name}-{spec.source_language}-finetune-seed{train.seed}", config), config


def transfer_run(
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
    adapter: AdapterConfig = DEFAULT_ADAPTER,
    train: TrainConfig = DEFAULT_TRAIN,
    name: str | None = None,
) -> tuple[Path, dict]:
    """The run folder `transfer` with these settings writes, and the config it records (nothing is read). Only what
    changes the method's result enters the config (and its hash), so the same run asked for again is found."""
    spec, transfer_method = get_task(task), get_method(method)
    trains_adapter = transfer_method.trains
    config = {
        "stage": "transfer",
        "model": model,
        "task": spec.name,
        "language": language,
        "method": method,
        "stage1": str(stage1),
        "translations": str(translations) if transfer_method.needs_translations else None,
        "data": data,
        "mt_states": str(mt_states) if transfer_method.needs_mt_states else None,
        "stage1_mode": resolve_stage1_mode(stage1_mode, load_in_4bit),
        "architecture": architecture,
        "trainable": trainable if trains_adapter else None,
        "load_in_4bit": load_in_4bit,
        "adapter": transfer_method.hashed_adapter(asdict(adapter)),
        "train": _result_settings(train, trains_adapter),
    }
    if transfer_method.reuses is not None:  # the run it reads: its folder name holds that run's settings
        reused = (transfer_method.reuses, stage1, translations, output, data, mt_states, stage1_mode, architecture)
        config["reuses"] = transfer_run(model, task, language, *reused, trainable, load_in_4bit, adapter, train)[0].name
    if name is not None:
        config["variant"] = name
    return run_directory(output, f"{spec.name}-{language}-{name or method}-seed{train.seed}", config), config


def _check_stage1(stage1: Path, model: str, task: TaskSpec) -> Path:
    """The stage-1 run's adapter folder. A transfer run, or a stage-1 run of another base model or task, would be
    loaded without complaint and trained on: refused, by the config.json the run wrote."""
    adapter = stage1 / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter / 'adapter_config.json'} not found: --stage1 must be a stage-1 run directory, as flare-xlt "
            "finetune writes it."
        )
    config_path = stage1 / "config.json"
    if not config_path.is_file():  # an adapter folder laid out by hand: nothing to check it against
        return adapter
    recorded = json.loads(config_path.read_text(encoding="utf-8"))
    if recorded.get("stage") != "finetune":
        raise ValueError(
            f"--stage1 {stage1} is a {recorded.get('stage')} run ({recorded.get('method')}), not a stage-1 run: give "
            "the folder flare-xlt finetune wrote (its name holds -finetune-)."
        )
    mismatched = [
        f"{name} {recorded[name]!r}, not {asked!r}"
        for name, asked in (("model", model), ("task", task.name))
        if _canonical(recorded[name], name) != _canonical(asked, name)
    ]
    if mismatched:
        raise ValueError(f"--stage1 {stage1} was trained with {' and '.join(mismatched)}: use its stage-1 run.")
    return adapter


def _translation_file(translations: Path, task: TaskSpec, role: str, source: str, target: str) -> Path:
    """A translated file this run reads; a missing one is named with the command that writes it."""
    path = translations / output_name(task, role, source, target)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. Write it with: flare-xlt translate --task {task.name} --src {source} --tgt {target} "
            f"--splits '[{role}]' --output {translations}"
        )
    return path


def _link_latest(run_dir: Path, stage: str) -> None:
    """<output>/latest-<stage> points at the stage's newest run, so scripts need no glob over hashes."""
    if not _is_main_process():
        return
    link = run_dir.parent / f"latest-{stage}"
    # One staging name per process: runs made side by side (flare-xlt run with workers) link at the same time.
    staging = link.with_name(f".{link.name}.staging-{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(staging, link)  # atomic: a reader sees the old link or the new one


def _check_validation_role(task: TaskSpec) -> None:
    if task.splits["validation"] == task.splits["test"]:
        raise ValueError(
            f"{task.name} uses its {task.splits['test']!r} split as the test set, so it has no separate validation "
            "set to select on; turn select_best_on_validation off (the paper does not select for it either)."
        )


# How a run is carried out, checkpointed and logged, never what it computes: outside its config and hash, so that
# changing them finds the same run (and resumes or skips it) instead of training a second one.
NOT_RESULT_SETTINGS = (
    "save_steps",
    "report_to",
    "logging_steps",
    "eval_batch_size",
    "dataloader_num_workers",
    "source_cache",  # the same source tensors, computed once (up to the rounding of another batch's shapes)
    "source_cache_max_gb",
)
# All that the evaluation-only methods (zero-shot, translate-test) read of the training settings.
EVALUATION_SETTINGS = ("seed", "max_length", "max_eval_samples")


def _result_settings(train: TrainConfig, trains: bool = True) -> dict:
    """The training settings that enter a run's config and hash."""
    kept = [
        name for name in asdict(train) if name not in NOT_RESULT_SETTINGS and (trains or name in EVALUATION_SETTINGS)
    ]
    return {name: getattr(train, name) for name in kept}


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


def _stage1_model(
    loaded: LoadedModel, adapter: Path, model_name: str, stage1_mode: str, trains_adapter: bool
) -> PeftModel | torch.nn.Module:
    """The stage-1 model a transfer method starts from: a new adapter goes on the PeftModel (get_flare_model merges
    or freezes it); an evaluation-only method reads it merged, as the trained methods start from it."""
    network = _load_stage1(loaded, adapter, model_name)
    if not trains_adapter and stage1_mode == "merge":
        # Evaluate the model the trained methods start from: on a 4-bit base a merge re-quantises.
        network = network.merge_and_unload()
    return network


def _target_pairs(
    task: TaskSpec, language: str, role: str, data: str, translated: Path | None, limit: int | None
) -> list[dict]:
    """The first `limit` records of a target-language split, paired with their translation into the source
    language where the method reads it (`translated`), or with themselves."""
    records = load_task_splits(task, language, [role], data)[role]
    if translated is None:
        return _self_pairs(task, records)[:limit]
    return pair_views(task, records, load_record_file(task, translated))[:limit]


def _load_stage1(loaded: LoadedModel, adapter: Path, model_name: str) -> PeftModel:
    try:
        network = PeftModel.from_pretrained(loaded.model, adapter)
    except RuntimeError as error:  # torch's load_state_dict lists every size mismatch
        raise ValueError(f"The stage-1 adapter {adapter} does not fit {model_name}: {error}") from error
    report_untrained(loaded, network, model_name)
    return network


def report_untrained(loaded: LoadedModel, network: PeftModel, model_name: str) -> None:
    """Warn about the weights the base checkpoint lacks (models.load_model keeps transformers' report of them quiet)
    that no adapter of `network` trains or holds, such as a task head missing from a stage-1 adapter: they keep their
    random initialisation, and the scores of a model reading them mean little."""
    kept = {name for config in network.peft_config.values() for name in (config.modules_to_save or [])}
    untrained = [key for key in loaded.newly_initialized if not kept & set(key.split(".")[:-1])]
    if untrained:
        warnings.warn(
            f"{model_name} has no {', '.join(untrained)} and no adapter trains or holds them: they keep their random "
            "initialisation. A stage-1 adapter must save the task head (flare-xlt finetune does).",
            UserWarning,
            stacklevel=2,
        )


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
