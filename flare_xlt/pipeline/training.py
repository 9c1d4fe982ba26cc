"""Training a run's adapter with the HF Trainer: checkpoints and resume, the source cache and its pre-pass,
length-grouped batches, best-on-validation selection, loggers and the progress bar."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback, TrainingArguments

from ..adapter.model import FlareModel
from ..adapter.source_cache import FlushSourceCache, SourceCache, open_source_cache
from ..adapter.source_prepass import fill_source_cache, paired_length
from ..xmixup import XMixupModel
from .checkpoints import (
    TRAINER_STATE_NAME,
    CheckpointedCallback,
    CheckpointSchedule,
    ResumableTrainer,
    latest_checkpoint,
)
from .phases import phase
from .run_folder import CHECKPOINTS, LOGS, SOURCE_CACHE, is_main_process, write_json
from .settings import TrainConfig

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


@phase("train")
def train_adapter(
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
    cache = _source_cache(model, features, config, run_dir, arguments, collator)
    if cache is not None:
        schedule.append(FlushSourceCache(cache))
        if config.source_prepass:
            schedule.append(SourcePrepass(model, features, collator, config, _run_label(run_dir)))
    logs.mkdir(parents=True, exist_ok=True)
    with _loggers_writing_into(logs):  # TensorBoard's callback reads its folder when the Trainer builds it
        trainer = GroupedTrainer(
            lengths=[paired_length(feature) for feature in features] if config.group_by_length else None,
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
        if is_main_process():
            shutil.rmtree(run_dir / SOURCE_CACHE, ignore_errors=True)
    if is_main_process():  # the loss and validation history, which outlive checkpoints/
        write_json(logs / TRAINER_STATE_NAME, asdict(trainer.state))


def _source_cache(
    model, features: list[dict], config: TrainConfig, run_dir: Path, arguments: TrainingArguments, collator
) -> SourceCache | None:
    """The source cache `config` asks for, attached to a FLARE model; None when off or when the method runs no
    source pass (LoRA, input-level fusion, FLARE-MT, X-Mixup: said once, as a recipe sets it for every method)."""
    if config.source_cache == "off":
        return None
    if not (isinstance(model, FlareModel) and model.fused_modules and model.flare_config.mt_source_dim is None):
        if is_main_process():
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
        announce=is_main_process(),
        collate=collator,
    )


class SourcePrepass(TrainerCallback):
    """Fill the source cache before the first step (adapter/source_prepass.py), once the Trainer has placed the model
    where it trains. A run resumed after its last step trains nothing and skips it."""

    def __init__(self, model, features: list[dict], collator, config: TrainConfig, label: str) -> None:
        self.model, self.features, self.collator, self.config, self.label = model, features, collator, config, label

    @phase("source pre-pass")
    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step < state.max_steps:
            fill_source_cache(
                self.model,
                self.features,
                self.collator,
                self.config.source_prepass_tokens,
                autocast=torch.bfloat16 if self.config.bf16 else None,
                rank=args.process_index,
                world_size=args.world_size,
                label=f"{self.label}: source pre-pass",
                progress=state.is_world_process_zero,
            )
        return control


GROUP_WINDOW_BATCHES = 50  # batches whose examples are sorted by length together (the HF Trainer's megabatch)


class LengthGroupedSampler(Sampler[int]):
    """An epoch's indices in batches of similar length, in a random order of batches.

    A permutation of the examples, seeded by (seed, epoch), is cut into windows of GROUP_WINDOW_BATCHES batches; each
    window is sorted by length and cut into batches of `batch_size`; the full batches are shuffled, and a short last
    batch stays last, so that a DataLoader with this batch size cuts the same batches. Every epoch holds each example
    once. The order depends on the epoch (set_epoch, which the Trainer calls) and not on any random state, so a
    resumed run skips exactly the batches it trained.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        window = self.batch_size * GROUP_WINDOW_BATCHES
        batches = []
        for start in range(0, len(order), window):
            grouped = sorted(order[start : start + window], key=self.lengths.__getitem__)
            batches += [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return iter([index for batch in [*shuffled, short] for index in batch])


class GroupedTrainer(ResumableTrainer):
    """ResumableTrainer whose training batches group examples of similar `lengths` (LengthGroupedSampler); None:
    the Trainer's random batches.

    The Trainer's own group_by_length reads lengths from a datasets column or from input_ids alone, and draws its
    order from the global random state, which a resumed run restores at its checkpoint, not at the epoch's start."""

    def __init__(self, *args, lengths: list[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = lengths

    def get_train_dataloader(self) -> DataLoader:
        if self.lengths is None:
            return super().get_train_dataloader()
        batch_size = self.args.train_batch_size
        loader = DataLoader(
            self.train_dataset,
            batch_size=batch_size,
            sampler=LengthGroupedSampler(self.lengths, batch_size, self.args.seed),
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            drop_last=self.args.dataloader_drop_last,
        )
        return self.accelerator.prepare(loader)


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
