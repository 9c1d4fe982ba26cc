"""Recipes: every shipped recipe loads and plans offline; a tiny recipe runs the whole workflow through the CLI."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import NUSAX_DATA

from flare_xlt import cli
from flare_xlt.pipeline.recipe_file import load_recipe, load_variants
from flare_xlt.pipeline.recipes import plan
from flare_xlt.tasks import get_task, load_task_splits

# The paper recipes; configs/smoke.yaml reads local files that flare_xlt.demo.smoke writes (tests/test_smoke.py).
CONFIGS = sorted(
    path for path in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if path.stem != "smoke"
)


def test_the_paper_recipes_are_all_there():
    assert {path.stem for path in CONFIGS} >= {
        f"{task}-{model}"
        for task in ("xnli", "tydiqa", "nusax")
        for model in ("xlmr-large", "mt5-xl", "llama3.1-8b", "gemma2-9b")
    }


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_recipe_loads_and_plans_without_downloads(path):
    recipe = load_recipe(path)
    assert (recipe.adapter.r, recipe.adapter.lora_alpha, recipe.train.learning_rate) == (8, 16, 2e-5)
    assert (recipe.train.batch_size, recipe.train.epochs, recipe.train.warmup_ratio, recipe.train.max_length) == (
        32,
        3,
        0.1,
        128,
    )
    assert recipe.mt_model == "facebook/nllb-200-3.3B"
    decoder = "llama" in path.stem or "gemma" in path.stem
    assert recipe.load_in_4bit == decoder and (recipe.adapter.target_modules == "all-linear") == decoder
    assert set(recipe.languages) == set(get_task(recipe.task).languages) - {"en"}
    steps = plan(recipe)
    kinds = [step.kind for step in steps]
    languages, methods, seeds = len(recipe.languages), len(recipe.methods), len(recipe.seeds)
    # The paper selects checkpoints on the translated validation set, except for TyDiQA (its validation is the test).
    assert recipe.train.select_best_on_validation == (recipe.task != "tydiqa")
    splits = 3 if recipe.train.select_best_on_validation else 2
    assert kinds.count("translate") == splits * languages and kinds.count("mt-states") == splits * languages
    assert kinds.count("finetune") == seeds and kinds.count("transfer") == seeds * languages * methods
    assert kinds.index("finetune") > max(i for i, kind in enumerate(kinds) if kind in ("translate", "mt-states"))


def test_recipe_errors_name_the_setting(tmp_path):
    base = {"model": "m", "task": "nusax", "languages": ["id"], "methods": ["flare"]}
    cases = [
        ({**base, "methods": ["mixup"]}, "Unknown methods \\['mixup'\\]; valid choices: linear-probe, zero-shot"),
        ({**base, "languages": ["xx"]}, "has no language 'xx'"),
        ({**base, "epochs": 3}, "Unknown recipe settings \\['epochs'\\]"),
        ({**base, "train": {"lr": 1}}, "Unknown train settings \\['lr'\\]; valid settings: \\['batch_size'"),
        ({"task": "nusax"}, "missing"),
        ({**base, "task": "tydiqa", "languages": ["sw"], "methods": ["translate-test"]}, "extractive QA"),
    ]
    for values, message in cases:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(ValueError, match=message):
            load_recipe(path)


def test_tiny_recipe_runs_the_whole_workflow(workspace, tmp_path, capsys):
    recipe = {
        "model": str(workspace / "encoder"),
        "task": "nusax",
        "languages": ["id"],
        "methods": ["zero-shot", "lora", "flare", "flare-mt", "flare-end-zero"],
        "variants": {"flare-end-zero": {"adapter": {"pairing": "end", "unpaired": "zero_source"}}},
        "seeds": [1, 2],
        "output": str(tmp_path / "runs"),
        "data": NUSAX_DATA,
        "translations": str(tmp_path / "translations"),
        "mt_model": str(workspace / "nllb"),
        "mt_states": str(tmp_path / "states"),
        "train": {
            "batch_size": 2,
            "epochs": 1,
            "learning_rate": 1e-3,
            "max_length": 48,
            "select_best_on_validation": True,
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cli.run(path)
    runs = sorted(p.parent.name for p in (tmp_path / "runs").rglob("metrics.json"))
    assert len(runs) == 2 * (1 + 5)  # per seed: stage 1 and five transfer runs
    assert (tmp_path / "translations" / "nusax_train_en-id.jsonl").is_file()
    assert (tmp_path / "states" / "id" / "test" / "index.json").is_file()
    assert (tmp_path / "states" / "id" / "validation" / "index.json").is_file()
    averages = {
        row["method"]: row["avg_mean_percent"]
        for row in csv.DictReader((tmp_path / "runs" / "report_nusax.csv").open())
    }
    # stage-1 runs are not transfer rows; a variant is a row of its own
    assert set(averages) == {"zero-shot", "lora", "flare", "flare-mt", "flare-end-zero"}
    assert all(value != "" for value in averages.values())  # so every method has an average over languages
    table = (tmp_path / "runs" / "report_nusax.md").read_text()
    assert "flare" in table and "±" in table and (tmp_path / "runs" / "report_nusax.png").stat().st_size > 0
    first = capsys.readouterr().out
    assert first.startswith(
        "plan: 3 translations (0 done, 3 to make); 3 FLARE-MT state stores (0 done, 3 to make); 2 stage-1 runs "
        "(0 done, 2 to make); 10 transfer runs (0 done, 10 to make)\n"
    )
    assert "[1/12] finetune en seed 1\n" in first and re.search(
        r"\[12/12\] transfer id flare-end-zero seed 2 \(about ", first
    )
    assert "| flare |" in first  # the report's table, printed after the path of its file
    cli.run(path)  # everything is found finished: nothing is trained again
    again = capsys.readouterr().out
    assert again.count("finished earlier, skipped") == 12 and "finished earlier" not in first
    assert again.startswith("plan: 3 translations (3 done, 0 to make);") and "[1/" not in again
    metrics = json.loads(next((tmp_path / "runs").glob("nusax-id-flare-seed2-*/metrics.json")).read_text())
    assert metrics["seed"] == 2 and metrics["method"] == "flare"
    variant = next((tmp_path / "runs").glob("nusax-id-flare-end-zero-seed2-*"))
    assert json.loads((variant / "metrics.json").read_text())["method"] == "flare-end-zero"
    saved = json.loads((variant / "adapter" / "flare_config.json").read_text())
    assert (saved["pairing"], saved["unpaired"]) == ("end", "zero_source")
    plain = json.loads(
        (next((tmp_path / "runs").glob("nusax-id-flare-seed2-*")) / "adapter" / "flare_config.json").read_text()
    )
    assert (plain["pairing"], plain["unpaired"]) == ("start", "lora")


def test_variants_are_checked_when_the_recipe_loads(tmp_path):
    base = {"model": "m", "task": "nusax", "languages": ["id"], "methods": ["flare", "v"], "seeds": [1]}
    cases = [
        ({**base, "variants": {"v": {"adapter": {"pairing": "middle"}}}}, "Unknown pairing 'middle'"),
        ({**base, "variants": {"v": {"method": "zero-shot"}}}, "method 'zero-shot' trains no adapter"),
        ({**base, "variants": {"v": {"adapter": {"colour": 1}}}}, r"Unknown variant v settings \['colour'\]"),
        ({**base, "variants": {"flare": {}}, "methods": ["flare"]}, "the name of a built-in method"),
        ({**base, "methods": ["flare", "w"], "variants": {"v": {}}}, r"Unknown methods \['w'\].*variants v"),
    ]
    for values, message in cases:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(ValueError, match=message):
            load_recipe(path)
    path.write_text(yaml.safe_dump({**base, "variants": {"v": {"adapter": {"pairing": "proportional"}}}}))
    recipe = load_recipe(path)
    assert recipe.method_of("v") == "flare" and recipe.adapter_for("v").pairing == "proportional"
    assert recipe.adapter_for("v").r == recipe.adapter.r  # the rest comes from the recipe's adapter
    # A copy with another adapter (dataclasses.replace, as scripts and the benchmarks make one per seed and
    # language) checks the variant again and applies its overrides to the copy's adapter.
    copy = replace(recipe, adapter=replace(recipe.adapter, r=2), seeds=[7])
    assert (copy.adapter_for("v").pairing, copy.adapter_for("v").r) == ("proportional", 2)
    assert copy.adapter_for("lora") == copy.adapter
    ablation = load_variants(CONFIGS[0].parent / "variants" / "ablation-pairing.yaml")
    path.write_text(yaml.safe_dump({**base, "methods": ["lora", *ablation], "variants": ablation}))
    loaded = load_recipe(path)
    pairs = {(loaded.adapter_for(name).pairing, loaded.adapter_for(name).unpaired) for name in ablation}
    assert pairs == {(p, u) for p in ("start", "end", "proportional") for u in ("lora", "zero_source")}


def test_a_recipe_chooses_its_mt_backend_with_the_backends_own_options(workspace, tmp_path):
    from test_mt_backends import stub

    from flare_xlt.pipeline.recipe_file import Recipe

    common = dict(model=str(workspace / "encoder"), task="nusax", languages=["id"], mt_model="nllb-folder")
    assert Recipe(**common, methods=["lora"]).translator_options() == {
        "backend": "transformers",
        "model": "nllb-folder",
    }
    ctranslate2 = Recipe(**common, methods=["lora"], mt={"backend": "ctranslate2", "dtype": "int8"})
    assert ctranslate2.translator_options() == {"backend": "ctranslate2", "dtype": "int8", "model": "nllb-folder"}
    with pytest.raises(ValueError, match="mt: model is not an option of the command backend; its options: command, "):
        Recipe(**common, methods=["lora"], mt={"backend": "command", "model": "x"})
    with pytest.raises(ValueError, match="Unknown backend 'vllm'; valid choices: transformers, ctranslate2, command"):
        Recipe(**common, methods=["lora"], mt={"backend": "vllm"})

    # translate-test through a command (the stub upper-cases): the test set's translation is the command's output
    recipe = {
        **common,
        "mt_model": str(workspace / "nllb"),
        "methods": ["translate-test"],
        "seeds": [1],
        "output": str(tmp_path / "runs"),
        "data": NUSAX_DATA,
        "translations": str(tmp_path / "translations"),
        "mt": {"backend": "command", "command": stub("upper")},
        "train": {"batch_size": 2, "max_steps": 1, "max_length": 48},
    }
    path = tmp_path / "command.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cli.run(path)
    translated = [json.loads(line) for line in (tmp_path / "translations" / "nusax_test_id-en.jsonl").open()]
    test_set = load_task_splits(get_task("nusax"), "id", ["test"], NUSAX_DATA)["test"]
    originals = {row["id"]: row["text"] for row in test_set}
    assert translated and all(row["text"] == originals[row["id"]].upper() for row in translated)
