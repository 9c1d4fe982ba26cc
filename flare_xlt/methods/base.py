"""What a transfer method is: the data the workflow reads to run, score, hash and report it.

A method declares which view of the examples it reads, which translations it needs, whether it trains a new adapter
(and with which FlareConfig), which adapter settings its result depends on (only those enter its run's hash), and
which tasks and architectures it fits. The workflow (pipeline/, report, demo) reads these and never tests a
method's name. A method that builds its model differently from "a FLARE/LoRA adapter on the stage-1 model"
overrides `wrap` and `restore`.

This module imports no torch, so the command line can list and check methods without loading a model library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ARCHITECTURES = ("encoder", "decoder", "seq2seq")
TASK_KINDS = ("classification", "extractive_qa")
# The adapter settings every method that trains an adapter reads; a stage-1 run reads exactly these.
LORA_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules")
# What FLARE reads in addition: how and where the source fuses.
FUSION_SETTINGS = ("fusion", "fusion_modules", "cross_attention_heads", "pairing", "unpaired")
SOURCE_PASS_SETTINGS = ("source_site", "source_layer_offset", "source_dropout")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str  # one line, for help texts and docs
    view: str  # the examples it reads (tasks.formatting.VIEWS): target, source, input_fusion or paired
    reads_test_translation: bool  # the test set's translation into English
    trains: bool  # trains a new adapter on translated training data
    fuses: bool = False  # the new adapter fuses a source (FLARE); otherwise it is plain LoRA (fusion=None)
    needs_mt_states: bool = False  # reads external encoder states (FLARE-MT) instead of running a source pass
    adapter_settings: tuple[str, ...] = ()  # the AdapterConfig fields its result depends on
    architectures: tuple[str, ...] = ARCHITECTURES
    task_kinds: tuple[str, ...] = TASK_KINDS
    unfit_reason: str = ""  # why it does not run outside its architectures or task kinds
    reuses: str | None = None  # the method whose finished run (same settings) this one reads, if any
    # Fits a head of its own on the frozen base model's features of the English training split (`fit`), instead of
    # reading the stage-1 model; it trains no adapter (the linear probe).
    fits_source_probe: bool = False
    # A method that trains no adapter reads the evaluation settings of TrainConfig (seed, max_length,
    # max_eval_samples); these are the other fields its result depends on, which enter its run's hash too.
    train_settings: tuple[str, ...] = ()

    @property
    def needs_translations(self) -> bool:
        return self.trains or self.reads_test_translation

    def check_fit(self, task_kind: str, architecture: str | None = None) -> None:
        """Refuse a task kind or (when known) an architecture the method does not run on, with the reason."""
        if task_kind not in self.task_kinds:
            kind = task_kind.replace("_qa", " QA").replace("_", " ")
            raise ValueError(f"{self.name} does not run for {kind} tasks: {self.unfit_reason}")
        if architecture is not None and architecture not in self.architectures:
            raise ValueError(f"{self.name} does not run on {architecture} models: {self.unfit_reason}")

    def translation_roles(self, select_best_on_validation: bool) -> dict[str, bool]:
        """Split role -> whether its translation goes out of English (True) or into it (False), for what it reads."""
        roles = {"test": False} if self.reads_test_translation else {}
        if self.trains:
            roles["train"] = True
            if select_best_on_validation:
                roles["validation"] = True
        return roles

    def hashed_adapter(self, adapter: dict) -> dict | None:
        """The adapter settings that enter the run's config and hash: those the method reads (its own adapter's, or
        the reused run's), or None."""
        if not self.adapter_settings:
            return None
        return {name: adapter[name] for name in self.adapter_settings}

    def fusion(self, adapter_fusion: str) -> str | None:
        """The new adapter's FlareConfig.fusion: the recipe's fusion for a fusing method, None (plain LoRA) else."""
        return adapter_fusion if self.fuses else None

    def wrap(self, flare: nn.Module) -> nn.Module:
        """The model that trains, around the new adapter (e.g. X-Mixup's mixing gates); default: the adapter."""
        return flare

    def restore(self, flare: nn.Module, adapter: Path) -> nn.Module:
        """The saved run's model, around its restored adapter, as `wrap` built it."""
        return flare

    def fit(self, base: nn.Module, encoder, pairs: list[dict], pooling: str | None, batch_size: int):
        """A method that `fits_source_probe`: the model it scores, fitted on the frozen `base` encoder's features of
        `pairs` (English training examples) as `encoder` (the run's TaskEncoder) reads them."""
        raise NotImplementedError(f"{self.name} fits no probe; only a method with fits_source_probe does.")

    def combine(self, stage1: nn.Module, reused: nn.Module, encoder):
        """A method that `reuses` another run: the model it scores, from the stage-1 model, the reused run's model
        and the run's TaskEncoder."""
        raise NotImplementedError(f"{self.name} reuses no run; only a method with `reuses` combines models.")
