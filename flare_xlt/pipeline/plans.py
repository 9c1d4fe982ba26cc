"""Plans: the steps a recipe, or one finetune or transfer command, would take, and what of each exists on the disk
(done, resumable from a checkpoint, or to make); what `--dry_run` prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoints import latest_checkpoint
from .run_folder import CHECKPOINTS


@dataclass(frozen=True)
class PlannedStep:
    kind: str  # translate, mt-states, finetune, transfer
    language: str
    method: str | None = None
    seed: int | None = None
    split: str | None = None  # translate / mt-states: train or validation (English -> target), test (target -> English)


@dataclass(frozen=True)
class StepStatus:
    """A planned step and what exists of it on the disk."""

    step: PlannedStep
    done: bool
    checkpoint: Path | None = None  # an unfinished run's newest checkpoint, which asking for the run resumes from
    resume: bool = True  # False: the run starts over and discards `checkpoint` (finetune/transfer --resume false)


def run_status(step: PlannedStep, run_dir: Path, resume: bool = True) -> StepStatus:
    """Whether the run of `step` in `run_dir` is finished, and else the checkpoint it would resume from, read from
    the disk without changing it."""
    if (run_dir / "metrics.json").exists():  # written last: the run is finished
        return StepStatus(step, True)
    return StepStatus(step, False, latest_checkpoint(run_dir / CHECKPOINTS), resume)


def describe_plan(status: list[StepStatus], every_step: bool = False) -> str:
    """What a recipe (or one finetune or transfer command) will do: per kind of step, how many there are, how many
    exist already and how many resume from a checkpoint; with `every_step` also one line per step."""
    kinds = {
        "translate": "translations",
        "mt-states": "FLARE-MT state stores",
        "finetune": "stage-1 runs",
        "transfer": "transfer runs",
    }
    counts = []
    for kind, noun in kinds.items():
        steps = [entry for entry in status if entry.step.kind == kind]
        if steps:
            done = sum(entry.done for entry in steps)
            resuming = sum(_resumes(entry) for entry in steps)
            resumable = f", {resuming} resuming from a checkpoint" if resuming else ""
            counts.append(f"{len(steps)} {noun} ({done} done, {len(steps) - done} to make{resumable})")
    lines = [f"plan: {'; '.join(counts)}"]
    if every_step:
        lines += [
            f"  {'done ' if entry.done else 'to do'}  {describe_step(entry.step)}{_resumption(entry)}"
            for entry in status
        ]
    return "\n".join(lines)


def _resumes(entry: StepStatus) -> bool:
    return entry.checkpoint is not None and entry.resume


def _resumption(entry: StepStatus) -> str:
    if entry.checkpoint is None:
        return ""
    if entry.resume:
        return f" (resumes from {entry.checkpoint.name})"
    return f" (starts over: --resume false discards {entry.checkpoint.name})"


def describe_step(step: PlannedStep) -> str:
    details = [step.method, step.split, f"seed {step.seed}" if step.seed is not None else None]
    return " ".join([step.kind, step.language, *(detail for detail in details if detail is not None)])
