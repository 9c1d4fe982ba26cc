"""Recipes: a YAML grid of languages x methods x seeds for one model and task, planned and run with skipping."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from ..mt.data import output_name, translate_task, write_encoder_states
from ..mt.translator import DEFAULT_MT_MODEL, Translator
from ..tasks import get_task, load_record_file, load_task_splits
from .models import load_state_reader
from .runs import (
    METHODS,
    STAGE1_MODES,
    TRAINING_METHODS,
    AdapterConfig,
    TrainConfig,
    finetune,
    resolve_stage1_mode,
    transfer,
)


@dataclass
class Recipe:
    model: str = field(metadata={"help": "Model name or path."})
    task: str = field(metadata={"help": "Task name or task spec file."})
    languages: list[str] = field(metadata={"help": "Target languages."})
    methods: list[str] = field(metadata={"help": f"Methods, from {', '.join(METHODS)}."})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Seeds; every run repeats per seed."})
    output: str = field(default="runs", metadata={"help": "Folder of the run directories and reports."})
    data: str = field(default="hub", metadata={"help": "'hub' or the folder of the original release files."})
    translations: str = field(
        default="translations", metadata={"help": "Folder of translated files (made if missing)."}
    )
    mt_model: str = field(default=DEFAULT_MT_MODEL, metadata={"help": "NLLB model for missing translations."})
    mt_states: str = field(default="mt_states", metadata={"help": "Folder of FLARE-MT state stores (made if missing)."})
    architecture: str = field(default="auto", metadata={"help": "auto, encoder or decoder."})
    trainable: str = field(default="lora", metadata={"help": "lora, or lora+head (decoders: also train lm_head)."})
    stage1_mode: str = field(
        default="auto",
        metadata={
            "help": f"Stage-1 adapter: {', '.join(STAGE1_MODES)}. merge folds it into the base; frozen keeps it as a "
            "frozen LoRA; auto is frozen on 4-bit bases (a merge re-quantises) and merge otherwise. Every method of "
            "the recipe starts from the same stage-1 model."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base in 4-bit NF4 (bitsandbytes, GPU)."})
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: dict[str, dict] = field(
        default_factory=dict,
        metadata={
            "help": "Named variants of a training method, usable in `methods`, each its own run and report row: "
            "{name: {method: flare, adapter: {pairing: end, unpaired: zero_source, ...}}} (method defaults to flare; "
            "adapter overrides the recipe's adapter settings)."
        },
    )

    def __post_init__(self) -> None:
        task = get_task(self.task)
        for language in self.languages:
            task.check_language(language)
        if isinstance(self.adapter, dict):
            self.adapter = _build(AdapterConfig, self.adapter, "adapter")
        self.variants = {name: self._check_variant(name, spec) for name, spec in (self.variants or {}).items()}
        unknown = [method for method in self.methods if method not in METHODS and method not in self.variants]
        if unknown:
            raise ValueError(
                f"Unknown methods {unknown}; valid choices: {', '.join(METHODS)}"
                + (f", or the recipe's variants {', '.join(self.variants)}." if self.variants else ".")
            )
        if task.kind == "extractive_qa" and "translate-test" in self.methods:
            raise ValueError("translate-test does not run for extractive QA tasks (no back-projection of answers).")
        resolve_stage1_mode(self.stage1_mode, self.load_in_4bit)
        if isinstance(self.train, dict):
            self.train = _build(TrainConfig, self.train, "train")

    def _check_variant(self, name: str, spec: dict) -> dict:
        if name in METHODS:
            raise ValueError(f"Variant {name!r} has the name of a built-in method; choose another name.")
        if not isinstance(spec, dict) or set(spec) - {"method", "adapter"}:
            raise ValueError(f"Variant {name!r} must be a mapping with 'method' and 'adapter'; got {spec!r}.")
        method = spec.get("method", "flare")
        if method not in TRAINING_METHODS:
            raise ValueError(
                f"Variant {name!r}: method {method!r} trains no adapter; valid choices: {', '.join(TRAINING_METHODS)}."
            )
        adapter = _build(AdapterConfig, {**asdict(self.adapter), **(spec.get("adapter") or {})}, f"variant {name}")
        return {"method": method, "adapter": adapter}

    def method_of(self, name: str) -> str:
        """The built-in method a name in `methods` runs."""
        return self.variants[name]["method"] if name in self.variants else name


def _build(cls, values: dict, section: str):
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {section} settings {unknown}; valid settings: {sorted(known)}.")
    return cls(**values)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of settings.")
    try:
        return _build(Recipe, values, "recipe")
    except TypeError as error:  # a required setting is missing
        raise ValueError(f"{path}: {error}") from error


def load_variants(path: str | Path) -> dict[str, dict]:
    """A YAML file of named method variants: the `variants` section of a recipe, or a mapping of them alone."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    values = values.get("variants", values) if isinstance(values, dict) else values
    if not isinstance(values, dict):
        raise ValueError(f"{path}: variants are a mapping of names to {{method, adapter}}.")
    return values


@dataclass(frozen=True)
class PlannedStep:
    kind: str  # translate, mt-states, finetune, transfer
    language: str
    method: str | None = None
    seed: int | None = None
    split: str | None = None  # translate / mt-states: train or validation (English -> target), test (target -> English)


def plan(recipe: Recipe) -> list[PlannedStep]:
    """Every step `run` takes, in order; a step whose output exists is skipped when run."""
    source = get_task(recipe.task).source_language
    steps = []
    for language in recipe.languages:
        # validation (English -> target) is translated only for checkpoint selection.
        splits = ["train", "validation", "test"] if recipe.train.select_best_on_validation else ["train", "test"]
        methods = {recipe.method_of(name) for name in recipe.methods}
        if methods - {"zero-shot"}:
            steps.extend(PlannedStep("translate", language, split=split) for split in splits)
        if "flare-mt" in methods:
            steps.extend(PlannedStep("mt-states", language, split=split) for split in splits)
    for seed in recipe.seeds:
        steps.append(PlannedStep("finetune", source, seed=seed))
        for language in recipe.languages:
            steps.extend(PlannedStep("transfer", language, method, seed) for method in recipe.methods)
    return steps


def run_recipe(recipe: Recipe) -> list[Path]:
    """Run every planned step; translations, state stores and runs that already exist are reused."""
    task = get_task(recipe.task)
    source = task.source_language
    translations, states_root = Path(recipe.translations), Path(recipe.mt_states)
    translator = None
    stage1: dict[int, Path] = {}
    run_dirs = []
    for step in plan(recipe):
        if step.kind in ("translate", "mt-states"):
            if step.kind == "translate":
                languages = (step.language, source) if step.split == "test" else (source, step.language)
                done = (translations / output_name(task, step.split, *languages)).exists()
            else:
                done = (states_root / step.language / step.split / "index.json").exists()
            if done:
                continue
            translator = translator or Translator(recipe.mt_model, cache=translations / "translation_cache.sqlite")
            if step.kind == "translate":
                translate_task(task, [step.split], *languages, translator, translations, recipe.data)
            else:
                if step.split == "test":  # FLARE-MT reads the original target-language test text
                    records = load_task_splits(task, step.language, ["test"], recipe.data)["test"]
                else:
                    path = translations / output_name(task, step.split, source, step.language)
                    records = load_record_file(task, path)
                reader = load_state_reader(recipe.model, task, recipe.architecture, recipe.train.max_length)
                write_encoder_states(
                    reader.state_texts(records),
                    step.language,
                    states_root / step.language / step.split,
                    translator,
                    metadata={"reader": reader.state_signature()},
                )
        elif step.kind == "finetune":
            train = replace(recipe.train, seed=step.seed)
            stage1[step.seed] = finetune(
                recipe.model,
                recipe.task,
                Path(recipe.output),
                recipe.data,
                recipe.architecture,
                recipe.trainable,
                recipe.load_in_4bit,
                recipe.adapter,
                train,
            )
        else:
            variant = recipe.variants.get(step.method)
            run_dirs.append(
                transfer(
                    recipe.model,
                    recipe.task,
                    step.language,
                    recipe.method_of(step.method),
                    stage1[step.seed],
                    translations,
                    Path(recipe.output),
                    recipe.data,
                    states_root / step.language,
                    recipe.stage1_mode,
                    recipe.architecture,
                    recipe.trainable,
                    recipe.load_in_4bit,
                    variant["adapter"] if variant else recipe.adapter,
                    replace(recipe.train, seed=step.seed),
                    name=step.method if variant else None,
                )
            )
    return run_dirs
