"""Recipes: a YAML grid of languages x methods x seeds for one model and task, planned and run with skipping."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch

from ..methods import get_method
from ..mt.data import output_name, translate_task, write_encoder_states
from ..mt.translator import Translator
from ..tasks import get_task, load_record_file, load_task_splits
from .loading import load_state_reader
from .plans import PlannedStep, StepStatus, describe_plan, describe_step, run_status
from .recipe_file import Recipe
from .run_folder import finetune_run, transfer_run
from .runs import finetune, transfer


def plan(recipe: Recipe) -> list[PlannedStep]:
    """Every step `run` takes, in order; a step whose output exists is skipped when run."""
    source = get_task(recipe.task).source_language
    steps = []
    for language in recipe.languages:
        # validation (English -> target) is translated only for checkpoint selection.
        splits = ["train", "validation", "test"] if recipe.train.select_best_on_validation else ["train", "test"]
        methods = [get_method(recipe.method_of(name)) for name in recipe.methods]
        if any(method.needs_translations for method in methods):
            steps.extend(PlannedStep("translate", language, split=split) for split in splits)
        if any(method.needs_mt_states for method in methods):
            steps.extend(PlannedStep("mt-states", language, split=split) for split in splits)
    for seed in recipe.seeds:
        steps.append(PlannedStep("finetune", source, seed=seed))
        for language in recipe.languages:
            steps.extend(PlannedStep("transfer", language, method, seed) for method in recipe.methods)
    return steps


def _stage1_settings(recipe: Recipe, seed: int) -> dict:
    """The arguments of `finetune` (and `finetune_run`) for the recipe's stage-1 run of one seed."""
    return {
        "model": recipe.model,
        "task": recipe.task,
        "output": Path(recipe.output),
        "data": recipe.data,
        "architecture": recipe.architecture,
        "trainable": recipe.trainable,
        "load_in_4bit": recipe.load_in_4bit,
        "pooling": recipe.pooling,
        "adapter": recipe.adapter,
        "train": recipe.stage1_train_config(seed),
    }


def _transfer_settings(recipe: Recipe, step: PlannedStep, stage1: Path) -> dict:
    """The arguments of `transfer` (and `transfer_run`) for one transfer step."""
    return {
        "model": recipe.model,
        "task": recipe.task,
        "language": step.language,
        "method": recipe.method_of(step.method),
        "stage1": stage1,
        "translations": Path(recipe.translations),
        "output": Path(recipe.output),
        "data": recipe.data,
        "mt_states": Path(recipe.mt_states) / step.language,
        "stage1_mode": recipe.stage1_mode,
        "architecture": recipe.architecture,
        "trainable": recipe.trainable,
        "load_in_4bit": recipe.load_in_4bit,
        "adapter": recipe.adapter_for(step.method),
        "train": replace(recipe.train, seed=step.seed),
        "name": step.method if step.method in recipe.variants else None,
    }


def _translation_languages(recipe: Recipe, step: PlannedStep) -> tuple[str, str]:
    """(source, target) of a translate step: test sets are translated into English, the rest out of it."""
    source = get_task(recipe.task).source_language
    return (step.language, source) if step.split == "test" else (source, step.language)


def step_status(recipe: Recipe) -> list[StepStatus]:
    """Every planned step with whether its output exists already (a finished run, a translated file, a state
    store) and, for an unfinished run, the checkpoint it resumes from; read from the disk without loading
    anything."""
    task = get_task(recipe.task)
    stage1: dict[int, Path] = {}
    status = []
    for step in plan(recipe):
        if step.kind == "translate":
            languages = _translation_languages(recipe, step)
            status.append(
                StepStatus(step, (Path(recipe.translations) / output_name(task, step.split, *languages)).exists())
            )
        elif step.kind == "mt-states":
            status.append(
                StepStatus(step, (Path(recipe.mt_states) / step.language / step.split / "index.json").exists())
            )
        elif step.kind == "finetune":
            stage1[step.seed] = finetune_run(_stage1_settings(recipe, step.seed))[0]
            status.append(run_status(step, stage1[step.seed]))
        else:
            status.append(run_status(step, transfer_run(_transfer_settings(recipe, step, stage1[step.seed]))[0]))
    return status


def run_recipe(recipe: Recipe, workers: int = 1) -> list[Path]:
    """Run every planned step; translations, state stores and runs that already exist are reused. Prints the plan
    first, and before each run its place in the grid with an estimate of the time left.

    workers > 1 trains and scores that many runs side by side in processes of their own, each with an equal share
    of torch's CPU threads (for small models on a CPU, where one run cannot use every core); a seed's stage 1
    finishes before its transfers start. Translations and state stores are made first, in this process."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}.")
    task = get_task(recipe.task)
    translations, states_root = Path(recipe.translations), Path(recipe.mt_states)
    status = step_status(recipe)
    print(describe_plan(status))
    runs = [(entry.step, entry.done) for entry in status if entry.step.kind in ("finetune", "transfer")]
    runs_to_make = sum(not done for _, done in runs)
    progress = GridProgress(runs_to_make)
    translators: dict[str, Translator] = {}  # made when first needed, one per backend and model
    cache = translations / "translation_cache.sqlite"

    def translator_for(kind: str) -> Translator:
        """The recipe's MT for translations; NLLB (mt_model) for FLARE-MT's encoder states."""
        options = (
            recipe.translator_options()
            if kind == "translate"
            else {"backend": "transformers", "model": recipe.mt_model}
        )
        key = json.dumps(options, sort_keys=True, default=str)
        if key not in translators:
            translators[key] = Translator(**options, cache=cache)
        return translators[key]

    for step, done in ((entry.step, entry.done) for entry in status):
        if step.kind not in ("translate", "mt-states") or done:
            continue
        translator = translator_for(step.kind)
        if step.kind == "translate":
            languages = _translation_languages(recipe, step)
            translate_task(task, [step.split], *languages, translator, translations, recipe.data)
        else:
            if step.split == "test":  # FLARE-MT reads the original target-language test text
                records = load_task_splits(task, step.language, ["test"], recipe.data)["test"]
            else:
                path = translations / output_name(task, step.split, task.source_language, step.language)
                records = load_record_file(task, path)
            reader = load_state_reader(recipe.model, task, recipe.architecture, recipe.train.max_length)
            write_encoder_states(
                reader.state_texts(records),
                step.language,
                states_root / step.language / step.split,
                translator,
                metadata={"reader": reader.state_signature()},
            )
    if workers > 1 and runs_to_make:
        return _run_in_processes(recipe, runs, workers, progress)
    stage1: dict[int, Path] = {}
    run_dirs = []
    for step, done in runs:
        with progress.run(describe_step(step), done):
            if step.kind == "finetune":
                stage1[step.seed] = finetune(**_stage1_settings(recipe, step.seed))
            else:
                run_dirs.append(transfer(**_transfer_settings(recipe, step, stage1[step.seed])))
    return run_dirs


def default_workers(most: int) -> int:
    """Runs side by side for `run_recipe`: on a CPU one per core, at most `most` (the caller's measured limit); on a
    GPU one at a time."""
    return 1 if torch.cuda.is_available() else max(1, min(os.cpu_count() or 1, most))


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes, each with an equal share of this process's torch threads (a fork of a process
    with torch threads can hang)."""
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_limit_threads, initargs=(threads,))


def _run_in_processes(recipe: Recipe, runs: list, workers: int, progress: GridProgress) -> list[Path]:
    """The runs of `run_recipe` in a pool of `workers` processes; returns the transfer runs in plan order. A seed's
    transfers start when its stage 1 is made, and a method that reads another planned run (the ensemble reads the
    lora run) when that run is made, so two processes never make one run. The first error stops the grid: runs not
    yet started are cancelled, and the error is raised here."""
    transfers: dict[int, list] = {}
    for step, done in runs:
        if step.kind == "transfer":
            transfers.setdefault(step.seed, []).append((step, done))
    planned = {(step.seed, step.language, step.method) for step, _ in runs if step.kind == "transfer"}
    waiting: dict[tuple, list] = {}  # (seed, language, method) of a run not yet made -> the steps that read it
    made: dict[PlannedStep, Path] = {}
    stage1_steps = {step.seed: step for step, _ in runs if step.kind == "finetune"}
    pool = _process_pool(workers)
    pending: dict = {}

    def submit(step: PlannedStep, done: bool) -> None:
        reused = (step.seed, step.language, get_method(recipe.method_of(step.method)).reuses)
        if reused in planned and not any(
            (made_step.seed, made_step.language, made_step.method) == reused for made_step in made
        ):
            waiting.setdefault(reused, []).append((step, done))
            return
        settings = _transfer_settings(recipe, step, made[stage1_steps[step.seed]])
        pending[pool.submit(transfer, **settings)] = (step, done)

    try:
        for step, done in runs:
            if step.kind == "finetune":
                pending[pool.submit(finetune, **_stage1_settings(recipe, step.seed))] = (step, done)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                step, done = pending.pop(future)
                made[step] = future.result()
                progress.finished(describe_step(step), done)
                if step.kind == "finetune":
                    for transfer_step, transfer_done in transfers.get(step.seed, []):
                        submit(transfer_step, transfer_done)
                else:
                    for reading_step, reading_done in waiting.pop((step.seed, step.language, step.method), []):
                        submit(reading_step, reading_done)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return [made[step] for step, _ in runs if step.kind == "transfer"]


class GridProgress:
    """'[k/n] step (about h:mm:ss left)' before each run to make, the estimate from the runs made so far."""

    def __init__(self, total: int) -> None:
        self.total, self.made, self.seconds = total, 0, 0.0
        self.started = time.monotonic()

    @contextmanager
    def run(self, description: str, done: bool) -> Iterator[None]:
        if done:  # finished earlier: the run itself says it is skipped
            yield
            return
        left = ""
        if self.made:
            left = f" (about {timedelta(seconds=round(self.seconds / self.made * (self.total - self.made)))} left)"
        print(f"[{self.made + 1}/{self.total}] {description}{left}", flush=True)
        start = time.monotonic()
        yield
        self.made += 1
        self.seconds += time.monotonic() - start

    def finished(self, description: str, done: bool) -> None:
        """For runs made side by side: '[k/n] done: step (about h:mm:ss left)', from the wall time so far."""
        if done:
            return
        self.made += 1
        elapsed = time.monotonic() - self.started
        left = timedelta(seconds=round(elapsed / self.made * (self.total - self.made)))
        print(f"[{self.made}/{self.total}] done: {description} (about {left} left)", flush=True)
