"""Paper-style reports from finished runs: per task, a methods x languages table of mean ± std over seeds.

Every finished run directory holds a metrics.json; only its contract keys (task, method, seed, language, metric,
scores, run, config_hash) are read. Per task, write_report writes report_<task>.md, report_<task>.csv and
report_<task>.png, each atomically.

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
from collections.abc import Iterable, Mapping
from io import BytesIO, StringIO
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .io import write_bytes_atomic, write_text_atomic

STAGE1_METHOD = "finetune"
METHOD_ORDER = ("zero-shot", "translate-test", "lora", "input-fusion", "x-mixup", "flare", "flare-mt")

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
      "ranks": {method: average rank}, empty (like "average") when no language is common to all methods.
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
    values = _seed_values(runs, metric)
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
    }


def _where(run: Mapping) -> str:
    # Runs from collect_runs carry their file; hand-built ones are named by their run name.
    return str(run.get("path", run["run"]))


def _seed_values(runs: list[Mapping], metric: str) -> dict[str, dict[str, dict[int, float]]]:
    """values[method][language][seed] = the metric, exactly one run per cell and seed."""
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
    values: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for (method, language, seed), results in found.items():
        if len(results) != 1:
            raise ValueError(
                f"{method!r} seed {seed} has {len(results)} results for {language!r}: "
                f"{', '.join(_where(run) for run, _ in results)}."
            )
        values[method][language][seed] = results[0][1]
    return values


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


def write_report(directory: str | Path, output: str | Path | None = None) -> list[Path]:
    """Per task, report_<task>.md, .csv and .png in output (default: directory); returns the paths written."""
    directory = Path(directory)
    output = directory if output is None else Path(output)
    # Stage-1 runs (method "finetune") score English, not a transfer: they are not rows of the transfer tables.
    runs = [run for run in collect_runs(directory) if run["method"] != STAGE1_METHOD]
    if not runs:
        raise ValueError(f"No transfer runs (metrics.json) below {directory}.")
    summaries = summarize(runs)
    # Checked before writing anything, so a bad name cannot leave a partial report behind.
    for task in summaries:
        if not _TASK_NAME.fullmatch(task):
            raise ValueError(f"Task name {task!r} cannot be used in a file name.")
    paths: list[Path] = []
    for task, summary in summaries.items():
        markdown, table, chart = (output / f"report_{task}.{suffix}" for suffix in ("md", "csv", "png"))
        write_text_atomic(markdown, _markdown(task, summary))
        write_text_atomic(table, _csv(summary))
        write_bytes_atomic(chart, _png(task, summary))
        paths += [markdown, table, chart]
    return paths


def _percent(cell: Cell | None) -> str:
    return _MISSING if cell is None else f"{100 * cell[0]:.1f} ± {100 * cell[1]:.1f}"


def _markdown(task: str, summary: Mapping) -> str:
    languages, methods, table = summary["languages"], summary["methods"], summary["table"]
    columns = [*languages, "Avg", "Avg. rank"]
    lines = [
        f"# {task}: {summary['metric']}",
        "",
        "| Method | " + " | ".join(columns) + " |",
        "| :--- |" + " ---: |" * len(columns),
    ]
    for method in methods:
        row = [_percent(table[method].get(key)) for key in [*languages, AVERAGE]]
        rank = summary["ranks"].get(method)
        row.append(_MISSING if rank is None else f"{rank:.2f}")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"{summary['metric']} in percent: mean ± sample std (ddof=1; 0.0 for one seed) over seeds; "
        f"{_MISSING} marks a missing result.",
        "",
        _seeds_line(summary),
        "",
        _average_line(summary),
    ]
    return "\n".join(lines) + "\n"


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


def _average_line(summary: Mapping) -> str:
    common, dropped = summary["average_languages"], summary["dropped"]
    if not common:
        return "No language has results for every method, so there is no Avg. or Avg. rank."
    line = (
        f"Avg. (std over seeds of each seed's average) and Avg. rank (1 = best, ties share the average rank) "
        f"are over {', '.join(common)}."
    )
    if dropped:
        reasons = "; ".join(f"{language} (missing for {', '.join(methods)})" for language, methods in dropped.items())
        line += f" Dropped from both: {reasons}."
    return line


def _csv(summary: Mapping) -> str:
    """One row per method; raw metric values (fractions, not percent); an empty field is a missing result."""
    keys = [*summary["languages"], AVERAGE]
    prefixes = [*summary["languages"], "avg"]
    stream = StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(
        ["method", *(f"{prefix}_{part}" for prefix in prefixes for part in ("mean", "std", "n")), "avg_rank"]
    )
    for method in summary["methods"]:
        cells = summary["table"][method]
        row: list[object] = [method]
        for key in keys:
            row += list(cells[key]) if key in cells else ["", "", ""]
        row.append(summary["ranks"].get(method, ""))
        writer.writerow(row)
    return stream.getvalue()


def _png(task: str, summary: Mapping) -> bytes:
    """A grouped bar chart: one group per language (and Avg), one bar per method, error bars = std."""
    methods, table = summary["methods"], summary["table"]
    groups = [*summary["languages"], *([AVERAGE] if summary["average_languages"] else [])]
    # The Avg bars are not over every language on the x axis when some were dropped, so the label says which.
    dropped = summary["dropped"]
    average_label = "Avg" if not dropped else "Avg\n(excl. " + ", ".join(dropped) + ")"
    labels = [*summary["languages"], *([average_label] if summary["average_languages"] else [])]
    # A bare Figure on an Agg canvas rather than pyplot: no global backend switch and no figure registry to leak.
    # Wide enough for every bar to stay readable, plus room for the legend outside the axes.
    width_inches = max(6.0, 0.18 * len(groups) * len(methods) + 0.5 * len(groups) + 2.5)
    figure = Figure(figsize=(width_inches, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        present = [(position, table[method][key]) for position, key in enumerate(groups) if key in table[method]]
        axes.bar(
            [position - 0.4 + width * (index + 0.5) for position, _ in present],
            [100 * cell[0] for _, cell in present],
            width,
            yerr=[100 * cell[1] for _, cell in present],
            capsize=2,
            label=method,
        )
    axes.set_xticks(range(len(groups)), labels)
    axes.set_ylabel(f"{summary['metric']} (%)")
    axes.set_title(f"{task}: {summary['metric']} (mean ± std over seeds)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
