"""Reports from fake finished runs; every expected number below is worked out by hand in the comments."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from flare_xlt import report as report_module
from flare_xlt.report import METHOD_ORDER, collect_runs, fusing_methods, plot_summary, summarize, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PDF_SIGNATURE = b"%PDF-"


def report_names(task: str) -> list[str]:
    suffixes = (".md", ".csv", "_per_seed.csv", "_differences.csv", ".tex", ".png", ".pdf")
    return [f"report_{task}{suffix}" for suffix in suffixes]


# xnli (accuracy), values[method][language] = one score per seed 1, 2, 3 (None = that seed has no result).
XNLI = {
    "zero-shot": {"de": [0.50, 0.52, 0.54], "sw": [0.40, 0.40, 0.40], "th": [0.30, 0.33, 0.36]},
    "lora": {"de": [0.60, 0.62, 0.64], "sw": [0.40, 0.44, None], "th": [0.35, 0.35, 0.38]},
    "flare": {"de": [0.70, 0.70, 0.70], "sw": [0.41, 0.42, 0.43]},  # no th: dropped from Avg and ranks
}
# tydiqa (f1), seeds 1 and 2; "custom" is not in METHOD_ORDER so it comes last.
TYDIQA = {
    "flare": {"ar": [0.70, 0.72], "sw": [0.60, 0.64]},
    "custom": {"ar": [0.65, 0.65], "sw": [0.50, 0.52]},
    "zero-shot": {"ar": [0.50, 0.60], "sw": [0.40, 0.42]},
}


def classification(accuracy: float) -> dict:
    return {"accuracy": accuracy, "macro_f1": accuracy - 0.01, "unparseable": 0, "count": 100}


def qa(f1: float) -> dict:
    return {"exact_match": f1 - 0.1, "f1": f1, "count": 50}


def write_run(path: Path, **fields: object) -> Path:
    path.mkdir(parents=True)
    metrics = {"run": path.name, "config_hash": "0123abcd", **fields}
    (path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return path / "metrics.json"


def write_runs(root: Path) -> None:
    # zero-shot: one run per seed scoring every language, with a bogus "average" that the report must ignore.
    for seed in (1, 2, 3):
        scores = {language: classification(values[seed - 1]) for language, values in XNLI["zero-shot"].items()}
        scores["average"] = classification(0.99)
        write_run(
            root / "xnli" / "zero-shot" / f"seed{seed}",
            task="xnli",
            method="zero-shot",
            seed=seed,
            language="en",
            metric="accuracy",
            scores=scores,
        )
    # lora and flare: one run per target language and seed, at another depth to exercise the recursive search.
    for method in ("lora", "flare"):
        for language, values in XNLI[method].items():
            for seed, value in enumerate(values, start=1):
                if value is None:
                    continue
                scores = {language: classification(value)}
                # The de runs also evaluate sw on the side; only the dedicated sw runs may fill that cell, even for
                # seed 3, which has no sw run.
                if language == "de":
                    scores["sw"] = classification(0.99)
                write_run(
                    root / "xnli" / method / language / f"seed{seed}",
                    task="xnli",
                    method=method,
                    seed=seed,
                    language=language,
                    metric="accuracy",
                    scores=scores,
                )
    for method, per_language in TYDIQA.items():
        for seed in (1, 2):
            write_run(
                root / f"tydiqa-{method}-{seed}",
                task="tydiqa",
                method=method,
                seed=seed,
                language="en",
                metric="f1",
                scores={language: qa(values[seed - 1]) for language, values in per_language.items()},
            )


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    write_runs(root)
    return root


def test_collect_runs_finds_every_metrics_file_recursively(runs_dir: Path) -> None:
    runs = collect_runs(runs_dir)
    # xnli: 3 zero-shot + lora (3 de + 2 sw + 3 th) + flare (3 de + 3 sw); tydiqa: 3 methods x 2 seeds.
    assert len(runs) == 3 + 8 + 6 + 6
    assert {run["task"] for run in runs} == {"xnli", "tydiqa"}
    assert all(run["path"].name == "metrics.json" and run["config_hash"] == "0123abcd" for run in runs)


def test_means_sample_std_and_seed_counts(runs_dir: Path) -> None:
    xnli = summarize(collect_runs(runs_dir))["xnli"]
    assert xnli["metric"] == "accuracy"
    assert xnli["methods"] == ["zero-shot", "lora", "flare"]
    assert xnli["languages"] == ["de", "sw", "th"]
    table = xnli["table"]
    # de 0.50, 0.52, 0.54: mean 0.52; deviations ±0.02 and 0, sum of squares 0.0008 / (3 - 1) -> std 0.02.
    assert table["zero-shot"]["de"] == pytest.approx((0.52, 0.02, 3))
    assert table["zero-shot"]["sw"] == pytest.approx((0.40, 0.0, 3))
    # lora sw has seeds 1 and 2 only (the de runs' side evaluations at 0.99 are not taken): 0.40, 0.44 -> mean
    # 0.42, deviations ±0.02, 0.0008 / (2 - 1) -> std sqrt(0.0008) = 0.02 * sqrt(2).
    assert table["lora"]["sw"] == pytest.approx((0.42, 0.02 * math.sqrt(2), 2))
    # lora th 0.35, 0.35, 0.38: mean 0.36; deviations -0.01, -0.01, 0.02 -> 0.0006 / 2 = 0.0003.
    assert table["lora"]["th"] == pytest.approx((0.36, math.sqrt(0.0003), 3))
    assert table["flare"]["sw"] == pytest.approx((0.42, 0.01, 3))
    assert "th" not in table["flare"]


def test_single_seed_has_zero_std(tmp_path: Path) -> None:
    write_run(
        tmp_path / "one",
        task="xnli",
        method="lora",
        seed=7,
        language="de",
        metric="accuracy",
        scores={"de": classification(0.5)},
    )
    assert summarize(collect_runs(tmp_path))["xnli"]["table"]["lora"]["de"] == (0.5, 0.0, 1)


def test_average_over_common_languages_only(runs_dir: Path) -> None:
    xnli = summarize(collect_runs(runs_dir))["xnli"]
    assert xnli["average_languages"] == ["de", "sw"]
    assert xnli["dropped"] == {"th": ["flare"]}
    table = xnli["table"]
    # zero-shot: mean (0.52 + 0.40) / 2 = 0.46 (th's 0.33 is left out); per-seed averages 0.45, 0.46, 0.47 -> std 0.01.
    assert table["zero-shot"]["average"] == pytest.approx((0.46, 0.01, 3))
    # lora: mean (0.62 + 0.42) / 2 = 0.52; only seeds 1 and 2 cover de and sw: (0.60 + 0.40) / 2 = 0.50 and
    # (0.62 + 0.44) / 2 = 0.53 -> std 0.03 / sqrt(2).
    assert table["lora"]["average"] == pytest.approx((0.52, 0.03 / math.sqrt(2), 2))
    # flare: (0.70 + 0.42) / 2 = 0.56; per seed 0.555, 0.56, 0.565 -> std 0.005.
    assert table["flare"]["average"] == pytest.approx((0.56, 0.005, 3))


def test_average_ranks_with_a_tie(runs_dir: Path) -> None:
    ranks = summarize(collect_runs(runs_dir))["xnli"]["ranks"]
    # de: flare 0.70 -> 1, lora 0.62 -> 2, zero-shot 0.52 -> 3. sw: lora 0.42 and flare 0.42 tie for ranks 1 and 2
    # -> 1.5 each (their means differ only by float noise), zero-shot 0.40 -> 3. th is not ranked (flare lacks it).
    assert ranks == {"flare": pytest.approx(1.25), "lora": pytest.approx(1.75), "zero-shot": pytest.approx(3.0)}


def test_metric_override(runs_dir: Path) -> None:
    # xnli runs have no exact_match, so only the tydiqa runs are summarized.
    runs = [run for run in collect_runs(runs_dir) if run["task"] == "tydiqa"]
    tydiqa = summarize(runs, metric="exact_match")["tydiqa"]
    assert tydiqa["metric"] == "exact_match"
    # exact_match = f1 - 0.1: flare ar 0.60, 0.62.
    assert tydiqa["table"]["flare"]["ar"] == pytest.approx((0.61, 0.01 * math.sqrt(2), 2))


def test_unknown_methods_come_after_method_order_alphabetically() -> None:
    runs = [
        {
            "task": "t",
            "method": method,
            "seed": 1,
            "language": "de",
            "metric": "accuracy",
            "run": method,
            "scores": {"de": classification(0.5)},
        }
        for method in ("zeta", "flare-mt", "alpha", "zero-shot")
    ]
    assert summarize(runs)["t"]["methods"] == ["zero-shot", "flare-mt", "alpha", "zeta"]
    assert METHOD_ORDER.index("zero-shot") < METHOD_ORDER.index("flare-mt")


def test_markdown_table(runs_dir: Path, tmp_path: Path) -> None:
    paths = write_report(runs_dir, tmp_path / "out")
    markdown = (tmp_path / "out" / "report_tydiqa.md").read_text(encoding="utf-8")
    # zero-shot ar 0.50, 0.60: 55.0 ± 7.1 (0.1 / sqrt 2); sw 0.40, 0.42: 41.0 ± 1.4; Avg (55 + 41) / 2 = 48.0 with
    # per-seed averages 0.45, 0.51 -> 0.06 / sqrt 2 = 4.2. flare: 71.0 ± 1.4, 62.0 ± 2.8, Avg 66.5 with per-seed
    # 0.65, 0.68 -> 2.1. custom: 65.0 ± 0.0, 51.0 ± 1.4, Avg 58.0 with per-seed 0.575, 0.585 -> 0.7.
    # Ranks: flare first and custom second in both languages.
    assert markdown == (
        "# tydiqa: f1\n"
        "\n"
        "| Method | ar | sw | Avg | Avg. rank |\n"
        "| :--- | ---: | ---: | ---: | ---: |\n"
        "| zero-shot | 55.0 ± 7.1 | 41.0 ± 1.4 | 48.0 ± 4.2 | 3.00 |\n"
        "| flare | 71.0 ± 1.4 | 62.0 ± 2.8 | 66.5 ± 2.1 | 1.00 |\n"
        "| custom | 65.0 ± 0.0 | 51.0 ± 1.4 | 58.0 ± 0.7 | 2.00 |\n"
        "\n"
        "f1 in percent: mean ± sample std (ddof=1) over seeds, the value alone for one seed; – marks a missing "
        "result.\n"
        "\n"
        "Seeds per cell: 2.\n"
        "\n"
        "Avg. (std over seeds of each seed's average) and Avg. rank (1 = best, ties share the average rank) "
        "are over ar, sw.\n"
        "\n"
        "No paired differences: no lora rows to compare with.\n"
    )
    assert sorted(path.name for path in paths) == sorted(report_names("xnli") + report_names("tydiqa"))
    # The Markdown first: the demo prints paths[0] as the table.
    assert paths[0].name == "report_tydiqa.md"


def test_markdown_missing_cell_varying_seeds_and_dropped_language(runs_dir: Path) -> None:
    write_report(runs_dir)
    lines = (runs_dir / "report_xnli.md").read_text(encoding="utf-8").splitlines()
    assert lines[2] == "| Method | de | sw | th | Avg | Avg. rank |"
    # flare has no th; its Avg is (0.70 + 0.42) / 2 with std 0.005; ranks (1 + 1.5) / 2.
    assert lines[6] == "| flare | 70.0 ± 0.0 | 42.0 ± 1.0 | – | 56.0 ± 0.5 | 1.25 |"
    assert "Seeds per cell: 3, except lora/sw 2, lora/Avg 2." in lines
    assert lines[-3].endswith("are over de, sw. Dropped from both: th (missing for flare).")
    # The fixture's runs have no predictions.jsonl, so there is nothing to pair, and the report says so.
    assert lines[-1] == "No paired differences from lora: the runs have no predictions.jsonl (per-item predictions)."


def test_csv_columns_and_values(runs_dir: Path, tmp_path: Path) -> None:
    write_report(runs_dir, tmp_path)
    with (tmp_path / "report_xnli.csv").open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        rows = {row["method"]: row for row in reader}
    parts = ("mean_percent", "std_percent", "n")
    assert reader.fieldnames == [
        "method",
        *(f"{language}_{part}" for language in ("de", "sw", "th", "avg") for part in parts),
        "avg_rank",
    ]
    assert list(rows) == ["zero-shot", "lora", "flare"]
    # In percent, as the header says and as the Markdown and the per-seed CSV are.
    lora = rows["lora"]
    assert float(lora["sw_mean_percent"]) == pytest.approx(42.0)
    assert float(lora["sw_std_percent"]) == pytest.approx(2 * math.sqrt(2))
    assert lora["sw_n"] == "2"
    assert float(lora["avg_mean_percent"]) == pytest.approx(52.0)
    assert float(lora["avg_std_percent"]) == pytest.approx(3 / math.sqrt(2))
    assert float(lora["avg_rank"]) == pytest.approx(1.75)
    # A missing result is empty fields, not a zero.
    flare = rows["flare"]
    assert (flare["th_mean_percent"], flare["th_std_percent"], flare["th_n"]) == ("", "", "")


def test_png_is_written(runs_dir: Path, tmp_path: Path) -> None:
    write_report(runs_dir, tmp_path)
    for task in ("xnli", "tydiqa"):
        data = (tmp_path / f"report_{task}.png").read_bytes()
        assert len(data) > len(PNG_SIGNATURE)
        assert data[:8] == PNG_SIGNATURE


def test_no_temporary_files_remain(runs_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "reports"
    write_report(runs_dir, output)
    # Only the reports: a leftover ".<name>.<random>.tmp" from the atomic writes would show up here.
    assert sorted(path.name for path in output.rglob("*")) == sorted(report_names("tydiqa") + report_names("xnli"))


def test_malformed_metrics_names_file_and_key(runs_dir: Path) -> None:
    broken = runs_dir / "xnli" / "lora" / "de" / "seed1" / "metrics.json"
    metrics = json.loads(broken.read_text(encoding="utf-8"))
    del metrics["seed"]
    broken.write_text(json.dumps(metrics), encoding="utf-8")
    with pytest.raises(ValueError, match="missing key 'seed'") as caught:
        collect_runs(runs_dir)
    assert str(broken) in str(caught.value)


def test_invalid_json_names_file(tmp_path: Path) -> None:
    broken = tmp_path / "run" / "metrics.json"
    broken.parent.mkdir()
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON") as caught:
        collect_runs(tmp_path)
    assert str(broken) in str(caught.value)


def test_missing_metric_in_scores_names_file(tmp_path: Path) -> None:
    path = write_run(
        tmp_path / "run",
        task="tydiqa",
        method="lora",
        seed=1,
        language="ar",
        metric="f1",
        scores={"ar": {"exact_match": 0.5, "count": 3}},
    )
    with pytest.raises(ValueError, match="missing key 'f1'") as caught:
        summarize(collect_runs(tmp_path))
    assert str(path) in str(caught.value)


def test_ambiguous_duplicate_results_are_rejected(tmp_path: Path) -> None:
    paths = [
        write_run(
            tmp_path / name,
            task="xnli",
            method="zero-shot",
            seed=1,
            language="en",
            metric="accuracy",
            scores={"de": classification(0.5)},
        )
        for name in ("first", "second")
    ]
    with pytest.raises(ValueError, match="2 results for 'de'") as caught:
        summarize(collect_runs(tmp_path))
    assert all(str(path) in str(caught.value) for path in paths)


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    assert collect_runs(tmp_path) == []
    with pytest.raises(ValueError, match=r"No transfer runs \(metrics\.json\)"):
        write_report(tmp_path)


def test_stage1_runs_are_not_rows_of_the_transfer_tables(tmp_path):
    from flare_xlt.report import write_report

    def run(folder, method, language, value):
        (tmp_path / folder).mkdir()
        scores = {language: {"accuracy": value, "count": 3}, "average": {"accuracy": value, "count": 3}}
        (tmp_path / folder / "metrics.json").write_text(
            json.dumps(
                {
                    "task": "xnli",
                    "method": method,
                    "seed": 1,
                    "language": language,
                    "metric": "accuracy",
                    "scores": scores,
                    "run": folder,
                    "config_hash": "0",
                }
            )
        )

    run("stage1", "finetune", "en", 0.9)
    run("flare", "flare", "sw", 0.6)
    run("lora", "lora", "sw", 0.5)
    write_report(tmp_path)
    rows = {row["method"]: row for row in csv.DictReader((tmp_path / "report_xnli.csv").open())}
    assert set(rows) == {"flare", "lora"}
    assert (float(rows["flare"]["avg_mean_percent"]), float(rows["flare"]["avg_rank"])) == (60.0, 1.0)
    # They are the stage-1 column instead: the English score every method starts from (one seed: no "±").
    assert [float(rows[method]["stage1_en_mean_percent"]) for method in ("flare", "lora")] == [90.0, 90.0]
    lines = (tmp_path / "report_xnli.md").read_text(encoding="utf-8").splitlines()
    assert lines[2] == "| Method | en (stage 1) | sw | Avg | Avg. rank |"
    assert lines[4] == "| lora | 90.0 | 50.0 | 50.0 | 2.00 |"


def test_stage1_column_takes_the_stage1_runs_of_the_rows_seeds(tmp_path: Path) -> None:
    for seed, english in ((1, 0.80), (2, 0.90), (3, 0.70)):
        write_run(
            tmp_path / f"stage1-{seed}", task="xnli", method="finetune", seed=seed, language="en",
            metric="accuracy", scores={"en": classification(english)},
        )  # fmt: skip
    for method, seeds in (("lora", (1, 2)), ("flare", (1, 2, 3))):
        for seed in seeds:
            write_run(
                tmp_path / f"{method}-{seed}", task="xnli", method=method, seed=seed, language="sw",
                metric="accuracy", scores={"sw": classification(0.5)},
            )  # fmt: skip
    write_report(tmp_path)
    lines = (tmp_path / "report_xnli.md").read_text(encoding="utf-8").splitlines()
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in lines if line.startswith("| ")}
    # lora ran seeds 1 and 2, whose stage 1 scored 80 and 90; flare also seed 3 (70): 80 ± 10 over three.
    assert rows["lora"] == "85.0 ± 7.1" and rows["flare"] == "80.0 ± 10.0"
    # Without stage-1 runs in the folder there is no such column.
    for seed in (1, 2, 3):
        (tmp_path / f"stage1-{seed}" / "metrics.json").unlink()
    write_report(tmp_path)
    assert "stage 1" not in (tmp_path / "report_xnli.md").read_text(encoding="utf-8")
    with (tmp_path / "report_xnli.csv").open(encoding="utf-8") as stream:
        assert "stage1" not in stream.readline()


def seed_means(values: dict[str, dict[str, list[float | None]]]) -> dict[str, dict[str, float]]:
    """Per method and language, the mean of the seeds that have a result."""
    return {
        method: {
            language: statistics.fmean(value for value in scores if value is not None)
            for language, scores in per_language.items()
        }
        for method, per_language in values.items()
    }


def latex_rows(tex: str) -> list[list[str]]:
    """The cells of the rows between \\midrule and \\bottomrule."""
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0]
    return [line.removesuffix(" \\\\").split(" & ") for line in body.splitlines()]


def test_latex_table_has_booktabs_rules_and_bold_best_per_column(runs_dir: Path, tmp_path: Path) -> None:
    write_report(runs_dir, tmp_path)
    tex = (tmp_path / "report_xnli.tex").read_text(encoding="utf-8")
    lines = tex.splitlines()
    rules = [line for line in lines if line in ("\\toprule", "\\midrule", "\\bottomrule")]
    assert rules == ["\\toprule", "\\midrule", "\\bottomrule"]
    assert "\\begin{tabular}{lrrrrr}" in lines
    assert lines[lines.index("\\toprule") + 1] == "Method & de & sw & th & Avg & Avg.\\ rank \\\\"
    rows = {row[0]: row[1:] for row in latex_rows(tex)}
    assert list(rows) == ["zero-shot", "lora", "flare"]
    # The best per column, worked out from the fixture: the highest mean per language and for Avg over de and sw
    # (th is dropped, flare lacks it), compared as printed to one decimal, so lora and flare tie on sw at 42.0.
    means = seed_means(XNLI)
    for method in means:
        means[method]["Avg"] = (means[method]["de"] + means[method]["sw"]) / 2
    columns = ["de", "sw", "th", "Avg"]
    expected_bold = set()
    for column in columns:
        shown = {method: round(100 * per[column], 1) for method, per in means.items() if column in per}
        expected_bold |= {(method, column) for method, value in shown.items() if value == max(shown.values())}
    # The lowest Avg. rank is flare's 1.25 (see test_average_ranks_with_a_tie).
    expected_bold.add(("flare", "Avg. rank"))
    bold = {
        (method, column)
        for method, cells in rows.items()
        for column, cell in zip([*columns, "Avg. rank"], cells, strict=True)
        if cell.startswith("\\textbf{")
    }
    by_hand = {
        ("flare", "de"),
        ("lora", "sw"),
        ("flare", "sw"),
        ("lora", "th"),
        ("flare", "Avg"),
        ("flare", "Avg. rank"),
    }
    assert bold == expected_bold == by_hand
    # Mean with the std as a subscript, a missing result as "--", in percent like the Markdown.
    assert rows["zero-shot"][0] == "52.0$_{\\pm 2.0}$"
    assert rows["flare"] == [
        "\\textbf{70.0}$_{\\pm 0.0}$",
        "\\textbf{42.0}$_{\\pm 1.0}$",
        "--",
        "\\textbf{56.0}$_{\\pm 0.5}$",
        "\\textbf{1.25}",
    ]
    assert "\\caption{xnli: accuracy in percent" in tex and "\\label{tab:xnli}" in tex


def test_per_seed_csv_has_one_row_per_run_in_percent(runs_dir: Path, tmp_path: Path) -> None:
    write_report(runs_dir, tmp_path)
    with (tmp_path / "report_xnli_per_seed.csv").open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
    assert reader.fieldnames == ["task", "language", "method", "seed", "metric", "value_percent"]
    # One row per value written to a metrics.json: the side evaluations (0.99) and the "average" entries are not runs
    # of their cell; lora's sw seed 3 never ran.
    expected = [
        ("xnli", language, method, str(seed), "accuracy", 100 * value)
        for method, per_language in XNLI.items()
        for language, values in sorted(per_language.items())
        for seed, value in enumerate(values, start=1)
        if value is not None
    ]
    assert len(rows) == len(expected) == 3 * 3 + 8 + 6
    for row, (task, language, method, seed, metric, value) in zip(rows, expected, strict=True):
        assert (row["task"], row["language"], row["method"], row["seed"], row["metric"]) == (
            task,
            language,
            method,
            seed,
            metric,
        )
        assert float(row["value_percent"]) == pytest.approx(value)
    # Same units as the Markdown: the mean of a cell's rows is the number the Markdown prints.
    markdown = (tmp_path / "report_xnli.md").read_text(encoding="utf-8")
    lora_sw = statistics.fmean(
        float(row["value_percent"]) for row in rows if (row["method"], row["language"]) == ("lora", "sw")
    )
    assert f"{lora_sw:.1f}" == "42.0" and "| lora | 62.0 ± 2.0 | 42.0 ± 2.8 |" in markdown


def test_figures_are_written_as_png_and_pdf(runs_dir: Path, tmp_path: Path) -> None:
    write_report(runs_dir, tmp_path)
    for task in ("xnli", "tydiqa"):
        assert (tmp_path / f"report_{task}.png").read_bytes().startswith(PNG_SIGNATURE)
        pdf = (tmp_path / f"report_{task}.pdf").read_bytes()
        assert pdf.startswith(PDF_SIGNATURE)
        # TrueType fonts (publishers reject Type 3) and no creation date, so a rerun writes the same bytes.
        assert b"/Type3" not in pdf and b"/CreationDate" not in pdf


def panel_titles(figure: Figure) -> list[str]:
    return [axes.get_title() for axes in figure.axes]


def error_bars(figure: Figure) -> list[object]:
    """Every error-bar artist: the containers errorbar() returns and the line collections that draw the bars."""
    return [
        artist
        for axes in figure.axes
        for artist in [*axes.containers, *axes.collections]
        if isinstance(artist, ErrorbarContainer | LineCollection)
    ]


def single_seed_runs(root: Path, languages: list[str], methods: list[str]) -> None:
    for method_index, method in enumerate(methods):
        for language_index, language in enumerate(languages):
            write_run(
                root / f"{method}-{language}",
                task="xnli",
                method=method,
                seed=1,
                language=language,
                metric="accuracy",
                scores={language: classification(0.5 + 0.05 * method_index - 0.1 * language_index)},
            )


def test_one_seed_draws_no_error_bars(runs_dir: Path, tmp_path: Path) -> None:
    single_seed_runs(tmp_path / "one", ["de", "sw"], ["lora", "flare"])
    summary = summarize(collect_runs(tmp_path / "one"))["xnli"]
    figure = plot_summary("xnli", summary)
    assert error_bars(figure) == []
    assert figure.get_suptitle() == "xnli: accuracy, 1 seed"
    # Every cell has its dot all the same.
    assert sum(len(axes.lines) for axes in figure.axes) == 2 * 3
    # Nor a "± 0.0" in the LaTeX table: lora de is 0.50, flare de 0.55.
    write_report(tmp_path / "one", tmp_path / "one")
    rows = latex_rows((tmp_path / "one" / "report_xnli.tex").read_text(encoding="utf-8"))
    assert rows[0][1] == "50.0" and rows[1][1] == "\\textbf{55.0}" and "\\pm" not in str(rows)
    # Several seeds do get them, one per cell of two or more seeds: 3 + 3 + 2 + 3 + 3 (Avg) for zero-shot and
    # lora, 2 + 1 (Avg) for flare, which lacks th.
    several = plot_summary("xnli", summarize(collect_runs(runs_dir))["xnli"])
    assert sum(isinstance(artist, ErrorbarContainer) for artist in error_bars(several)) == 4 + 4 + 3
    assert several.get_suptitle() == "xnli: accuracy, mean ± std over 2–3 seeds"


def test_single_language_has_no_avg_panel_or_column(runs_dir: Path, tmp_path: Path) -> None:
    single_seed_runs(tmp_path / "one", ["sw"], ["lora", "flare"])
    write_report(tmp_path / "one", tmp_path / "one")
    summary = summarize(collect_runs(tmp_path / "one"))["xnli"]
    assert panel_titles(plot_summary("xnli", summary)) == ["sw"]
    tex = (tmp_path / "one" / "report_xnli.tex").read_text(encoding="utf-8")
    assert "Method & sw & Avg.\\ rank \\\\" in tex.splitlines()
    # The Markdown keeps its Avg column, whose callers read it.
    assert "| Method | sw | Avg | Avg. rank |" in (tmp_path / "one" / "report_xnli.md").read_text(encoding="utf-8")
    # With several languages the Avg panel is there, saying which language it leaves out.
    several = plot_summary("xnli", summarize(collect_runs(runs_dir))["xnli"])
    assert panel_titles(several) == ["de", "sw", "th", "Avg (excl. th)"]


def test_metric_axis_spans_the_values_not_zero(runs_dir: Path) -> None:
    figure = plot_summary("xnli", summarize(collect_runs(runs_dir))["xnli"])
    de = figure.axes[0]
    # de in percent: zero-shot 52 ± 2, lora 62 ± 2, flare 70 ± 0 -> 50 to 70, plus a margin of 8% of 20 on each side.
    assert de.get_xlim() == pytest.approx((48.4, 71.6))
    # Methods are rows, the first on top.
    assert [label.get_text() for label in de.get_yticklabels()] == ["zero-shot", "lora", "flare"]
    assert de.get_ylim() == (2.5, -0.5)


def test_unknown_methods_are_ordered_reported_and_flare_variants_highlighted(tmp_path: Path) -> None:
    # First appearance in path order is deliberately unlike the report order.
    methods = ["flare-proportional-zero", "my_method", "flare-end", "lora", "flare", "zero-shot", "flareless"]
    single_seed_runs(tmp_path, ["de", "sw"], methods)
    # Recipe variants of FLARE: their run config names the method they run. "flareless" is a method of its own.
    for variant in ("flare-proportional-zero", "flare-end"):
        for language in ("de", "sw"):
            config = {"stage": "transfer", "method": "flare", "variant": variant}
            (tmp_path / f"{variant}-{language}" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    write_report(tmp_path)
    # Known methods in METHOD_ORDER, then the others alphabetically; none is lost.
    order = ["zero-shot", "lora", "flare", "flare-end", "flare-proportional-zero", "flareless", "my_method"]
    markdown = (tmp_path / "report_xnli.md").read_text(encoding="utf-8")
    assert [line.split(" | ")[0].removeprefix("| ") for line in markdown.splitlines()[4:11]] == order
    assert [row[0] for row in latex_rows((tmp_path / "report_xnli.tex").read_text(encoding="utf-8"))] == [
        method.replace("_", "\\_") for method in order
    ]
    with (tmp_path / "report_xnli_per_seed.csv").open(encoding="utf-8", newline="") as stream:
        per_seed = [row["method"] for row in csv.DictReader(stream)]
    assert per_seed == [method for method in order for _ in ("de", "sw")]
    summary = summarize(collect_runs(tmp_path))["xnli"]
    summary["highlighted"] = fusing_methods(collect_runs(tmp_path))
    figure = plot_summary("xnli", summary)
    labels = {label.get_text(): label for label in figure.axes[0].get_yticklabels()}
    assert list(labels) == order
    flare = ["flare", "flare-end", "flare-proportional-zero"]
    # Every fusing method and variant is bold, in a colour of its own; the baselines share one plain grey.
    assert [method for method, label in labels.items() if label.get_fontweight() == "bold"] == flare
    colours = {method: label.get_color() for method, label in labels.items()}
    assert len({colours[method] for method in flare}) == len(flare)
    assert len({colours[method] for method in ("zero-shot", "lora", "my_method", "flareless")}) == 1
    assert not {colours[method] for method in flare} & {colours["lora"]}
    # Their dots match: filled diamonds in the method's colour, open circles for the baselines.
    dots = {order[round(line.get_ydata()[0])]: line for line in figure.axes[0].lines}
    assert {method for method, line in dots.items() if line.get_marker() == "D"} == set(flare)
    assert all(dots[method].get_color() == colours[method] for method in flare)


def test_colliding_report_names_are_refused_before_writing(tmp_path: Path) -> None:
    for task in ("a", "a_per_seed"):
        write_run(
            tmp_path / "runs" / task,
            task=task,
            method="lora",
            seed=1,
            language="de",
            metric="accuracy",
            scores={"de": classification(0.5)},
        )
    # Task "a"'s tidy CSV and task "a_per_seed"'s wide CSV would both be report_a_per_seed.csv.
    with pytest.raises(ValueError, match=r"would both write report_a_per_seed\.csv"):
        write_report(tmp_path / "runs", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_sweep_of_one_method_becomes_one_row_per_setting(tmp_path: Path) -> None:
    # flare at two learning rates for the same language and seeds, beside zero-shot; each run has its config.json.
    for seed in (1, 2):
        zero_shot = write_run(
            tmp_path / f"zero-shot-{seed}", task="nusax", method="zero-shot", seed=seed, language="id",
            metric="accuracy", scores={"id": classification(0.40)},
        )  # fmt: skip
        (zero_shot.parent / "config.json").write_text(json.dumps({"method": "zero-shot", "stage1": f"s{seed}"}))
        for learning_rate, accuracy in ((0.001, 0.50 + seed / 100), (0.01, 0.60)):
            metrics = write_run(
                tmp_path / f"flare-{learning_rate}-{seed}", task="nusax", method="flare", seed=seed, language="id",
                metric="accuracy", scores={"id": classification(accuracy)},
            )  # fmt: skip
            # The stage-1 run differs per seed, as it does in a recipe: not a setting of the sweep.
            config = {"method": "flare", "stage1": f"s{seed}", "train": {"seed": seed, "learning_rate": learning_rate}}
            (metrics.parent / "config.json").write_text(json.dumps(config))
    markdown = next(path for path in write_report(tmp_path) if path.suffix == ".md").read_text()
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in markdown.splitlines() if line.startswith("| ")}
    assert rows["zero-shot"] == "40.0 ± 0.0"
    assert rows["flare (learning_rate=0.001)"] == "51.5 ± 0.7"  # 51 and 52
    assert rows["flare (learning_rate=0.01)"] == "60.0 ± 0.0"


def test_select_makes_a_table_of_part_of_a_folder(tmp_path: Path) -> None:
    """Two tables from one folder of runs (benchmarks/real: the pairing variants beside the main grid's FLARE)."""
    single_seed_runs(tmp_path, ["de", "sw"], ["lora", "flare", "flare-end"])
    write_report(tmp_path, tmp_path / "pairing", select=lambda run: run["method"] != "lora" and run["language"] == "sw")
    markdown = (tmp_path / "pairing" / "report_xnli.md").read_text(encoding="utf-8")
    assert [line.split(" | ")[0].removeprefix("| ") for line in markdown.splitlines()[4:6]] == ["flare", "flare-end"]
    assert "| lora |" not in markdown and "| sw |" in markdown.splitlines()[2] and "de" not in markdown.splitlines()[2]
    with pytest.raises(ValueError, match="selected"):
        write_report(tmp_path, tmp_path / "none", select=lambda run: False)
    assert not (tmp_path / "none").exists()


def title_fits(figure: Figure) -> bool:
    """Whether the figure's title lies inside it once drawn."""
    figure.canvas.draw()
    box = figure._suptitle.get_window_extent()
    return 0 <= box.x0 and box.x1 <= figure.bbox.width


@pytest.mark.parametrize("languages", [["tol"], ["de", "sw"], [f"l{index:02d}" for index in range(11)]])
def test_the_title_fits_the_figure(tmp_path: Path, languages: list[str]) -> None:
    # The demo's own task name, two seeds: "tolan_sentiment: accuracy, mean ± std over 2 seeds" was cut off at one
    # language.
    for seed in (1, 2):
        for method in ("zero-shot", "translate-test", "lora", "flare"):
            for language in languages:
                write_run(
                    tmp_path / f"{method}-{language}-{seed}", task="tolan_sentiment", method=method, seed=seed,
                    language=language, metric="accuracy", scores={language: classification(0.4 + 0.01 * seed)},
                )  # fmt: skip
    figure = plot_summary("tolan_sentiment", summarize(collect_runs(tmp_path))["tolan_sentiment"])
    assert title_fits(figure)
    # The whole title is there, on two lines where one would not fit.
    assert figure.get_suptitle().replace("\n", ", ") == "tolan_sentiment: accuracy, mean ± std over 2 seeds"


def test_one_seed_prints_its_value_without_a_spread(tmp_path: Path) -> None:
    single_seed_runs(tmp_path, ["de", "sw"], ["lora", "flare"])
    write_report(tmp_path)
    markdown = (tmp_path / "report_xnli.md").read_text(encoding="utf-8")
    # lora de 0.50, sw 0.40 -> Avg 45.0; flare 0.55 and 0.45 -> 50.0.
    assert "| lora | 50.0 | 40.0 | 45.0 | 2.00 |" in markdown and "±" not in markdown.split("\n\n")[1]


def test_tied_values_get_an_axis_of_several_points(tmp_path: Path) -> None:
    # Every method at 16.7 % (chance on six classes), one seed: the axis was 16.2 to 17.2.
    for method in ("zero-shot", "lora", "flare"):
        write_run(
            tmp_path / method, task="xnli", method=method, seed=1, language="sw", metric="accuracy",
            scores={"sw": classification(1 / 6)},
        )  # fmt: skip
    low, high = plot_summary("xnli", summarize(collect_runs(tmp_path))["xnli"]).axes[0].get_xlim()
    assert high - low == pytest.approx(5.0) and (low + high) / 2 == pytest.approx(100 / 6)
    # Near 0 the span stays inside the metric's range.
    assert report_module._metric_limits(0.0, 0.0) == (0.0, 5.0)
    assert report_module._metric_limits(100.0, 100.0) == (95.0, 100.0)


def test_the_command_line_compares_with_the_baseline_it_is_given(runs_dir: Path, tmp_path: Path) -> None:
    from flare_xlt import cli

    cli.main(["report", "--directory", str(runs_dir), "--output", str(tmp_path / "out"), "--baseline", "flare"])
    markdown = (tmp_path / "out" / "report_xnli.md").read_text(encoding="utf-8")
    assert "from flare" in markdown and "from lora" not in markdown
