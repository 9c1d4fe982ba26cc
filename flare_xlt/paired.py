"""Paired bootstrap intervals for the difference between two methods, from the runs' per-item predictions.

A method and its baseline are compared seed by seed on the same test items: items are paired by their id (from each
run's predictions.jsonl) and seeds by their number (a seed's runs share one stage-1 run). One resample draws the
test items of each language with replacement and, independently, the seeds with replacement; the metric is
recomputed on the drawn items for every drawn seed of both methods (macro-F1 from the drawn items' confusion counts,
not as a mean of per-item scores), and the difference is the mean over drawn seeds of method minus baseline. The
interval is the 2.5th to 97.5th percentile of RESAMPLES such differences, drawn from a fixed seed so that a report
is reproducible. The Avg difference is the mean over languages, with the same seed draw for every language; languages
whose test items have the same ids (a parallel test set) also share the item draw, so one item's translations are
drawn together.

Drawing items and seeds together counts the part of the spread that is neither item nor seed (an item that one
seed gets right and another wrong) more than once, so the interval is somewhat conservative when seeds disagree on
single items; an items-only bootstrap would instead ignore the seed-to-seed spread altogether.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import UNPARSEABLE_ID, exact_match, f1
from .tasks import get_task

RESAMPLES = 1000
CONFIDENCE = 0.95
RNG_SEED = 0
AVERAGE = "average"
# A per-item score whose mean is the metric.
_ITEM_SCORES: dict[str, Callable[[object, object], float]] = {
    "accuracy": lambda prediction, reference: float(prediction == reference),
    "exact_match": exact_match,
    "f1": f1,
}
_METRICS = (*_ITEM_SCORES, "macro_f1")
# How close the metric recomputed from predictions.jsonl must be to the metrics.json value it should reproduce.
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Difference:
    """Method minus baseline (fractions) with its paired bootstrap interval, over `seeds` seeds and `items` items."""

    difference: float
    low: float
    high: float
    seeds: int
    items: int

    @property
    def verdict(self) -> str:
        """ahead or behind where the interval excludes 0 (the difference is resolved), else level."""
        if self.low > 0:
            return "ahead"
        return "behind" if self.high < 0 else "level"


@dataclass(frozen=True)
class Outcomes:
    """One method on one language: per seed, its predictions of the same test items (ids), as the metric reads them.

    `scores` is seeds x items: per-item scores for accuracy, exact_match and f1, predicted class ids (UNPARSEABLE_ID
    for none) for macro_f1, whose `references` are the gold class ids.
    """

    name: str
    metric: str
    seeds: tuple[int, ...]
    ids: tuple[str, ...]
    scores: np.ndarray
    references: np.ndarray | None = None
    num_labels: int = 0

    def on(self, weights: np.ndarray) -> np.ndarray:
        """The metric per resample (rows of `weights`, each item's count in it) and seed: resamples x seeds."""
        if self.metric != "macro_f1":
            return weights @ self.scores.T / len(self.ids)
        return np.stack([self._macro_f1(weights, row) for row in self.scores], axis=1)

    def _macro_f1(self, weights: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        classes = np.arange(self.num_labels)
        guessed = (predicted[:, None] == classes).astype(float)
        actual = (self.references[:, None] == classes).astype(float)
        hits, guesses, golds = weights @ (guessed * actual), weights @ guessed, weights @ actual
        # 2 TP / (2 TP + FP + FN); a class neither predicted nor present scores 0, as evaluation.macro_f1 does.
        per_class = np.divide(2 * hits, guesses + golds, out=np.zeros_like(hits), where=guesses + golds > 0)
        return per_class.mean(axis=1)

    def observed(self) -> np.ndarray:
        """The metric per seed on the test items themselves."""
        return self.on(np.ones((1, len(self.ids))))[0]

    def select(self, seeds: list[int]) -> Outcomes:
        rows = [self.seeds.index(seed) for seed in seeds]
        scores = self.scores[rows]
        return Outcomes(self.name, self.metric, tuple(seeds), self.ids, scores, self.references, self.num_labels)


def read_predictions(metrics_path: Path, language: str, scored_languages: list[str]) -> dict[str, dict] | None:
    """{id: row} of a run's predictions.jsonl for one language, or None where the run has no such file or its rows
    cannot be told apart by language (rows without a "language" field from a run that scored several)."""
    path = Path(metrics_path).parent / "predictions.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not all("language" in row for row in rows):
        if scored_languages != [language]:
            return None
        rows = [{**row, "language": language} for row in rows]
    items: dict[str, dict] = {}
    for row in rows:
        if row["language"] == language:
            if str(row["id"]) in items:
                raise ValueError(f"{path}: item {row['id']!r} appears twice for {language!r}.")
            items[str(row["id"])] = row
    return items


def outcomes(name: str, metric: str, per_seed: Mapping[int, Mapping[str, dict]], num_labels: int = 0) -> Outcomes:
    """The Outcomes `name` (e.g. "flare on sw") from its seeds' {id: row}; every seed must have the same items."""
    if metric not in _METRICS:
        raise ValueError(f"No paired bootstrap for metric {metric!r}; it supports {', '.join(_METRICS)}.")
    seeds = sorted(per_seed)
    ids = _paired_ids({f"{name} seed {seed}": per_seed[seed] for seed in seeds})
    predictions = [[_label(per_seed[seed][item]["prediction"]) for item in ids] for seed in seeds]
    if metric == "macro_f1":
        references = np.array([per_seed[seeds[0]][item]["reference"] for item in ids])
        return Outcomes(name, metric, tuple(seeds), tuple(ids), np.array(predictions), references, num_labels)
    score, references = _ITEM_SCORES[metric], [per_seed[seeds[0]][item]["reference"] for item in ids]
    table = [[score(guess, gold) for guess, gold in zip(row, references, strict=True)] for row in predictions]
    return Outcomes(name, metric, tuple(seeds), tuple(ids), np.array(table, dtype=float))


def _label(prediction: object) -> object:
    return UNPARSEABLE_ID if prediction is None else prediction


def label_count(rows: list[dict]) -> int:
    """The number of classes: one more than the highest class id any prediction or reference names."""
    labels = [row[key] for row in rows for key in ("prediction", "reference") if isinstance(row[key], int)]
    return max(labels, default=0) + 1


def _paired_ids(named: Mapping[str, Mapping[str, dict]]) -> list[str]:
    """The item ids that every named set of predictions shares; any item without a partner is a ValueError."""
    (first_name, first), *others = named.items()
    for name, rows in others:
        missing, extra = set(first) - set(rows), set(rows) - set(first)
        if missing or extra:
            example = sorted(missing or extra)[:3]
            raise ValueError(
                f"Cannot pair items: {len(missing)} item(s) of {first_name} are not in {name}, and {len(extra)} of "
                f"{name} are not in {first_name} (e.g. {example}); paired intervals need the same test items."
            )
    return sorted(first)


def resample_counts(rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """resamples x size: how often each of `size` units is drawn in each resample (size draws with replacement)."""
    draws = rng.integers(0, size, (resamples, size)) + size * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * size).reshape(resamples, size).astype(float)


class Draws:
    """The resamples of one report, made once and shared by every comparison in it.

    Items are drawn per set of ids, so a test set's items get the same draw in every comparison and every language
    that has the same ids (a parallel test set's translations of one item are drawn together); seeds are drawn per
    set of seeds. Each draw comes from a generator seeded with `seed` and what it draws, so a report is reproducible
    whichever methods it holds. The metric on the drawn items is kept per Outcomes (the baseline is computed once).
    """

    def __init__(self, resamples: int = RESAMPLES, seed: int = RNG_SEED) -> None:
        self.resamples, self.seed = resamples, seed
        self._counts: dict[tuple[str, tuple], np.ndarray] = {}
        self._metric: dict[int, tuple[Outcomes, np.ndarray]] = {}

    def _drawn(self, kind: str, units: tuple) -> np.ndarray:
        if (kind, units) not in self._counts:
            digest = zlib.crc32("\n".join(map(str, (kind, *units))).encode())
            rng = np.random.default_rng([self.seed, len(units), digest])
            self._counts[(kind, units)] = resample_counts(rng, len(units), self.resamples)
        return self._counts[(kind, units)]

    def seeds(self, seeds: list[int]) -> np.ndarray:
        """resamples x seeds: how often each seed is drawn."""
        return self._drawn("seeds", tuple(seeds))

    def metric(self, outcome: Outcomes, seeds: list[int]) -> np.ndarray:
        """resamples x seeds: the outcome's metric on the drawn items, for the given seeds of it."""
        if id(outcome) not in self._metric:
            self._metric[id(outcome)] = (outcome, outcome.on(self._drawn("items", outcome.ids)))
        return self._metric[id(outcome)][1][:, [outcome.seeds.index(seed) for seed in seeds]]


def paired_difference(pairs: list[tuple[Outcomes, Outcomes]], draws: Draws | None = None) -> Difference:
    """The mean over the pairs (method, baseline), one per language, of method minus baseline, with its interval.

    Seeds that both methods have in every language are used; items are paired by id within each language.
    """
    draws = Draws() if draws is None else draws
    seeds = sorted(set.intersection(*(set(method.seeds) & set(baseline.seeds) for method, baseline in pairs)))
    if not seeds:
        raise ValueError("The method and its baseline share no seed.")
    seed_counts = draws.seeds(seeds)
    observed, resampled = 0.0, np.zeros(draws.resamples)
    for method, baseline in pairs:
        _paired_ids({method.name: dict.fromkeys(method.ids), baseline.name: dict.fromkeys(baseline.ids)})
        per_seed = draws.metric(method, seeds) - draws.metric(baseline, seeds)
        resampled += (per_seed * seed_counts).sum(axis=1) / len(seeds)
        observed += float(np.mean(method.select(seeds).observed() - baseline.select(seeds).observed()))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(resampled / len(pairs), [tail, 100 - tail])
    items = sum(len(method.ids) for method, _ in pairs)
    return Difference(observed / len(pairs), float(low), float(high), len(seeds), items)


def check_reproduces(outcome: Outcomes, reported: Mapping[int, float]) -> None:
    """The metric recomputed from predictions.jsonl must be the value metrics.json reports, seed by seed."""
    for seed, value in zip(outcome.seeds, outcome.observed(), strict=True):
        if not math.isclose(value, reported[seed], abs_tol=_TOLERANCE):
            raise ValueError(
                f"{outcome.name} seed {seed}: predictions.jsonl gives {outcome.metric} {value:.6f}, metrics.json "
                f"{reported[seed]:.6f}; the paired interval would not describe the table."
            )


def summary_differences(
    summary: Mapping, baseline: str, resamples: int = RESAMPLES
) -> dict[str, dict[str, Difference]]:
    """differences[method][language or AVERAGE] against `baseline` for a report.summarize task summary.

    Only cells whose every run has its predictions.jsonl get one; the Avg needs every language of the summary's
    Avg. Empty where the baseline is not a method of the summary.
    """
    if baseline not in summary["methods"]:
        return {}
    items = _cell_items(summary)
    num_labels = _task_label_count(summary) or label_count(
        [row for per_seed in items.values() for rows in per_seed.values() for row in rows.values()]
    )
    cells = {}
    for (method, language), per_seed in items.items():
        name = f"{method} on {language}"
        cells[(method, language)] = outcomes(name, summary["metric"], per_seed, num_labels)
        check_reproduces(cells[(method, language)], summary["per_seed"][method][language])
    draws = Draws(resamples)
    found = {
        method: _method_differences(summary, cells, method, baseline, draws)
        for method in summary["methods"]
        if method != baseline
    }
    return {method: differences for method, differences in found.items() if differences}


def _task_label_count(summary: Mapping) -> int | None:
    """The number of classes of the runs' task, as their metrics.json counted them (a test set that lacks the last
    class would be undercounted from the ids it holds); None for a QA task, runs built by hand, or a task that is
    neither built in nor a spec file."""
    for per_language in summary["runs"].values():
        for per_seed in per_language.values():
            for run in per_seed.values():
                config = Path(run.get("path", "")).parent / "config.json"  # path: the run's metrics.json
                task = json.loads(config.read_text()).get("task") if "path" in run and config.is_file() else None
                if task is not None:
                    try:
                        spec = get_task(task)
                    except ValueError:  # a task defined in code (the demo's): counted from the ids instead
                        return None
                    return len(spec.label_names) if spec.kind == "classification" else None
    return None


def _cell_items(summary: Mapping) -> dict[tuple[str, str], dict[int, dict[str, dict]]]:
    """{(method, language): {seed: {id: row}}} for the cells whose runs all have readable predictions."""
    items = {}
    for method, per_language in summary["runs"].items():
        for language, per_seed in per_language.items():
            rows = {seed: _run_items(run, language) for seed, run in per_seed.items()}
            if all(value is not None for value in rows.values()):
                items[(method, language)] = rows
    return items


def _run_items(run: Mapping, language: str) -> dict[str, dict] | None:
    if "path" not in run:  # a run built by hand, not read from a folder
        return None
    return read_predictions(Path(run["path"]), language, [key for key in run["scores"] if key != AVERAGE])


def _method_differences(
    summary: Mapping, cells: Mapping[tuple[str, str], Outcomes], method: str, baseline: str, draws: Draws
) -> dict[str, Difference]:
    def pairs(languages: list[str]) -> list[tuple[Outcomes, Outcomes]] | None:
        found = [(cells.get((method, language)), cells.get((baseline, language))) for language in languages]
        complete = languages and all(a is not None and b is not None for a, b in found)
        shared = complete and set.intersection(*(set(a.seeds) & set(b.seeds) for a, b in found))
        return found if shared else None

    differences = {}
    for key, languages in [*((language, [language]) for language in summary["languages"]), (AVERAGE, None)]:
        found = pairs(summary["average_languages"] if languages is None else languages)
        if found is not None:
            differences[key] = paired_difference(found, draws)
    return differences
