"""The paired bootstrap behind the reports' differences: coverage on synthetic predictions with a known difference,
the verdict, pairing by item id, and the metrics recomputed on resamples as flare_xlt.metrics computes them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from flare_xlt.metrics import macro_f1
from flare_xlt.paired import Difference, Draws, Outcomes, outcomes, paired_difference, resample_counts
from flare_xlt.report import write_report

TRUE_DIFFERENCE = 0.05  # method accuracy 0.55, baseline 0.50, over the population of items and seeds


def synthetic_pair(rng: np.random.Generator, items: int, seeds: int, seed_std: float) -> tuple[Outcomes, Outcomes]:
    """Per-item correctness of a method (accuracy 0.55) and its baseline (0.50) on the same items and seeds.

    Each item has a difficulty u that both methods share (paired items are correlated); a seed keeps an item's
    outcome tied to u with probability 0.85 and draws it afresh otherwise (seeds disagree on single items), and moves
    its method's accuracy by a normal seed effect of std `seed_std`. The difficulty and the fresh draws are uniform,
    so the expected accuracy over items and seeds is exactly 0.55 and 0.50.
    """
    difficulty = rng.random(items)

    def correct(accuracy: float) -> np.ndarray:
        tied = rng.random((seeds, items)) < 0.85
        drawn = np.where(tied, difficulty, rng.random((seeds, items)))
        return (drawn < accuracy + rng.normal(0, seed_std, (seeds, 1))).astype(float)

    ids, numbers = tuple(str(item) for item in range(items)), tuple(range(1, seeds + 1))
    return (
        Outcomes("method", "accuracy", numbers, ids, correct(0.55)),
        Outcomes("baseline", "accuracy", numbers, ids, correct(0.50)),
    )


# One seed cannot show the spread between seeds, so its case has none: its interval covers the test items only.
@pytest.mark.parametrize(("seeds", "seed_std"), [(1, 0.0), (3, 0.015)])
def test_the_interval_covers_a_known_difference_at_about_the_stated_rate(seeds: int, seed_std: float) -> None:
    rng = np.random.default_rng(seeds)
    datasets, covered = 400, 0
    for dataset in range(datasets):
        method, baseline = synthetic_pair(rng, 300, seeds, seed_std)
        difference = paired_difference([(method, baseline)], Draws(seed=dataset))
        covered += difference.low <= TRUE_DIFFERENCE <= difference.high
    # 95 % stated; drawing items and seeds together is somewhat conservative where seeds disagree on single items
    # (paired.py), so up to 99 %. An interval half as wide would cover about 68 %, an items-only one about 85 %, one
    # twice as wide all 400.
    assert 0.92 <= covered / datasets <= 0.995


def test_a_zero_difference_is_level_and_a_clear_one_resolved() -> None:
    rng = np.random.default_rng(0)
    baseline = (rng.random((3, 400)) < 0.5).astype(float)
    # The same number right per seed, on other items: the observed difference is exactly 0.
    method = np.stack([rng.permutation(row) for row in baseline])
    ids = tuple(str(item) for item in range(400))
    level = paired_difference(
        [(Outcomes("m", "accuracy", (1, 2, 3), ids, method), Outcomes("b", "accuracy", (1, 2, 3), ids, baseline))]
    )
    assert level.difference == 0 and level.low < 0 < level.high and level.verdict == "level"
    # 40 more items right in every seed (+10 points) is resolved.
    ahead = method.copy()
    for row in ahead:
        row[np.flatnonzero(row == 0)[:40]] = 1
    resolved = paired_difference(
        [(Outcomes("m", "accuracy", (1, 2, 3), ids, ahead), Outcomes("b", "accuracy", (1, 2, 3), ids, baseline))]
    )
    assert resolved.difference == pytest.approx(0.10) and resolved.low > 0 and resolved.verdict == "ahead"
    assert Difference(-0.05, -0.08, -0.01, 3, 400).verdict == "behind"


def rows(predictions: dict[str, int], references: dict[str, int]) -> dict[str, dict]:
    return {key: {"id": key, "prediction": value, "reference": references[key]} for key, value in predictions.items()}


def test_items_that_cannot_be_paired_are_an_error_naming_the_count() -> None:
    gold = {str(item): item % 2 for item in range(10)}
    baseline = outcomes("lora on sw", "accuracy", {1: rows(gold, gold)})
    # The method's run lost two items: they are not dropped, the comparison refuses.
    short = {key: value for key, value in gold.items() if key not in ("3", "7")}
    method = outcomes("flare on sw", "accuracy", {1: rows(short, gold)})
    with pytest.raises(ValueError, match=r"2 item\(s\) of flare on sw|2 of lora on sw are not in flare on sw"):
        paired_difference([(method, baseline)])
    # Nor may two seeds of one method cover different items.
    with pytest.raises(ValueError, match=r"2 of flare on sw seed 2 are not in flare on sw seed 1"):
        outcomes("flare on sw", "accuracy", {1: rows(short, gold), 2: rows(gold, gold)})


def test_macro_f1_on_a_resample_is_evaluation_macro_f1_of_the_drawn_items() -> None:
    rng = np.random.default_rng(3)
    references = rng.integers(0, 3, 60)
    guesses = zip(rng.random(60), rng.integers(0, 3, 60), strict=True)
    predictions = [None if draw < 0.1 else int(label) for draw, label in guesses]
    ids = [f"{item:02d}" for item in range(60)]
    cell = outcomes(
        "m", "macro_f1", {1: rows(dict(zip(ids, predictions, strict=True)), dict(zip(ids, references, strict=True)))}, 4
    )
    counts = resample_counts(rng, 60, 5)
    for weights, value in zip(counts, cell.on(counts)[:, 0], strict=True):
        drawn = [item for item in range(60) for _ in range(int(weights[item]))]
        expected = macro_f1([predictions[item] for item in drawn], [int(references[item]) for item in drawn], 4)
        assert value == pytest.approx(expected)


def write_predicted_run(
    root: Path, method: str, seed: int, correct: list[bool], reported: float | None = None, language: str = "sw"
) -> None:
    """A finished run with its predictions.jsonl: item i is right where correct[i] (labels 0 and 1)."""
    folder = root / f"{method}-{language}-{seed}"
    folder.mkdir(parents=True)
    predictions = [
        {"id": f"v{item}", "prediction": (item % 2) if right else 1 - item % 2, "reference": item % 2, "output": ""}
        for item, right in enumerate(correct)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in predictions))
    accuracy = sum(correct) / len(correct) if reported is None else reported
    metrics = {
        "task": "canon", "method": method, "seed": seed, "language": language, "metric": "accuracy",
        "run": folder.name, "config_hash": "0", "scores": {language: {"accuracy": accuracy, "count": len(correct)}},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_the_report_gives_each_method_minus_the_baseline_with_its_interval(tmp_path: Path) -> None:
    for seed in (1, 2):
        write_predicted_run(tmp_path, "lora", seed, [item % 2 == 0 for item in range(200)])  # 50 %
        write_predicted_run(tmp_path, "flare", seed, [item % 10 < 8 for item in range(200)])  # 80 %
        write_predicted_run(tmp_path, "zero-shot", seed, [item % 2 == 1 for item in range(200)])  # 50 %, other items
    write_report(tmp_path)
    markdown = (tmp_path / "report_canon.md").read_text(encoding="utf-8")
    assert "| Method | sw | Avg | Avg. rank | Avg − lora [95% CI] |" in markdown
    flare = next(line for line in markdown.splitlines() if line.startswith("| flare |"))
    assert flare.startswith("| flare | 80.0 ± 0.0 | 80.0 ± 0.0 | 1.00 | +30.0 [+") and flare.endswith("] ahead |")
    assert "| lora | 50.0 ± 0.0 | 50.0 ± 0.0 | 2.50 | baseline |" in markdown
    with (tmp_path / "report_canon_differences.csv").open(encoding="utf-8", newline="") as stream:
        found = {(row["method"], row["language"]): row for row in csv.DictReader(stream)}
    assert set(found) == {(method, language) for method in ("zero-shot", "flare") for language in ("sw", "avg")}
    zero_shot = found[("zero-shot", "sw")]
    assert float(zero_shot["difference_percent"]) == 0 and zero_shot["verdict"] == "level"
    assert float(zero_shot["low_percent"]) < 0 < float(zero_shot["high_percent"])
    assert (zero_shot["baseline"], zero_shot["seeds"], zero_shot["items"]) == ("lora", "2", "200")
    # The LaTeX table has the same column (of sw: with one language it has no Avg column).
    tex = (tmp_path / "report_canon.tex").read_text(encoding="utf-8").splitlines()
    assert "Method & sw & Avg.\\ rank & sw $-$ lora [95\\% CI] \\\\" in tex
    assert any(line.startswith("flare & \\textbf{80.0}") and line.endswith("] ahead \\\\") for line in tex)
    # Another baseline on request: flare is then the row the others are measured against.
    write_report(tmp_path, tmp_path / "against-flare", baseline="flare")
    text = (tmp_path / "against-flare" / "report_canon.md").read_text(encoding="utf-8")
    assert "| lora | 50.0 ± 0.0 | 50.0 ± 0.0 | 2.50 | -30.0 [-" in text and "] behind |" in text


def test_macro_f1_counts_the_tasks_classes_when_a_test_set_lacks_one(tmp_path: Path) -> None:
    """A 3-class task whose test items hold classes 0 and 1 only: metrics.json averages F1 over all three classes (the
    absent one scores 0), and the paired recomputation must count them alike, not infer two from the ids it sees."""
    spec = tmp_path / "three.yaml"
    spec.write_text(
        "name: three\nkind: classification\ntext_fields: [text]\nlanguages: [en, sw]\nmetric: macro_f1\n"
        "label_names: [a, b, c]\n"
    )
    for method, right in (("lora", 5), ("flare", 8)):
        correct = [item % 10 < right for item in range(100)]
        write_predicted_run(tmp_path, method, 1, correct)
        folder = tmp_path / f"{method}-sw-1"
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        metrics = json.loads((folder / "metrics.json").read_text())
        value = macro_f1([row["prediction"] for row in rows], [row["reference"] for row in rows], 3)
        metrics.update(task="three", metric="macro_f1", scores={"sw": {"macro_f1": value, "count": 100}})
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "config.json").write_text(json.dumps({"task": str(spec)}))
    write_report(tmp_path)
    with (tmp_path / "report_three_differences.csv").open(encoding="utf-8", newline="") as stream:
        (row,) = [row for row in csv.DictReader(stream) if row["language"] == "sw"]
    assert row["method"] == "flare" and float(row["difference_percent"]) > 0


def test_predictions_that_do_not_reproduce_the_metrics_are_refused(tmp_path: Path) -> None:
    write_predicted_run(tmp_path, "lora", 1, [True, False] * 10)
    write_predicted_run(tmp_path, "flare", 1, [True] * 20, reported=0.9)  # its predictions say 100 %
    with pytest.raises(ValueError, match=r"flare on sw seed 1: predictions\.jsonl gives accuracy 1\.000000"):
        write_report(tmp_path)


def test_with_several_languages_a_table_gives_each_languages_difference_and_avg(tmp_path: Path) -> None:
    for seed in (1, 2):
        for language, flare_right in (("de", 6), ("sw", 8)):  # of every 10 items; lora 5 of 10 in both
            write_predicted_run(tmp_path, "lora", seed, [item % 2 == 0 for item in range(200)], language=language)
            right = [item % 10 < flare_right for item in range(200)]
            write_predicted_run(tmp_path, "flare", seed, right, language=language)
    write_report(tmp_path)
    lines = (tmp_path / "report_canon.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("**Difference from lora** (accuracy points, method minus lora, 95% paired interval):")
    assert lines[start + 2] == "| Method | de | sw | Avg |"
    cells = lines[start + 4].split(" | ")
    assert cells[0] == "| flare" and [cell.split(" [")[0] for cell in cells[1:]] == ["+10.0", "+30.0", "+20.0"]
    assert all(cell.endswith("ahead") for cell in cells[1:-1]) and cells[-1].endswith("ahead |")
    # The main table's column is the Avg difference.
    assert next(line for line in lines if line.startswith("| flare |")).endswith(cells[-1])
