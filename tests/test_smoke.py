"""configs/smoke.yaml, the first thing a user runs: its inputs made by flare_xlt.demo.smoke, then the recipe through
the command line, in a fresh folder, as the README says."""

from __future__ import annotations

import json
from pathlib import Path

from flare_xlt import cli
from flare_xlt.demo.smoke import prepare_smoke
from flare_xlt.pipeline.recipe_file import load_recipe
from flare_xlt.pipeline.recipes import step_status
from flare_xlt.tasks import read_rows

RECIPE = Path(__file__).parents[1] / "configs" / "smoke.yaml"


def test_the_smoke_recipe_runs_the_whole_workflow_on_local_tiny_models(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's paths are relative to where the commands run
    prepare_smoke()
    cli.main(["run", "--recipe", str(RECIPE)])
    printed = capsys.readouterr().out

    recipe = load_recipe(RECIPE)
    status = step_status(recipe)
    runs_planned = [entry.step.kind for entry in status if entry.step.kind != "translate"]
    assert runs_planned == ["finetune"] + ["transfer"] * len(recipe.methods)
    # Every translation was there (made by prepare_smoke) and every planned run wrote its metrics.json.
    assert all(entry.done for entry in status)
    tolan_test = [row for _, row in read_rows(tmp_path / "smoke" / "data" / "tol" / "test.jsonl")]
    runs = sorted((tmp_path / "smoke" / "runs").glob("tolan_sentiment-*/metrics.json"))  # not the latest-* links
    assert len(runs) == 1 + len(recipe.methods)
    for path in runs:
        metrics = json.loads(path.read_text())
        assert metrics["scores"]["average"]["count"] == len(tolan_test)
    table = (tmp_path / "smoke" / "runs" / "report_tolan_sentiment.md").read_text()
    assert [line.split(" | ")[0].lstrip("| ") for line in table.splitlines() if line.startswith("| ")][2:] == (
        recipe.methods
    )
    assert "report_tolan_sentiment.md" in printed
    # A second call finds every run finished and makes nothing.
    cli.main(["run", "--recipe", str(RECIPE)])
    assert capsys.readouterr().out.count("finished earlier, skipped") == 1 + len(recipe.methods)
