"""The settings of a run that the command line groups (--train.*, --adapter.*): plain dataclasses that import no
torch, so that the help and the checks of every option need no model library."""

from __future__ import annotations

import importlib.util
import inspect
import typing
from dataclasses import dataclass, field, fields, make_dataclass

from ..adapter.config import CACHE_MODES, FlareConfig

# Trainer loggers (--train.report_to) that need a package the project does not install, by the extra that installs
# it, and the modules any of which will do.
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def document_fields(cls: type) -> type:
    """Class decorator: the fields' metadata help written into the class docstring's Args section, which help() and
    the command line (jsonargparse reads docstrings) show."""
    arguments = "\n".join(
        f"    {item.name}: {item.metadata['help']}" for item in fields(cls) if "help" in item.metadata
    )
    cls.__doc__ = f"{inspect.cleandoc(cls.__doc__)}\n\nArgs:\n{arguments}"
    return cls


@document_fields
@dataclass(frozen=True)
class TrainConfig:
    """Training settings of a run (--train.*), passed on to the HF Trainer."""

    learning_rate: float = field(default=2e-5, metadata={"help": "Peak learning rate (linear schedule)."})
    batch_size: int = field(default=32, metadata={"help": "Examples per device and step."})
    epochs: float = field(default=3.0, metadata={"help": "Training epochs."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many steps (-1: use epochs)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps with linear warm-up."})
    max_length: int = field(default=128, metadata={"help": "Tokens per input; cuts are counted in the report."})
    seed: int = field(default=42, metadata={"help": "Seed of data order and adapter initialisation."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Steps whose gradients add up before each update (effective batch: x batch_size)."}
    )
    optim: str | None = field(
        default=None,
        metadata={
            "help": "Optimizer, by the Trainer's names (adamw_torch, adamw_torch_fused, adafactor, ...). Default: the "
            "Trainer's default for the installed torch."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N examples only (smoke runs on real data)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Score only the first N validation and test examples (smoke runs)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations; fusion stays on."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)."})
    eval_batch_size: int | None = field(
        default=None, metadata={"help": "Examples per evaluation batch (default: batch_size). Not in the run's hash."}
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "Trainer loggers: none, tensorboard, wandb, ... (comma-separated); they write into <run>/logs. "
            "Not in the run's hash."
        },
    )
    logging_steps: int = field(
        default=10, metadata={"help": "Log the loss every this many steps, to <run>/logs. Not in the run's hash."}
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "Processes that collate training batches. Not in the run's hash."}
    )
    save_steps: int = field(
        default=500,
        metadata={
            "help": "Write a resumable checkpoint every this many steps and at the end of every epoch; 0: none. "
            "Not in the run's hash."
        },
    )
    select_best_on_validation: bool = field(
        default=False,
        metadata={
            "help": "Score the (translated) validation set after every epoch and keep the best adapter, as the paper "
            "selects its checkpoints. Transfer runs read {task}_validation_<source>-{language}.jsonl."
        },
    )
    source_cache: str = field(
        default="off",
        metadata={
            "help": "FLARE: keep each example's source tensors from the first epoch and read them in later ones "
            "instead of running the source pass. off; memory; disk (safetensors shards in <run>/source_cache, kept "
            "for a resumed run). Needs the adapter's source_dropout false. Not in the run's hash."
        },
    )
    source_cache_max_gb: float = field(
        default=8.0,
        metadata={
            "help": "Refuse a source cache whose size estimate (printed first) is larger. Not in the run's hash."
        },
    )
    source_prepass: bool = field(
        default=True,
        metadata={
            "help": "With a source_cache: fill it before training, in one pass over the English side under inference "
            "mode, batches of similar length (source_prepass_tokens); false: fill it in the first epoch, at the "
            "training batches. A killed pass resumes from the disk cache's shards. Not in the run's hash."
        },
    )
    source_prepass_tokens: int = field(
        default=8192,
        metadata={"help": "Padded source tokens per batch of the source pre-pass. Not in the run's hash."},
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch training examples of similar length (the longer of target and source), in a random order "
            "of batches that changes every epoch: less padding, but batches are no longer random samples."
        },
    )

    def __post_init__(self) -> None:
        """Settings that would train nothing or fail inside the Trainer are refused before any run folder exists."""
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ValueError(
                f"epochs must be positive (or max_steps set), got epochs={self.epochs}: nothing would train."
            )
        counts = (
            "batch_size",
            "gradient_accumulation_steps",
            "logging_steps",
            "eval_batch_size",
            "max_train_samples",
            "max_eval_samples",
            "source_prepass_tokens",
        )
        wrong = [f"{name}={value!r}" for name in counts if (value := getattr(self, name)) is not None and value < 1]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: must be a positive integer.")
        if self.save_steps < 0 or self.dataloader_num_workers < 0:
            raise ValueError("save_steps and dataloader_num_workers must be 0 or more.")
        if self.source_cache not in CACHE_MODES:
            raise ValueError(f"Unknown source_cache {self.source_cache!r}; valid choices: {', '.join(CACHE_MODES)}.")
        if not self.source_cache_max_gb > 0:
            raise ValueError(f"source_cache_max_gb must be positive, got {self.source_cache_max_gb!r}.")
        for logger in (name.strip() for name in self.report_to.split(",")):
            modules = LOGGER_PACKAGES.get(logger, ())
            if modules and not any(importlib.util.find_spec(module) for module in modules):
                raise ValueError(
                    f"report_to {logger} needs the {logger} package, which is not installed: "
                    f"pip install 'flare-xlt[{logger}]'."
                )


# FlareConfig's settings that the pipeline decides itself (modules_to_save from --trainable, mt_source_dim from the
# FLARE-MT state stores) or keeps at their defaults; every other FlareConfig setting is an --adapter.* option.
PIPELINE_DECIDES = (
    "modules_to_save",
    "mt_source_dim",
    "cross_attention_dropout",
    "mask_source_padding",
    "fuse_at_inference",
    "causal",
)


@dataclass(frozen=True)
class _AdapterSettings:
    """The methods of AdapterConfig, whose fields are FlareConfig's (see below); a dataclass without fields of its
    own, so that AdapterConfig is a plain dataclass to the command line."""

    def __post_init__(self) -> None:
        self.flare_config(self.fusion)  # FlareConfig's checks, before any model loads

    def flare_config(
        self, fusion: str | None, modules_to_save: list[str] | None = None, mt_source_dim: int | None = None
    ) -> FlareConfig:
        """The FlareConfig of a new adapter with these settings, `fusion` (None: plain LoRA) and what the pipeline
        decides."""
        settings = {item.name: getattr(self, item.name) for item in fields(self)}
        return FlareConfig(
            **{**settings, "fusion": fusion, "modules_to_save": modules_to_save, "mt_source_dim": mt_source_dim}
        )


def _adapter_fields() -> list[tuple[str, type, object]]:
    """FlareConfig's fields, with their types, defaults and help, less those the pipeline decides."""
    types = typing.get_type_hints(FlareConfig)
    return [
        (item.name, types[item.name], field(default=item.default, metadata=item.metadata))
        for item in fields(FlareConfig)
        if item.name not in PIPELINE_DECIDES
    ]


# The new adapter's settings (--adapter.*): FlareConfig's own fields, so a new FLARE setting is one edit (in
# FlareConfig) and reaches the command line, recipes and run configs; stage 1 reads the LoRA ones.
AdapterConfig = document_fields(
    make_dataclass(
        "AdapterConfig",
        _adapter_fields(),
        bases=(_AdapterSettings,),
        frozen=True,
        namespace={
            "__doc__": "The new adapter's settings (--adapter.*): those of FlareConfig that the pipeline does not "
            "decide itself; stage 1 reads the LoRA ones.",
            "__module__": __name__,
        },
    )
)


# The defaults of finetune and transfer (frozen, so one instance serves every call).
DEFAULT_ADAPTER, DEFAULT_TRAIN = AdapterConfig(), TrainConfig()


STAGE1_MODES = ("auto", "merge", "frozen")
# How an encoder's classification head reads the sequence (pooling.py): auto, the first token through the
# architecture's own head, the mean over the real tokens, or the last real token.
POOLINGS = ("auto", "cls", "mean", "last")


def resolve_stage1_mode(stage1_mode: str, load_in_4bit: bool) -> str:
    """auto: frozen on a 4-bit base (merging into it re-quantises: the trained methods would start from another
    model than the evaluation-only ones), merge otherwise (the authors' way)."""
    if stage1_mode not in STAGE1_MODES:
        raise ValueError(f"Unknown stage1_mode {stage1_mode!r}; valid choices: {', '.join(STAGE1_MODES)}.")
    if stage1_mode == "auto":
        return "frozen" if load_in_4bit else "merge"
    return stage1_mode
