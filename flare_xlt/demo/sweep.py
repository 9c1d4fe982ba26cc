"""`flare-xlt demo --sweep NAME=V1,V2,...`: every method over the seeds at each value of one world setting (e.g. the
MT error rate of one direction), as a table and a plot of the target-language score against the value.

Each point is an ordinary demo setting: its runs live in their own folder and finished runs are reused, so a sweep
that is interrupted, widened or repeated only runs what is missing.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from io import StringIO
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import write_text_atomic
from ..methods import fuses
from ..paired import AVERAGE, Difference, summary_differences
from ..report import DEFAULT_BASELINE, STAGE1_METHOD, collect_runs, difference_text, mean_std, summarize
from .experiment import DemoConfig, run_demo, setting_name

SWEEPABLE = ("mt_error_rate", "mt_error_rate_train", "mt_error_rate_test", "target_resource")
METRIC = "macro_f1"
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """ "mt_error_rate_test=0,0.1,0.2" -> ("mt_error_rate_test", [0.0, 0.1, 0.2])."""
    name, _, values = text.partition("=")
    if name not in SWEEPABLE or not values:
        raise ValueError(f"--sweep takes NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)}; got {text!r}.")
    try:
        points = [float(value) for value in values.split(",")]
    except ValueError as error:
        raise ValueError(f"--sweep values must be numbers separated by commas; got {values!r}.") from error
    if len(set(points)) != len(points):
        raise ValueError(f"--sweep values repeat: {values!r}.")
    return name, sorted(points)


def sweep_scores(config: DemoConfig, name: str, values: list[float]) -> dict[str, dict[float, list[float]]]:
    """method -> value -> the target-language scores of the config's seeds (stage 1 left out)."""
    scores: dict[str, dict[float, list[float]]] = {}
    for value in values:
        for run in _transfer_runs(config, name, value):
            scores.setdefault(run["method"], {}).setdefault(value, []).append(run["scores"]["average"][METRIC])
    return scores


def sweep_differences(
    config: DemoConfig, name: str, values: list[float], baseline: str = DEFAULT_BASELINE
) -> dict[str, dict[float, Difference]]:
    """method -> value -> the method minus `baseline` on the target language, with its paired 95% interval."""
    differences: dict[str, dict[float, Difference]] = {}
    for value in values:
        for summary in summarize(_transfer_runs(config, name, value)).values():
            for method, per_language in summary_differences(summary, baseline).items():
                if AVERAGE in per_language:
                    differences.setdefault(method, {})[value] = per_language[AVERAGE]
    return differences


def _transfer_runs(config: DemoConfig, name: str, value: float) -> list[dict]:
    folder = Path(config.output) / setting_name(replace(config, **{name: value}))
    runs = collect_runs(folder / "runs")
    return [run for run in runs if run["method"] != STAGE1_METHOD and run["seed"] in config.seeds]


def run_sweep(config: DemoConfig, name: str, values: list[float]) -> str:
    """Run the demo at every value of `name` and write sweep-<model>-<name>.{md,csv,png,pdf}; return the table."""
    for value in values:
        print(run_demo(replace(config, **{name: value})), flush=True)
    scores = sweep_scores(config, name, values)
    stem = Path(config.output) / f"sweep-{config.model_type}-{name}"
    table = _markdown(config, name, values, scores) + _differences_markdown(
        name, values, sweep_differences(config, name, values)
    )
    write_text_atomic(stem.with_suffix(".md"), table)
    write_text_atomic(stem.with_suffix(".csv"), _tidy_csv(name, scores))
    _plot(config, name, values, scores, stem)
    return f"{table}\nTable, CSV and plot: {stem}.{{md,csv,png,pdf}}"


def _markdown(config: DemoConfig, name: str, values: list[float], scores: dict) -> str:
    lines = [
        f"{config.model_type}: target-language {METRIC} (mean ± std over seeds {', '.join(map(str, config.seeds))})",
        "",
        *_table_head(name, values),
    ]
    for method, per_value in scores.items():
        cells = [mean_std(per_value[value]) if value in per_value else "" for value in values]
        lines.append(f"| {method} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _table_head(name: str, values: list[float]) -> list[str]:
    return [f"| method | {' | '.join(f'{name}={value:g}' for value in values)} |", "|---" * (len(values) + 1) + "|"]


def _differences_markdown(name: str, values: list[float], differences: dict[str, dict[float, Difference]]) -> str:
    """Each method minus the baseline at every value, with its paired interval and verdict (as in the demo's report)."""
    if not differences:
        return ""
    lines = [
        "",
        f"Difference from {DEFAULT_BASELINE} ({METRIC} points, 95% paired interval):",
        "",
        *_table_head(name, values),
    ]
    for method, per_value in differences.items():
        lines.append(f"| {method} | {' | '.join(difference_text(per_value.get(value)) for value in values)} |")
    return "\n".join(lines) + "\n"


def _tidy_csv(name: str, scores: dict) -> str:
    buffer = StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", name, "seed_index", f"{METRIC}_percent"])
    for method, per_value in scores.items():
        for value, seed_scores in sorted(per_value.items()):
            for index, score in enumerate(seed_scores):
                writer.writerow([method, f"{value:g}", index, f"{100 * score:.2f}"])
    return buffer.getvalue()


def _plot(config: DemoConfig, name: str, values: list[float], scores: dict, stem: Path) -> None:
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (method, per_value) in enumerate(scores.items()):
        xs = [value for value in values if value in per_value]
        means = [100 * statistics.mean(per_value[value]) for value in xs]
        spreads = [100 * statistics.stdev(per_value[value]) if len(per_value[value]) > 1 else 0.0 for value in xs]
        flare = fuses(method, config.variants)
        style = dict(
            color=PALETTE[index % len(PALETTE)],
            linewidth=2.4 if flare else 1.4,
            linestyle="-" if flare else "--",
            marker="o",
            label=method,
        )
        if any(spreads):
            axes.errorbar(xs, means, yerr=spreads, capsize=3, **style)
        else:
            axes.plot(xs, means, **style)
    axes.set_xlabel(name.replace("_", " "))
    axes.set_ylabel(f"Tolan {METRIC} (×100)")
    axes.set_title(f"{config.model_type} demo: score against {name} ({len(config.seeds)} seeds, mean ± std)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", ncols=2)
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        scratch = path.with_name(f".{path.name}.partial")
        figure.savefig(scratch, dpi=150, format=suffix[1:])
        scratch.replace(path)
