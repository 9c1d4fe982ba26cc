"""Resumable training: whole checkpoints of the trainable state, resumption with the HF Trainer, and a loud stop on a
non-finite loss or weight.

A checkpoint is `checkpoints/checkpoint-<step>/` in the run directory. It holds only what training changes: the
trainable parameters (`trainable.safetensors`: LoRA, FLARE extras such as the MT projection and cross-attention, the
trained heads, the X-Mixup gates), the optimizer, scheduler and RNG states, the Trainer's state and the state of
callbacks that carry one (checkpoint selection on validation). It is written under a hidden name and renamed whole,
so a folder named `checkpoint-<step>` is always complete; only the newest is kept. Resuming through the Trainer
restores the data order, learning-rate schedule and RNG streams, so on a CPU a resumed run ends bit for bit where an
uninterrupted one does.

A NaN or infinite loss stops training before that step's update, and non-finite weights are never written into a
checkpoint: the newest checkpoint on disk is always one from before the failure.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import NoReturn

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..io import replace_directory_atomically

TRAINABLE_WEIGHTS_NAME = "trainable.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")


class NonFiniteTrainingError(FloatingPointError):
    """The training loss or the trainable weights became NaN or infinite; training stopped, checkpoints kept."""


class CheckpointedCallback(TrainerCallback):
    """A callback whose state is part of a checkpoint, so that a resumed run continues it."""

    def save_state(self, directory: Path) -> None:
        raise NotImplementedError

    def load_state(self, directory: Path) -> None:
        raise NotImplementedError


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains, by name, as contiguous CPU tensors (what a checkpoint stores)."""
    return {
        name: parameter.detach().to("cpu", copy=True).contiguous()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def load_trainable_state(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy `weights` into the trainable parameters of `model`; names and shapes must match exactly."""
    trainable = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    missing = sorted(set(trainable) - set(weights))
    unexpected = sorted(set(weights) - set(trainable))
    mismatched = [
        f"{name}: {tuple(weights[name].shape)} in the checkpoint, {tuple(parameter.shape)} in the model"
        for name, parameter in trainable.items()
        if name in weights and weights[name].shape != parameter.shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source} does not fit the model being trained: {len(missing)} missing parameters (first: "
            f"{missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]}), {len(mismatched)} of another "
            f"shape (first: {mismatched[:3]})."
        )
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(weights[name])


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint in `directory`, if any. Hidden leftovers of an interrupted write (a staging
    folder, or a replaced checkpoint not yet deleted) are never chosen."""
    if not directory.is_dir():
        return None
    steps = {step: path for path in directory.iterdir() if (step := checkpoint_step(path)) is not None}
    return steps[max(steps)] if steps else None


class CheckpointSchedule(TrainerCallback):
    """Checkpoint every `every` optimizer steps and at the end of every epoch.

    A step that ends an epoch, or training, is saved after `on_epoch_end` rather than before it, so that the
    checkpoint already holds that epoch's validation score: resuming from it never skips or repeats an evaluation.
    """

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, args, state, control, **kwargs):
        ends_epoch = float(state.epoch).is_integer() or state.global_step >= state.max_steps
        if state.global_step % self.every == 0 and not ends_epoch:
            control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_save = True
        return control


class ResumableTrainer(Trainer):
    """The HF Trainer with whole checkpoints of the trainable state only, and a stop on a non-finite loss or weight.

    The Trainer's own checkpoints hold the whole model for a model that is not a PeftModel (X-Mixup) and go through
    each model's save_pretrained; the trainable parameters by name cover every model the pipeline trains alike.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        path = Path(output_dir or self.args.output_dir) / TRAINABLE_WEIGHTS_NAME
        save_file(trainable_state(self.model), str(path), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        checkpoint = Path(resume_from_checkpoint)
        weights_path = checkpoint / TRAINABLE_WEIGHTS_NAME
        load_trainable_state(model or self.model, load_file(weights_path), str(weights_path))
        for callback in self._checkpointed_callbacks():
            callback.load_state(checkpoint)

    def _save_checkpoint(self, model: torch.nn.Module, trial) -> None:
        broken = [
            name
            for name, parameter in self.model.named_parameters()
            if parameter.requires_grad and not torch.isfinite(parameter).all()
        ]
        if broken:
            self._stop(
                f"{len(broken)} trainable parameters hold NaN or infinite values after step {self.state.global_step} "
                f"(first: {broken[:3]}), so no checkpoint is written for it."
            )
        self.store_flos()  # a collective under torchrun: every process takes part
        if not self.args.should_save:  # the first process writes the checkpoint
            return
        folder = Path(self.args.output_dir)

        def write(staging: Path) -> None:
            self._save(str(staging))
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))
            for callback in self._checkpointed_callbacks():
                callback.save_state(staging)
            self.state.save_to_json(str(staging / TRAINER_STATE_NAME))

        newest = folder / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        replace_directory_atomically(newest, write)
        for path in folder.iterdir():
            if path != newest and checkpoint_step(path) is not None:
                shutil.rmtree(path)

    def training_step(self, model: torch.nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            self._stop(
                f"The training loss is {loss.item()} at step {self.state.global_step + 1} (epoch "
                f"{self.state.epoch or 0:.2f}); training stopped before this step's update."
            )
        return loss

    def _stop(self, reason: str) -> NoReturn:
        kept = latest_checkpoint(Path(self.args.output_dir))
        raise NonFiniteTrainingError(
            f"{reason} The newest checkpoint is kept: {kept if kept is not None else 'none was written yet'}. Lower "
            "--train.learning_rate, or look for broken examples in the training data."
        )

    def _checkpointed_callbacks(self) -> list[CheckpointedCallback]:
        return [callback for callback in self.callback_handler.callbacks if isinstance(callback, CheckpointedCallback)]
