"""The benchmark suite's code path at tiny sizes: every section runs and the report holds every row."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ sits next to the package, outside the installed distribution
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402
from benchmarks.encoder import FLARE_EVAL_SOURCE, RUN_METHODS  # noqa: E402
from benchmarks.training import (  # noqa: E402
    AUTHORS,
    FLARE_LINEAR,
    INPUT_FUSION,
    LORA,
    SOURCE_ONLY,
    SOURCE_ONLY_PREFIX,
    TRAINING_METHODS,
)


def table_rows(report: str, *title_parts: str) -> list[list[str]]:
    """The cells of the Markdown table under the first heading that contains every one of `title_parts`."""
    sections = report.split("\n### ")[1:]
    section = next(section for section in sections if all(part in section.split("\n", 1)[0] for part in title_parts))
    lines = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_tiny_run_writes_every_row(tmp_path):
    output = tmp_path / "RESULTS.md"
    assert run.main(["--scale", "tiny", "--repeats", "1", "--threads", "1", "--output", str(output)]) == output
    report = output.read_text()

    for model in ("Llama", "XLM-R"):
        for length in (8, 16):
            rows = table_rows(report, f"{model}, hidden 32, 2 layers", f"batch 2, {length} target")
            assert [row[0] for row in rows] == [*TRAINING_METHODS, *SOURCE_ONLY.values()]
            assert rows[0][2] == "1.00×" and rows[0][5] == "1.00×"  # LoRA is the reference
            assert all(float(row[1]) > 0 for row in rows)
    assert INPUT_FUSION in report and AUTHORS in report

    assert [row[0] for row in table_rows(report, "Classification evaluation")] == ["LoRA", "FLARE", "FLARE-MT"]
    assert [row[0] for row in table_rows(report, "Greedy generation")] == ["LoRA", "FLARE", "FLARE-MT"]
    assert [row[0] for row in table_rows(report, "24 texts (16 distinct)")] == ["translate pipeline", "naive loop"]
    assert [row[0] for row in table_rows(report, "Python function calls")] == ["2", "4", "8"]
    e5_steps = table_rows(report, "e5-small-shaped encoder", "batch 2, 8 target")
    assert [row[0] for row in e5_steps] == [
        LORA,
        FLARE_LINEAR,
        FLARE_EVAL_SOURCE,
        SOURCE_ONLY[FLARE_LINEAR],
        SOURCE_ONLY_PREFIX + FLARE_EVAL_SOURCE,
    ]
    e5_runs = table_rows(report, "e5-small-shaped encoder", "3 epochs of 4 examples")
    assert [row[0] for row in e5_runs] == list(RUN_METHODS) and e5_runs[0][2] == "1.00×"
    assert all(float(row[1]) > 0 and float(row[3]) > 0 for row in e5_runs)

    small_llama = table_rows(report, "Per-step check, Llama, hidden 32, 2 layers, vocabulary 96")
    assert [row[0] for row in small_llama] == [LORA, FLARE_LINEAR] and small_llama[0][4] == "1.00×"
    assert float(small_llama[1][4].rstrip("×")) > 1  # the source pass adds operations

    targets = table_rows(report, "Ratios to the baseline")
    assert len(targets) == 11 and all(row[3] in ("yes", "NO") for row in targets)
    ratios = {row[0]: row[1] for row in targets}
    for model in (
        "M2M100 (NLLB)",
        "T5 (MADLAD-400)",
    ):  # the MT backends: ctranslate2 at equal output against transformers
        assert float(ratios[f"{model}: ctranslate2 float32 / transformers throughput"].rstrip("×")) > 0
    if any(row[3] == "NO" for row in targets):
        assert "## Missed targets: explanation and profiles" in report and "Self CPU time total" in report
    assert "Not run: no GPU was lent" in report
    assert "Inference tensors cannot be saved for backward" in report
    assert "| torch threads | 1 |" in report


def test_bench_real_counts_only_the_planned_runs_that_finished(tmp_path):
    """REAL.md's PARTIAL count: two grids with one model share stage 1 but not their transfers, and runs in a grid's
    folder that no grid asks for (left by an earlier design) count for nothing."""
    import json

    from benchmarks.real import run as real
    from flare_xlt.pipeline.recipe_file import Recipe

    def grid(name: str, methods: list[str]) -> real.Grid:
        recipe = Recipe(
            model="m", task="xnli", languages=["sw"], methods=methods, seeds=[1], output=str(tmp_path / name)
        )
        return real.Grid(name, name, recipe, {}, "m", tuple(methods), ("sw",))

    def finish(output: str, method: str, language: str) -> None:
        folder = Path(output) / f"xnli-{language}-{method}-seed1-0"
        folder.mkdir(parents=True)
        metrics = {"task": "xnli", "method": method, "seed": 1, "language": language, "metric": "accuracy"}
        metrics |= {"scores": {language: {"accuracy": 0.5}}, "run": folder.name, "config_hash": "0"}
        (folder / "metrics.json").write_text(json.dumps(metrics))

    main, oracle = grid("main", ["zero-shot", "lora"]), grid("oracle", ["lora"])
    planned = real.planned_runs([main, oracle])
    assert len(planned) == 4  # one stage 1 (shared), zero-shot and LoRA in main, LoRA in oracle
    finish(main.recipe.output, "finetune", "en")
    finish(main.recipe.output, "lora", "sw")
    finish(main.recipe.output, "x-mixup", "sw")  # in the folder, in no grid
    assert len(planned & real.finished_keys([main, oracle])) == 2  # main's LoRA is not oracle's
    finish(oracle.recipe.output, "lora", "sw")
    finish(main.recipe.output, "zero-shot", "sw")
    assert planned <= real.finished_keys([main, oracle])


def test_bench_real_oracle_grid_links_the_main_grids_stage1(tmp_path, monkeypatch):
    """The oracle grid must start from the main grid's stage-1 runs: they are made first (only stage 1, in the main
    folder) and linked, so the pipeline does not train the same runs again in the oracle folder."""
    from dataclasses import replace

    from benchmarks.real import run as real
    from flare_xlt.pipeline.recipe_file import Recipe

    main = Recipe(model="m", task="xnli", languages=["sw"], methods=["lora"], seeds=[1, 2], output=str(tmp_path / "a"))
    oracle = real.Grid("oracle", "", replace(main, output=str(tmp_path / "b")), {}, "m", (), (), stage1_from=main)
    calls = []

    def run_recipe(recipe, workers):  # stands in for training: stage 1 of each seed appears in the main folder
        calls.append((recipe.methods, recipe.seeds, recipe.output, workers))
        for seed in recipe.seeds:
            (Path(recipe.output) / f"xnli-en-finetune-seed{seed}-0").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(real, "run_recipe", run_recipe)
    real.share_stage1(oracle, [2], workers=2, train=True)
    assert calls == [([], [2], main.output, 2)]
    link = tmp_path / "b" / "xnli-en-finetune-seed2-0"
    assert link.is_symlink() and link.resolve() == (tmp_path / "a" / "xnli-en-finetune-seed2-0").resolve()
    real.share_stage1(oracle, [1, 2], workers=1, train=False)  # --no-run: links what exists, trains nothing
    assert len(calls) == 1


def test_the_real_run_profile_table_gives_median_phases_and_paired_whole_run_ratios():
    from benchmarks.real.profile import profile_table

    def run(total: float, train: float, prepass: float = 0.0) -> dict:
        wall = {"load": 1.0, "train": train, "other": total - 1.0 - train - prepass}
        if prepass:
            wall["source pre-pass"] = prepass
        return {"wall_seconds": wall, "cpu_seconds": {k: 2 * v for k, v in wall.items()}, "total_wall_seconds": total}

    table = profile_table({"LoRA": [run(10, 6), run(20, 12)], "FLARE": [run(15, 9, 2), run(40, 30, 2)]}, 2)
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["train"] == "| train | 9.0 (18.0) | 19.5 (39.0) |"  # medians of 6, 12 and of 9, 30
    assert rows["source pre-pass"] == "| source pre-pass | 0.0 (0.0) | 2.0 (4.0) |"
    assert rows["× LoRA (whole run)"] == "| × LoRA (whole run) | 1.00× | 1.75× |"  # median of 15/10 and 40/20, paired
