"""A recipe: the YAML grid of languages x methods x seeds for one model and task, read and checked before anything
runs (recipes.py plans and runs it)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..methods import METHODS, TRAINING_METHODS, get_method
from ..mt.backends import backend_type
from ..mt.translator import DEFAULT_MT_MODEL
from ..tasks import get_task
from .settings import POOLINGS, STAGE1_MODES, AdapterConfig, TrainConfig, resolve_stage1_mode


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
    mt_model: str = field(
        default=DEFAULT_MT_MODEL,
        metadata={
            "help": "NLLB model for FLARE-MT's encoder states, and for missing translations unless mt says otherwise."
        },
    )
    mt: dict = field(
        default_factory=dict,
        metadata={
            "help": "The MT backend of missing translations and its options: {backend: command, command: 'apertium "
            "eng-spa'}, {backend: ctranslate2, model: ..., dtype: int8}; the options are the backend's own (flare-xlt "
            "translate --help). Default: the transformers backend with mt_model."
        },
    )
    mt_states: str = field(default="mt_states", metadata={"help": "Folder of FLARE-MT state stores (made if missing)."})
    architecture: str = field(default="auto", metadata={"help": "auto, encoder, decoder or seq2seq."})
    trainable: str = field(
        default="lora", metadata={"help": "lora, lora+head (decoders: also lm_head) or lora+head+embeddings."}
    )
    stage1_mode: str = field(
        default="auto",
        metadata={
            "help": f"Stage-1 adapter: {', '.join(STAGE1_MODES)}. merge folds it into the base; frozen keeps it as a "
            "frozen LoRA; auto is frozen on 4-bit bases (a merge re-quantises) and merge otherwise. Every method of "
            "the recipe starts from the same stage-1 model."
        },
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base in 4-bit NF4 (bitsandbytes, GPU)."})
    pooling: str = field(
        default="auto",
        metadata={
            "help": f"How an encoder's classification head reads the sequence: {', '.join(POOLINGS)}. cls is the "
            "architecture's own head (the first token), mean averages the real tokens, last takes the last one; auto "
            "is what the model folder's sentence-transformers Pooling config names (mean for e5), else cls. Stage 1 "
            "records it and every method reads it from there."
        },
    )
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage1_train: dict = field(
        default_factory=dict,
        metadata={
            "help": "Training settings of stage 1 only, over train's: {epochs: 3, learning_rate: 1e-3, "
            "max_train_samples: 2000}. Stage 1 is trained once per seed and shared by every method, so it can afford "
            "more steps than each transfer; transfers keep train. The seed comes from seeds."
        },
    )
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
        for name in self.methods:
            get_method(self.method_of(name)).check_fit(
                task.kind, None if self.architecture == "auto" else self.architecture
            )
        resolve_stage1_mode(self.stage1_mode, self.load_in_4bit)
        self.translator_options()  # the MT backend and its options, checked before anything runs
        if isinstance(self.train, dict):
            self.train = _build(TrainConfig, self.train, "train")
        if self.pooling not in POOLINGS:  # resolved against the model by stage 1 (run_folder.finetune_pooling)
            raise ValueError(f"Unknown pooling {self.pooling!r}; valid choices: {', '.join(POOLINGS)}.")
        self.stage1_train = self.stage1_train or {}  # `stage1_train:` left empty in the YAML
        if not isinstance(self.stage1_train, dict):
            raise ValueError(f"stage1_train must be a mapping of training settings; got {self.stage1_train!r}.")
        if "seed" in self.stage1_train:
            raise ValueError("stage1_train cannot set seed: every seed of `seeds` trains its own stage 1.")
        self.stage1_train_config(self.train.seed)  # unknown or invalid settings, refused before anything runs

    def stage1_train_config(self, seed: int) -> TrainConfig:
        """The training settings of the stage-1 run of `seed`: train's, with stage1_train's overrides."""
        return _build(TrainConfig, {**asdict(self.train), **self.stage1_train, "seed": seed}, "stage1_train")

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
        # Kept as the overrides, not as a built AdapterConfig, so that dataclasses.replace (a copy with another
        # adapter, seed or language) checks them again and applies them to the copy's adapter.
        overrides = dict(spec.get("adapter") or {})
        _build(AdapterConfig, {**asdict(self.adapter), **overrides}, f"variant {name}")
        return {"method": method, "adapter": overrides}

    def translator_options(self) -> dict:
        """Translator arguments for missing translations: the `mt` backend with its own options (a model backend's
        model defaults to mt_model); an option the backend does not read is refused with the ones it does."""
        options = dict(self.mt or {})
        backend = backend_type(options.pop("backend", "transformers"))
        unknown = sorted(set(options) - set(backend.options))
        if unknown:
            raise ValueError(
                f"mt: {', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} of the "
                f"{backend.name} backend; its options: {', '.join(backend.options)}."
            )
        if "model" in backend.options:
            options.setdefault("model", self.mt_model)
        return {"backend": backend.name, **options}

    def method_of(self, name: str) -> str:
        """The built-in method a name in `methods` runs."""
        return self.variants[name]["method"] if name in self.variants else name

    def adapter_for(self, name: str) -> AdapterConfig:
        """The adapter settings a name in `methods` trains with: the recipe's, with a variant's overrides."""
        if name not in self.variants:
            return self.adapter
        return _build(AdapterConfig, {**asdict(self.adapter), **self.variants[name]["adapter"]}, f"variant {name}")


def _build(cls, values: dict, section: str):
    known = {item.name for item in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {section} settings {unknown}; valid settings: {sorted(known)}.")
    # `languages: id` would otherwise be iterated letter by letter
    scalars = [
        f"{item.name}: [{values[item.name]}]"
        for item in fields(cls)
        if re.fullmatch(r"list\[\w+\]", str(item.type)) and not isinstance(values.get(item.name, []), list)
    ]
    if scalars:
        raise ValueError(f"{section} settings that take a list were given one value; write {'; '.join(scalars)}.")
    return cls(**values)


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """The recipe in a YAML file, with `overrides` ({"train.epochs": 1, "seeds": [1]}: dotted names reach into the
    adapter and train sections) taking the place of the file's values."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a recipe is a mapping of settings.")
    for name, value in (overrides or {}).items():
        *sections, key = name.split(".")
        section = values
        for part in sections:
            section = section.setdefault(part, {})
        section[key] = value
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
