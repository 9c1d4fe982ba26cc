"""Paper-style reports from finished runs: per task, a methods x languages table of mean ± std over seeds.

Every finished run directory holds a metrics.json; only its contract keys (task, method, seed, language, metric,
scores, run, config_hash) are read, and for the paired differences its predictions.jsonl (flare_xlt/paired.py). Per
task, write_report writes report_<task>.md (Markdown), report_<task>.csv (wide, one row per method),
report_<task>_per_seed.csv (tidy, one row per run and language), report_<task>_differences.csv (each method minus the
baseline with its paired 95% interval), report_<task>.tex (booktabs) and the figure as report_<task>.png and .pdf,
each atomically. Every table and CSV is in percent; the tables set the stage-1 (English) score of the folder's
stage-1 runs beside the transfer methods, and each method's difference from the baseline (LoRA by default).

Statistics: a cell is the mean over seeds and the sample standard deviation (ddof=1) when there are at least two
seeds, 0.0 for a single seed (there is no spread to estimate). The Avg column is the mean over languages of the
per-language means, taken only over the languages every method has, so that averages compare like with like; its
std is the sample std over seeds of each seed's average over those languages (seeds that cover all of them). Methods
are ranked per common language by mean (1 = best, which assumes a higher-is-better metric such as accuracy,
macro_f1, exact_match or f1; ties share the average of the ranks they span), and the Avg. rank is the mean of those
ranks.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from io import BytesIO, StringIO
from pathlib import Path

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from .io import write_bytes_atomic, write_text_atomic
from .methods import METHODS, fuses
from .paired import CONFIDENCE, RESAMPLES, Difference, summary_differences

STAGE1_METHOD = "finetune"
# The method every other is compared with, by default: translate-train LoRA, the paper's main baseline.
DEFAULT_BASELINE = "lora"
METHOD_ORDER = METHODS  # the registry's order: baselines first, then FLARE

# The metrics.json contract: the only keys read, each with the JSON type it must have.
_RUN_KEYS: dict[str, type] = {
    "task": str,
    "method": str,
    "seed": int,
    "language": str,
    "metric": str,
    "scores": dict,
    "run": str,
    "config_hash": str,
}
# The scores key holding the cross-language mean of a single run; the report recomputes it over the common languages.
AVERAGE = "average"
# Task names become file names; anything else (a path separator, say) would write outside the output folder.
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# An en dash, as papers mark a result that was not run.
_MISSING = "–"

Cell = tuple[float, float, int]


def collect_runs(directory: str | Path) -> list[dict]:
    """Every metrics.json below directory (recursively), in path order, validated against the contract.

    Each run is a dict of the contract keys plus "path", the metrics.json file, so later errors can name it.
    Raises ValueError naming the file for invalid JSON, a missing key or a value of the wrong type.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No report directory {directory}.")
    return [_read_run(path) for path in sorted(directory.rglob("metrics.json")) if path.is_file()]


def _read_run(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    run: dict = {"path": path}
    for key, kind in _RUN_KEYS.items():
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}.")
        value = data[key]
        # bool is an int subclass, but "seed": true is a broken file rather than seed 1.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: key {key!r} must be a {kind.__name__}, got {type(value).__name__}.")
        run[key] = value
    for language, scores in run["scores"].items():
        if not isinstance(scores, dict):
            raise ValueError(f"{path}: scores[{language!r}] must be an object, got {type(scores).__name__}.")
    return run


def name_sweep_variants(runs: list[dict]) -> list[dict]:
    """Runs of one method with several runs for one task, language and seed (a sweep in one folder) become rows of
    their own, named by the settings that set them apart, e.g. "flare (learning_rate=0.001)"; the settings come from
    each run's config.json, next to its metrics.json. Other runs are returned unchanged; runs of a swept method
    without a config.json are left for summarize to refuse."""
    counts = Counter((run["task"], run["method"], run["language"], run["seed"]) for run in runs)
    swept = {(task, method) for (task, method, _, _), count in counts.items() if count > 1}
    settings = {id(run): _flat_config(run) for run in runs if (run["task"], run["method"]) in swept}
    if not swept or None in settings.values():
        return runs
    differing: dict[tuple[str, str], set[str]] = defaultdict(set)
    by_point: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        if (run["task"], run["method"]) in swept:
            by_point[(run["task"], run["method"], run["language"], run["seed"])].append(settings[id(run)])
    for (task, method, _, _), configs in by_point.items():
        keys = {key for config in configs for key in config}
        # Compared within one language and seed: what differs there is what the sweep varied (the stage-1 run, say,
        # differs between seeds but is a setting where one seed has two).
        differing[(task, method)] |= {key for key in keys if len({json.dumps(c.get(key)) for c in configs}) > 1}
    named = []
    for run in runs:
        keys = sorted(differing.get((run["task"], run["method"]), ()))
        if keys:
            values = ", ".join(f"{key.rpartition('.')[2]}={json.dumps(settings[id(run)].get(key))}" for key in keys)
            run = {**run, "method": f"{run['method']} ({values})"}
        named.append(run)
    return named


def _flat_config(run: Mapping) -> dict[str, object] | None:
    """The run's config.json as dotted keys (train.learning_rate), or None where there is none."""
    if "path" not in run:  # a run built by hand, not read from a folder
        return None
    path = Path(run["path"]).parent / "config.json"
    if not path.is_file():
        return None
    flat: dict[str, object] = {}

    def walk(value: object, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = value

    walk(json.loads(path.read_text(encoding="utf-8")), "")
    return flat


def _method_key(method: str) -> tuple[int, int, str]:
    """Paper order for the known methods, then unknown ones alphabetically."""
    if method in METHOD_ORDER:
        return (0, METHOD_ORDER.index(method), "")
    return (1, 0, method)


def summarize(runs: Iterable[Mapping], metric: str | None = None) -> dict[str, dict]:
    """Per task (sorted by name), the table of `metric` (default: the runs' headline metric) over seeds.

    Each task maps to:
      "metric": the metric summarized;
      "methods": methods in report order; "languages": every language any method has, sorted;
      "table": table[method][language] = (mean, std, n_seeds), plus table[method]["average"] for the Avg column;
        a missing result is an absent key;
      "average_languages": the languages every method has, which Avg and the ranks use;
      "dropped": {language: [methods that lack it]} for the languages left out of Avg and the ranks;
      "ranks": {method: average rank}, empty (like "average") when no language is common to all methods;
      "per_seed": per_seed[method][language][seed] = the value behind the table's cells;
      "runs": runs[method][language][seed] = the run that value comes from.
    Where a method has runs whose `language` is a given language, only those fill that language's cells (side
    evaluations by runs for other languages are ignored there); two results for one cell and seed are a ValueError.
    """
    by_task: dict[str, list[Mapping]] = defaultdict(list)
    for run in runs:
        by_task[run["task"]].append(run)
    return {task: _summarize_task(task, task_runs, metric) for task, task_runs in sorted(by_task.items())}


def _summarize_task(task: str, runs: list[Mapping], metric: str | None) -> dict:
    if metric is None:
        headline = {run["metric"] for run in runs}
        if len(headline) != 1:
            raise ValueError(f"Task {task!r}: runs disagree on the headline metric {sorted(headline)}; pass metric=.")
        metric = headline.pop()
    sources = _seed_runs(runs, metric)
    values = {
        method: {
            language: {seed: value for seed, (_, value) in per_seed.items()} for language, per_seed in cells.items()
        }
        for method, cells in sources.items()
    }
    methods = sorted(values, key=_method_key)
    languages = sorted({language for per_language in values.values() for language in per_language})
    table = {
        method: {
            language: _cell(list(values[method][language].values()))
            for language in languages
            if language in values[method]
        }
        for method in methods
    }
    common = [language for language in languages if all(language in values[method] for method in methods)]
    dropped = {
        language: [method for method in methods if language not in values[method]]
        for language in languages
        if language not in common
    }
    ranks: dict[str, float] = {}
    if common:
        for method in methods:
            table[method][AVERAGE] = _average_cell(values[method], common)
        per_language = [_ranks({method: table[method][language][0] for method in methods}) for language in common]
        ranks = {method: statistics.fmean(ranking[method] for ranking in per_language) for method in methods}
    return {
        "metric": metric,
        "methods": methods,
        "languages": languages,
        "table": table,
        "average_languages": common,
        "dropped": dropped,
        "ranks": ranks,
        "per_seed": {
            method: {language: dict(values[method][language]) for language in values[method]} for method in methods
        },
        "runs": {
            method: {
                language: {seed: run for seed, (run, _) in per_seed.items()}
                for language, per_seed in sources[method].items()
            }
            for method in methods
        },
    }


def _where(run: Mapping) -> str:
    # Runs from collect_runs carry their file; hand-built ones are named by their run name.
    return str(run.get("path", run["run"]))


def _seed_runs(runs: list[Mapping], metric: str) -> dict[str, dict[str, dict[int, tuple[Mapping, float]]]]:
    """found[method][language][seed] = (the run, its metric), exactly one run per cell and seed."""
    # A run may score several languages: a zero-shot run scores all of them, while a run trained for one target
    # language may also evaluate others on the side. Where a method has runs dedicated to a language (run
    # `language` == that language), only those fill its cell, so side evaluations never mix into it, not even for
    # a seed whose dedicated run is missing; otherwise every run that scored the language does.
    dedicated = {(run["method"], run["language"]) for run in runs}
    found: dict[tuple[str, str, int], list[tuple[Mapping, float]]] = defaultdict(list)
    for run in runs:
        for language, scores in run["scores"].items():
            method = run["method"]
            if language == AVERAGE or ((method, language) in dedicated and run["language"] != language):
                continue
            found[(method, language, run["seed"])].append((run, _score(run, language, scores, metric)))
    cells: dict[str, dict[str, dict[int, tuple[Mapping, float]]]] = defaultdict(lambda: defaultdict(dict))
    for (method, language, seed), results in found.items():
        if len(results) != 1:
            raise ValueError(
                f"{method!r} seed {seed} has {len(results)} results for {language!r}: "
                f"{', '.join(_where(run) for run, _ in results)}."
            )
        cells[method][language][seed] = results[0]
    return cells


def _score(run: Mapping, language: str, scores: Mapping, metric: str) -> float:
    if metric not in scores:
        raise ValueError(f"{_where(run)}: missing key {metric!r} in scores[{language!r}].")
    value = scores[metric]
    # A NaN would silently poison every mean it enters; a bool is a flag, not a score.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{_where(run)}: scores[{language!r}][{metric!r}] must be a finite number, got {value!r}.")
    return float(value)


def _cell(values: list[float]) -> Cell:
    return statistics.fmean(values), _std(values), len(values)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def _average_cell(per_language: Mapping[str, Mapping[int, float]], common: list[str]) -> Cell:
    mean = statistics.fmean(statistics.fmean(per_language[language].values()) for language in common)
    # The spread of the Avg is across seeds of the whole evaluation, so it needs seeds that scored every language.
    seeds = sorted(set.intersection(*(set(per_language[language]) for language in common)))
    averages = [statistics.fmean(per_language[language][seed] for language in common) for seed in seeds]
    return mean, _std(averages), len(seeds)


def _ranks(means: Mapping[str, float]) -> dict[str, float]:
    """1 = highest mean; tied methods share the average of the ranks they span."""
    # Rounded so that summation noise (0.1 + 0.2 != 0.3) cannot break a real tie.
    keys = {method: round(mean, 12) for method, mean in means.items()}
    return {
        method: 1 + sum(other > key for other in keys.values()) + (sum(other == key for other in keys.values()) - 1) / 2
        for method, key in keys.items()
    }


def write_report(
    directory: str | Path,
    output: str | Path | None = None,
    select: Callable[[dict], bool] | None = None,
    baseline: str = DEFAULT_BASELINE,
) -> list[Path]:
    """Per task, in output (default: directory), returns the paths written in this order:

    report_<task>.md (Markdown table), report_<task>.csv (one row per method), report_<task>_per_seed.csv (tidy, one
    row per run and language), report_<task>_differences.csv (each method minus `baseline` with its paired 95 %
    interval, per language and on Avg), report_<task>.tex (booktabs table) and the figure as report_<task>.png and
    .pdf. `select(run)` keeps only some of the folder's transfer runs (e.g. two tables from one folder of runs); the
    stage-1 column reads every stage-1 run of the folder.
    """
    directory = Path(directory)
    output = directory if output is None else Path(output)
    found = collect_runs(directory)
    # Stage-1 runs (method "finetune") score English, not a transfer: they are a column, not rows.
    stage1 = [run for run in found if run["method"] == STAGE1_METHOD]
    runs = [run for run in found if run["method"] != STAGE1_METHOD and (select is None or select(run))]
    if not runs:
        raise ValueError(f"No transfer runs (metrics.json) below {directory}" + (" selected." if select else "."))
    summaries = summarize(name_sweep_variants(runs))
    artifacts = _checked_artifact_paths(output, summaries)
    written: list[Path] = []
    for task, summary in summaries.items():
        summary = compare(summary, [run for run in stage1 if run["task"] == task], baseline)
        summary["highlighted"] = fusing_methods(run for run in runs if run["task"] == task)
        paths = artifacts[task]
        write_text_atomic(paths["markdown"], _markdown(task, summary))
        write_text_atomic(paths["wide_csv"], _csv(summary))
        write_text_atomic(paths["per_seed_csv"], _per_seed_csv(task, summary))
        write_text_atomic(paths["differences_csv"], _differences_csv(summary))
        write_text_atomic(paths["latex"], _latex(task, summary))
        figure = plot_summary(task, summary)
        write_bytes_atomic(paths["png"], _render(figure, "png"))
        write_bytes_atomic(paths["pdf"], _render(figure, "pdf"))
        written += paths.values()
    return written


def compare(summary: Mapping, stage1_runs: list[Mapping], baseline: str = DEFAULT_BASELINE) -> dict:
    """The summary with what the report sets beside its table: "stage1" ({method: Cell}, the English score of the
    stage-1 runs of the method's seeds) and "stage1_language", "baseline", and "differences"
    (paired.summary_differences against it)."""
    return {
        **summary,
        "stage1": _stage1_cells(summary, stage1_runs),
        "stage1_language": "/".join(sorted({run["language"] for run in stage1_runs})),
        "baseline": baseline,
        "differences": summary_differences(summary, baseline),
    }


def _stage1_cells(summary: Mapping, stage1_runs: list[Mapping]) -> dict[str, Cell]:
    cells = {}
    for method in summary["methods"]:
        seeds = {seed for per_seed in summary["per_seed"][method].values() for seed in per_seed}
        english = [_stage1_score(run, summary["metric"]) for run in stage1_runs if run["seed"] in seeds]
        if english:
            cells[method] = _cell(english)
    return cells


def _stage1_score(run: Mapping, metric: str) -> float:
    language = run["language"]
    if language not in run["scores"]:
        raise ValueError(f"{_where(run)}: a stage-1 run with no scores[{language!r}].")
    return _score(run, language, run["scores"][language], metric)


def _checked_artifact_paths(output: Path, summaries: Mapping[str, dict]) -> dict[str, dict[str, Path]]:
    """Every task's report paths, checked before anything is written so a bad name leaves no partial report."""
    for task in summaries:
        if not _TASK_NAME.fullmatch(task):
            raise ValueError(f"Task name {task!r} cannot be used in a file name.")
    artifacts = {task: _artifact_paths(output, task) for task in summaries}
    # Task names may hold "_" and ".", so task "a" and task "a_per_seed" would both claim report_a_per_seed.csv.
    owners: dict[Path, str] = {}
    for task, paths in artifacts.items():
        for path in paths.values():
            if path in owners:
                raise ValueError(f"Tasks {owners[path]!r} and {task!r} would both write {path.name}.")
            owners[path] = task
    return artifacts


def _artifact_paths(output: Path, task: str) -> dict[str, Path]:
    return {
        "markdown": output / f"report_{task}.md",
        "wide_csv": output / f"report_{task}.csv",
        "per_seed_csv": output / f"report_{task}_per_seed.csv",
        "differences_csv": output / f"report_{task}_differences.csv",
        "latex": output / f"report_{task}.tex",
        "png": output / f"report_{task}.png",
        "pdf": output / f"report_{task}.pdf",
    }


def _shows_average(summary: Mapping) -> bool:
    """Whether the LaTeX table and the figure get an Avg: over a single language it would repeat that language."""
    return len(summary["average_languages"]) >= 2


def fusing_methods(runs: Iterable[Mapping]) -> set[str]:
    """The row names whose runs train a fusing adapter (FLARE, FLARE-MT and recipe variants of them, whose run
    config names the method they run), which the figure highlights."""
    highlighted = set()
    for run in runs:
        config = _flat_config(run) or {}
        if fuses(config.get("method", run["method"])):
            highlighted.add(run["method"])
    return highlighted


def mean_std(values: list[float]) -> str:
    """Scores (fractions) over seeds as the tables print them: mean ± sample std in percent, the value alone for one."""
    return _percent(_cell(values))


def _percent(cell: Cell | None) -> str:
    """Mean ± std in percent; one seed has no spread to show, so its value stands alone."""
    if cell is None:
        return _MISSING
    mean, std, seeds = cell
    return f"{100 * mean:.1f}" if seeds < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _stage1_header(summary: Mapping) -> str:
    return f"{summary['stage1_language']} (stage 1)"


def _difference_header(summary: Mapping, label: str = "Avg") -> str:
    return f"{label} − {summary['baseline']} [95% CI]"


def _latex_difference_key(summary: Mapping, keys: list[str]) -> str | None:
    """The column whose difference the LaTeX table shows: Avg, or the one language where there is no Avg column."""
    if not summary.get("differences") or not summary["average_languages"]:
        return None
    return AVERAGE if AVERAGE in keys else summary["average_languages"][0]


def difference_text(difference: Difference | None) -> str:
    """ "+2.1 [-0.4, +4.6] level": the difference and its interval in points, and whether it is resolved."""
    if difference is None:
        return _MISSING
    low, high = 100 * difference.low, 100 * difference.high
    return f"{100 * difference.difference:+.1f} [{low:+.1f}, {high:+.1f}] {difference.verdict}"


def _difference_cell(summary: Mapping, method: str, key: str) -> str:
    if method == summary["baseline"]:
        return "baseline"
    return difference_text(summary["differences"].get(method, {}).get(key))


def _markdown(task: str, summary: Mapping) -> str:
    languages, methods, table = summary["languages"], summary["methods"], summary["table"]
    stage1, differences = summary.get("stage1"), summary.get("differences")
    columns = [
        *([_stage1_header(summary)] if stage1 else []),
        *languages,
        "Avg",
        "Avg. rank",
        *([_difference_header(summary)] if differences else []),
    ]
    lines = [
        f"# {task}: {summary['metric']}",
        "",
        "| Method | " + " | ".join(columns) + " |",
        "| :--- |" + " ---: |" * len(columns),
    ]
    for method in methods:
        row = [_percent(stage1.get(method))] if stage1 else []
        row += [_percent(table[method].get(key)) for key in [*languages, AVERAGE]]
        rank = summary["ranks"].get(method)
        row.append(_MISSING if rank is None else f"{rank:.2f}")
        if differences:
            row.append(_difference_cell(summary, method, AVERAGE))
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    units = f"{summary['metric']} in percent: mean ± sample std (ddof=1) over seeds, the value alone for one seed"
    lines += ["", f"{units}; {_MISSING} marks a missing result.", "", _seeds_line(summary), "", _average_line(summary)]
    if stage1:
        lines += ["", _stage1_line(summary)]
    return "\n".join([*lines, *_differences_section(summary)]) + "\n"


def _stage1_line(summary: Mapping) -> str:
    return (
        f"{_stage1_header(summary)}: the test score of the stage-1 runs (finetune) of the row's seeds in the language "
        "they trained on, the model every transfer method starts from."
    )


def _differences_section(summary: Mapping) -> list[str]:
    """Each method minus the baseline per language and on Avg, with its interval; or why there is none."""
    baseline, differences = summary.get("baseline"), summary.get("differences")
    if baseline is None:
        return []
    if baseline not in summary["methods"]:
        return ["", f"No paired differences: no {baseline} rows to compare with."]
    if not differences:
        return [
            "",
            f"No paired differences from {baseline}: the runs have no predictions.jsonl (per-item predictions).",
        ]
    return [*_differences_table(summary), "", _differences_note(summary)]


def _differences_table(summary: Mapping) -> list[str]:
    """The difference of every language and Avg; with one language the main table's column already says it all."""
    if len(summary["languages"]) < 2:
        return []
    baseline, average = summary["baseline"], _shows_average(summary)
    keys, labels = (
        [*summary["languages"], *([AVERAGE] if average else [])],
        [*summary["languages"], *(["Avg"] if average else [])],
    )
    lines = [
        "",
        f"**Difference from {baseline}** ({summary['metric']} points, method minus {baseline}, 95% paired interval):",
        "",
        "| Method | " + " | ".join(labels) + " |",
        "| :--- |" + " ---: |" * len(labels),
    ]
    for method in summary["methods"]:
        if method != baseline:
            lines.append(f"| {method} | " + " | ".join(_difference_cell(summary, method, key) for key in keys) + " |")
    return lines


def _differences_note(summary: Mapping) -> str:
    return (
        f"Differences are taken seed by seed (seeds both methods have) on the same test items, paired by id; the "
        f"interval is a paired bootstrap over {RESAMPLES} resamples of test items and seeds together "
        f"({round(100 * CONFIDENCE)}% percentile interval, fixed random seed). ahead or behind: the interval "
        f"excludes 0, so the difference is resolved; level: it includes 0. {_MISSING}: no per-item predictions "
        "for that cell."
    )


def _seeds_line(summary: Mapping) -> str:
    counts = [
        (f"{method}/{label}", summary["table"][method][key][2])
        for method in summary["methods"]
        for key, label in [*((language, language) for language in summary["languages"]), (AVERAGE, "Avg")]
        if key in summary["table"][method]
    ]
    # The most common count (the larger on a tie) is stated once; only the cells that differ are listed.
    usual = max(Counter(n for _, n in counts).items(), key=lambda item: (item[1], item[0]))[0]
    exceptions = [f"{name} {n}" for name, n in counts if n != usual]
    return f"Seeds per cell: {usual}" + (f", except {', '.join(exceptions)}" if exceptions else "") + "."


def _average_line(summary: Mapping, with_average: bool = True) -> str:
    """What Avg. and Avg. rank cover; with_average=False for a table that shows only the rank (see _shows_average)."""
    common, dropped = summary["average_languages"], summary["dropped"]
    if not common:
        return "No language has results for every method, so there is no Avg. or Avg. rank."
    if with_average:
        line = "Avg. (std over seeds of each seed's average) and Avg. rank (1 = best, ties share the average rank) are"
    else:
        line = "Avg. rank (1 = best, ties share the average rank) is"
    line += f" over {', '.join(common)}."
    if dropped:
        reasons = "; ".join(f"{language} (missing for {', '.join(methods)})" for language, methods in dropped.items())
        line += f" Dropped from {'both' if with_average else 'it'}: {reasons}."
    return line


def _csv(summary: Mapping) -> str:
    """One row per method, in percent like the Markdown (the header says so); an empty field is a missing result."""
    stage1 = summary.get("stage1") or {}
    keys = [*(["stage1"] if stage1 else []), *summary["languages"], AVERAGE]
    prefixes = [*(["stage1_en"] if stage1 else []), *summary["languages"], "avg"]
    stream = StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    parts = ("mean_percent", "std_percent", "n")
    writer.writerow(["method", *(f"{prefix}_{part}" for prefix in prefixes for part in parts), "avg_rank"])
    for method in summary["methods"]:
        cells = {**summary["table"][method], **({"stage1": stage1[method]} if method in stage1 else {})}
        row: list[object] = [method]
        for key in keys:
            row += _csv_cell(cells[key]) if key in cells else ["", "", ""]
        row.append(summary["ranks"].get(method, ""))
        writer.writerow(row)
    return stream.getvalue()


def _in_percent(fraction: float) -> float:
    # Rounded to drop the noise of the conversion (100 * 0.57 is 56.99999999999999); scores carry far fewer than ten
    # decimals.
    return round(100 * fraction, 10)


def _csv_cell(cell: Cell) -> list[object]:
    mean, std, seeds = cell
    return [_in_percent(mean), _in_percent(std), seeds]


def _per_seed_csv(task: str, summary: Mapping) -> str:
    """Tidy: one row per value that enters the tables (a run's score for one language), in percent like the Markdown."""
    stream = StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["task", "language", "method", "seed", "metric", "value_percent"])
    for method in summary["methods"]:
        for language, per_seed in sorted(summary["per_seed"][method].items()):
            for seed, value in sorted(per_seed.items()):
                writer.writerow([task, language, method, seed, summary["metric"], _in_percent(value)])
    return stream.getvalue()


def _differences_csv(summary: Mapping) -> str:
    """Tidy: one row per method and language (and "avg"): the difference from the baseline and its interval."""
    stream = StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(
        [
            "method",
            "baseline",
            "language",
            "difference_percent",
            "low_percent",
            "high_percent",
            "verdict",
            "seeds",
            "items",
        ]
    )
    for method, per_language in summary.get("differences", {}).items():
        for key, difference in per_language.items():
            language = "avg" if key == AVERAGE else key
            numbers = [_in_percent(value) for value in (difference.difference, difference.low, difference.high)]
            extra = [difference.verdict, difference.seeds, difference.items]
            writer.writerow([method, summary["baseline"], language, *numbers, *extra])
    return stream.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    # Not every LaTeX set-up maps these characters from UTF-8 (pdfLaTeX has no minus sign).
    "−": "$-$",
    "–": "--",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(character, character) for character in text)


def _latex(task: str, summary: Mapping) -> str:
    """A booktabs table in percent, mean with the std as a subscript where a cell has several seeds, best in bold;
    the stage-1 column first and the paired difference of the Avg from the baseline last, where the report has them."""
    keys = [*summary["languages"], *([AVERAGE] if _shows_average(summary) else [])]
    headers = [
        *([_latex_escape(_stage1_header(summary))] if summary.get("stage1") else []),
        *(_latex_escape(language) for language in summary["languages"]),
        *(["Avg"] if AVERAGE in keys else []),
        *(["Avg.\\ rank"] if summary["ranks"] else []),
        *([_latex_escape(_latex_difference_header(summary, keys))] if _latex_difference_key(summary, keys) else []),
    ]
    lines = [
        "% flare-xlt report; needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\begin{{tabular}}{{l{'r' * len(headers)}}}",
        "\\toprule",
        " & ".join(["Method", *headers]) + " \\\\",
        "\\midrule",
        *_latex_rows(summary, keys),
        "\\bottomrule",
        "\\end{tabular}",
        f"\\caption{{{_latex_caption(task, summary, keys)}}}",
        f"\\label{{tab:{task}}}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _latex_difference_header(summary: Mapping, keys: list[str]) -> str:
    key = _latex_difference_key(summary, keys)
    return _difference_header(summary, "Avg" if key == AVERAGE else str(key))


def _latex_rows(summary: Mapping, keys: list[str]) -> list[str]:
    methods, table, ranks, stage1 = summary["methods"], summary["table"], summary["ranks"], summary.get("stage1")
    # Best is judged on the printed digits, so that two cells that read the same are both bold.
    best_mean = {
        key: max(float(_one_decimal(table[method][key][0])) for method in methods if key in table[method])
        for key in keys
    }
    best_rank = min((float(f"{rank:.2f}") for rank in ranks.values()), default=None)
    difference_key = _latex_difference_key(summary, keys)
    lines = []
    for method in methods:
        row = [_latex_escape(method)]
        if stage1:
            row.append("--" if method not in stage1 else _latex_cell(stage1[method], False))
        for key in keys:
            cell = table[method].get(key)
            row.append("--" if cell is None else _latex_cell(cell, float(_one_decimal(cell[0])) == best_mean[key]))
        if ranks:
            rank = f"{ranks[method]:.2f}"
            row.append(f"\\textbf{{{rank}}}" if float(rank) == best_rank else rank)
        if difference_key:
            row.append(_latex_escape(_difference_cell(summary, method, difference_key)))
        lines.append(" & ".join(row) + " \\\\")
    return lines


def _latex_caption(task: str, summary: Mapping, keys: list[str]) -> str:
    methods, table = summary["methods"], summary["table"]
    seed_counts = _seed_counts(summary)
    caption = f"{_latex_escape(task)}: {_latex_escape(summary['metric'])} in percent"
    if max(seed_counts) >= 2:
        caption += ", mean over seeds with the sample std (ddof=1) as a subscript"
        caption += " where a cell has several seeds" if min(seed_counts) < 2 else ""
    caption += "; best per column in bold"
    if any(key not in table[method] for method in methods for key in keys):
        caption += "; -- marks a missing result"
    notes = [_seeds_line(summary), _average_line(summary, with_average=AVERAGE in keys)]
    if summary.get("stage1"):
        notes.append(_stage1_line(summary))
    if _latex_difference_key(summary, keys):
        notes.append(f"{_latex_difference_header(summary, keys)}: {_differences_note(summary)}")
    return caption + ". " + _latex_escape(" ".join(notes))


def _one_decimal(fraction: float) -> str:
    return f"{100 * fraction:.1f}"


def _latex_cell(cell: Cell, best: bool) -> str:
    mean, std, seeds = cell
    shown = f"\\textbf{{{_one_decimal(mean)}}}" if best else _one_decimal(mean)
    # One seed has no spread to show; "± 0.0" would claim a measured one.
    return shown if seeds < 2 else f"{shown}$_{{\\pm {_one_decimal(std)}}}$"


# Okabe and Ito's palette, told apart under the common colour-vision deficiencies; its yellow is left out, too pale on
# white. FLARE variants take these colours and filled diamonds; the baselines are grey open circles, so FLARE stands
# out and the figure still reads in black and white.
_FLARE_COLOURS = ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
_BASELINE_COLOUR = "#6E6E6E"
_PANELS_PER_ROW = 4
# The share of the figure's width a title line may take, so it keeps a margin on both sides.
_TITLE_SHARE = 0.96
# The narrowest metric axis in points: values that (nearly) tie are drawn on this span around them, so a difference of
# a tenth of a point does not fill the panel.
_MIN_SPAN = 5.0


def plot_summary(task: str, summary: Mapping) -> Figure:
    """The report's figure for one task's summary: small multiples, one dot plot per language (and Avg).

    In each panel the methods are rows and the mean is a dot on the metric axis, which spans the panel's own values
    (not from 0) so the differences show; a horizontal bar is ± the std where a cell has several seeds. There is no
    Avg panel when it would repeat a single language.
    """
    methods, table = summary["methods"], summary["table"]
    panels = [(language, language) for language in summary["languages"]]
    if _shows_average(summary):
        dropped = summary["dropped"]
        panels.append((AVERAGE, "Avg" if not dropped else "Avg (excl. " + ", ".join(dropped) + ")"))
    columns = min(len(panels), _PANELS_PER_ROW)
    rows = math.ceil(len(panels) / columns)
    highlighted = summary.get("highlighted", set())
    colours = _method_colours(methods, highlighted)
    # A bare Figure on an Agg canvas rather than pyplot: no global backend switch and no figure registry to leak.
    figure = Figure(figsize=(1.4 + 2.6 * columns, 0.8 + rows * (0.9 + 0.28 * len(methods))), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, sharey=True, squeeze=False)
    for unused in grid.flat[len(panels) :]:
        unused.remove()
    for axes, (key, title) in zip(grid.flat[: len(panels)], panels, strict=True):
        _dot_panel(axes, methods, table, key, colours, highlighted)
        axes.set_title(title, fontsize="medium", fontweight="bold" if key == AVERAGE else "normal")
    grid[0, 0].set_yticks(range(len(methods)), methods)
    # The first method on top, as in the tables, with half a row of room above and below.
    grid[0, 0].set_ylim(len(methods) - 0.5, -0.5)
    for axes in grid[:, 0]:
        for label, method in zip(axes.get_yticklabels(), methods, strict=True):
            if method in highlighted:
                label.set_fontweight("bold")
                label.set_color(colours[method])
    _fit_title(figure, f"{task}: {summary['metric']}", _seeds_phrase(summary))
    figure.supxlabel(f"{summary['metric']} (%)", fontsize="medium")
    return figure


def _fit_title(figure: Figure, what: str, seeds: str) -> None:
    """The title on one line where it fits the figure's width, else on two, shrunk further if a line still would not
    fit (a one-language figure is narrow)."""
    renderer = figure.canvas.get_renderer()
    for text, size in ((f"{what}, {seeds}", "large"), (f"{what}\n{seeds}", "large"), (f"{what}\n{seeds}", "medium")):
        title = figure.suptitle(text, fontsize=size)
        if title.get_window_extent(renderer).width <= _TITLE_SHARE * figure.bbox.width:
            return
    title.set_fontsize("small")


def _method_colours(methods: list[str], highlighted: set[str]) -> dict[str, str]:
    flare = [method for method in methods if method in highlighted]
    # Past six variants the colours repeat; the bold row labels still tell the methods apart.
    colours = {method: _FLARE_COLOURS[index % len(_FLARE_COLOURS)] for index, method in enumerate(flare)}
    return {method: colours.get(method, _BASELINE_COLOUR) for method in methods}


def _dot_panel(
    axes: Axes, methods: list[str], table: Mapping, key: str, colours: Mapping[str, str], highlighted: set[str]
) -> None:
    present = [(row, method, table[method][key]) for row, method in enumerate(methods) if key in table[method]]
    # An empty row could be read as a result off the axis, so it says there is none.
    at_left_of_row = blended_transform_factory(axes.transAxes, axes.transData)
    for row, method in enumerate(methods):
        if key not in table[method]:
            axes.text(0.03, row, "no result", transform=at_left_of_row, va="center", fontsize="small", color="#8C8C8C")
    for row, method, (mean, std, seeds) in present:
        colour = colours[method]
        if seeds >= 2:
            axes.errorbar(100 * mean, row, xerr=100 * std, fmt="none", ecolor=colour, elinewidth=1.2, capsize=2.5)
        if method in highlighted:
            axes.plot(100 * mean, row, "D", color=colour, markersize=6.5, zorder=3)
        else:
            axes.plot(100 * mean, row, "o", markerfacecolor="white", markeredgecolor=colour, markersize=6.5, zorder=3)
    low = min(100 * (mean - std) for _, _, (mean, std, _) in present)
    high = max(100 * (mean + std) for _, _, (mean, std, _) in present)
    axes.set_xlim(*_metric_limits(low, high))
    axes.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
    axes.grid(axis="both", color="#E5E5E5", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.tick_params(axis="y", length=0)


def _metric_limits(low: float, high: float) -> tuple[float, float]:
    """The panel's metric axis: the values with a margin so no dot sits on the frame, and at least _MIN_SPAN wide
    (that widening kept inside 0 to 100)."""
    margin = 0.08 * (high - low)
    low, high = low - margin, high + margin
    if high - low >= _MIN_SPAN:
        return low, high
    centre = (low + high) / 2
    low = min(max(centre - _MIN_SPAN / 2, 0.0), 100.0 - _MIN_SPAN)
    return low, low + _MIN_SPAN


def _seed_counts(summary: Mapping) -> set[int]:
    return {cell[2] for cells in summary["table"].values() for cell in cells.values()}


def _seeds_phrase(summary: Mapping) -> str:
    counts = _seed_counts(summary)
    if counts == {1}:
        return "1 seed"
    seeds = f"{min(counts)}–{max(counts)}" if len(counts) > 1 else f"{counts.pop()}"
    return f"mean ± std over {seeds} seeds"


def _render(figure: Figure, image_format: str) -> bytes:
    buffer = BytesIO()
    # TrueType (Type 42) fonts, since publishers' PDF checks reject matplotlib's default Type 3; no creation date, so
    # the same runs give the same bytes.
    with rc_context({"pdf.fonttype": 42}):
        figure.savefig(
            buffer, format=image_format, dpi=200, metadata={"CreationDate": None} if image_format == "pdf" else None
        )
    return buffer.getvalue()
