"""Run folders: a run's name and config hash, its lifecycle on disk (started, finished, interrupted), the
latest-* links, and the settings that enter its config."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from .. import __version__
from ..io import replace_directory_atomically, write_text_atomic
from ..methods import STAGE1_ADAPTER_SETTINGS, get_method
from ..tasks import get_task
from .checkpoints import (
    latest_checkpoint,
)
from .loading import detect_architecture
from .phases import phase
from .pooling import resolve_pooling
from .settings import TrainConfig, resolve_stage1_mode

CHECKPOINTS = "checkpoints"


SOURCE_CACHE = "source_cache"  # the disk source cache: kept while the run is unfinished, so a resumed run reads it


LOGS = "logs"  # the Trainer's loggers and its trainer_state.json (loss and validation history); kept after the run


PATH_SETTINGS = ("model", "data", "stage1", "translations", "mt_states")


def canonical_settings(value, key: str = ""):
    """One spelling per setting, so the same run asked for from a recipe or the CLI gets one hash: numbers as floats,
    path settings that name an existing file or folder as absolute paths."""
    if isinstance(value, dict):
        return {name: canonical_settings(item, name) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_settings(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if key in PATH_SETTINGS and value is not None and Path(value).exists():
        return str(Path(value).resolve())
    return value


def run_directory(output: Path, name: str, config: dict) -> Path:
    canonical = json.dumps(canonical_settings(config), sort_keys=True, default=str)
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


def write_json(path: Path, value: dict) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def finished(run_dir: Path, config: dict) -> bool:
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
    differences = _differences(canonical_settings(recorded), canonical_settings(expected))
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
def started(run_dir: Path, config: dict) -> Iterator[None]:
    """config.json and environment.json come first, so that an interrupted run is recognised when asked again. A
    run that stops before its first checkpoint has nothing to resume: its folder is removed, so a failed start leaves
    nothing behind; a run that checkpointed keeps its folder for the resume."""
    if is_main_process():
        write_json(run_dir / "config.json", config)
        write_json(run_dir / "environment.json", environment())
    try:
        yield
    except BaseException as error:
        checkpoint = latest_checkpoint(run_dir / CHECKPOINTS)
        finished = (run_dir / "metrics.json").exists()  # interrupted while printing its score: keep it
        if checkpoint is None and not finished and is_main_process():
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(error, KeyboardInterrupt):
            raise RunInterrupted(
                f"interrupted; run the same command to resume {run_dir.name} from {checkpoint.name}"
                if checkpoint is not None
                else f"interrupted before {run_dir.name} wrote a checkpoint; run the same command to start it again"
            ) from None
        raise


@phase("save")
def save_adapter(model: torch.nn.Module, run_dir: Path) -> None:
    if is_main_process():
        replace_directory_atomically(run_dir / "adapter", model.save_pretrained)


def is_main_process() -> bool:
    """Under torchrun every process trains; only the first evaluates and writes the run's files."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def link_latest(run_dir: Path, stage: str) -> None:
    """<output>/latest-<stage> points at the stage's newest run, so scripts need no glob over hashes."""
    if not is_main_process():
        return
    link = run_dir.parent / f"latest-{stage}"
    # One staging name per process: runs made side by side (flare-xlt run with workers) link at the same time.
    staging = link.with_name(f".{link.name}.staging-{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(staging, link)  # atomic: a reader sees the old link or the new one


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
    "source_prepass",  # the same rows as the first epoch would compute, only sooner and in other batches
    "source_prepass_tokens",
)


# All that the evaluation-only methods (zero-shot, translate-test) read of the training settings.
EVALUATION_SETTINGS = ("seed", "max_length", "max_eval_samples")


def result_settings(train: TrainConfig, trains: bool = True, also: tuple[str, ...] = ()) -> dict:
    """The training settings that enter a run's config and hash: all that change a result for a run that trains,
    else the evaluation settings and `also` (those a method that trains no adapter reads besides)."""
    read = (*EVALUATION_SETTINGS, *also)
    kept = [name for name in asdict(train) if name not in NOT_RESULT_SETTINGS and (trains or name in read)]
    return {name: getattr(train, name) for name in kept}


def finetune_run(settings: Mapping[str, Any]) -> tuple[Path, dict]:
    """The run folder `finetune` writes, and the config it records (nothing is read but what `auto` pooling
    resolves from). `settings`: the arguments of `finetune` by name (`resume` is not read)."""
    spec, train = get_task(settings["task"]), settings["train"]
    config = {
        "stage": "finetune",
        "model": settings["model"],
        "task": spec.name,
        **{name: settings[name] for name in ("data", "architecture", "trainable", "load_in_4bit")},
        "pooling": finetune_pooling(settings),
        "adapter": {name: getattr(settings["adapter"], name) for name in STAGE1_ADAPTER_SETTINGS},
        "train": result_settings(train),
    }
    name = f"{spec.name}-{spec.source_language}-finetune-seed{train.seed}"
    return run_directory(settings["output"], name, config), config


def finetune_pooling(settings: Mapping[str, Any]) -> str | None:
    """The resolved pooling of a stage-1 run (pooling.py), from the arguments of `finetune`; transfers and
    evaluations read it from the stage-1 run's config.json, never resolving it again."""
    architecture, model = settings["architecture"], settings["model"]
    kind = get_task(settings["task"]).kind
    if architecture == "auto" and kind == "classification":  # only an encoder's classification head pools
        architecture = detect_architecture(model)
    return resolve_pooling(settings["pooling"], model, kind, architecture)


def recorded_train_samples(stage1: Path, default: int | None) -> int | None:
    """The English training examples the stage-1 run read (its recorded train.max_train_samples; None: all of
    them), which the linear probe fits on, so that the floor and stage 1 see the same data; `default` for an adapter
    folder laid out by hand, which records none."""
    config_path = Path(stage1) / "config.json"
    if not config_path.is_file():
        return default
    train = json.loads(config_path.read_text(encoding="utf-8")).get("train")
    if not isinstance(train, dict) or "max_train_samples" not in train:
        return default
    return train["max_train_samples"]


def run_train_settings(transfer_method, stage1: Path, train: TrainConfig) -> TrainConfig:
    """A transfer's training settings as its run records them: a method fitted on the English examples its stage-1
    run read (the linear probe) takes that run's max_train_samples, whatever the transfer's own."""
    if not transfer_method.fits_source_probe:
        return train
    return replace(train, max_train_samples=recorded_train_samples(Path(stage1), train.max_train_samples))


def transfer_run(settings: Mapping[str, Any]) -> tuple[Path, dict]:
    """The run folder `transfer` writes, and the config it records (nothing is read but, for the linear probe, the
    stage-1 run's recorded max_train_samples: run_train_settings). `settings`: the arguments of
    `transfer` by name (`resume` is not read). Only what changes the method's result enters the config (and its
    hash), so the same run asked for again is found."""
    spec, transfer_method = get_task(settings["task"]), get_method(settings["method"])
    train = run_train_settings(transfer_method, settings["stage1"], settings["train"])
    trains_adapter = transfer_method.trains
    paths = {"translations": transfer_method.needs_translations, "mt_states": transfer_method.needs_mt_states}
    config = {
        "stage": "transfer",
        "model": settings["model"],
        "task": spec.name,
        **{name: settings[name] for name in ("language", "method")},
        "stage1": str(settings["stage1"]),
        **{name: str(settings[name]) if reads else None for name, reads in paths.items()},
        "data": settings["data"],
        "stage1_mode": resolve_stage1_mode(settings["stage1_mode"], settings["load_in_4bit"]),
        "architecture": settings["architecture"],
        "trainable": settings["trainable"] if trains_adapter else None,
        "load_in_4bit": settings["load_in_4bit"],
        "adapter": transfer_method.hashed_adapter(asdict(settings["adapter"])),
        "train": result_settings(train, trains_adapter, transfer_method.train_settings),
    }
    if transfer_method.reuses is not None:  # the run it reads: its folder name holds that run's settings
        config["reuses"] = transfer_run({**settings, "method": transfer_method.reuses, "name": None})[0].name
    label = settings.get("name")
    if label is not None:
        config["variant"] = label
    folder = f"{spec.name}-{settings['language']}-{label or settings['method']}-seed{train.seed}"
    return run_directory(settings["output"], folder, config), config
