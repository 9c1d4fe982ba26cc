"""Goldens of what the workflow decides, recorded from a known-good version: run folder names and the configs they
hash, and the steps a recipe plans. A change to the orchestration that is not meant to change results keeps them;
one that is meant to (a method that stops reading a setting) updates them on purpose:

    FLARE_XLT_WRITE_GOLDENS=1 pytest tests/test_goldens.py tests/test_pipeline.py -k "golden or every_method"

Predictions and metrics of every method on each architecture family are compared in
test_pipeline.test_every_method_runs_end_to_end, through `check_golden`.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import asdict
from pathlib import Path

from flare_xlt.methods import METHODS
from flare_xlt.pipeline.recipe_file import load_recipe
from flare_xlt.pipeline.recipes import plan
from flare_xlt.pipeline.run_folder import finetune_run, transfer_run
from flare_xlt.pipeline.runs import finetune, transfer
from flare_xlt.pipeline.settings import AdapterConfig, TrainConfig

GOLDENS = Path(__file__).parent / "goldens"
ARCHITECTURES = ("encoder", "decoder", "seq2seq")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def check_golden(name: str, value) -> None:
    """`value` (JSON-serialisable) equals tests/goldens/<name>.json; with FLARE_XLT_WRITE_GOLDENS=1, write it."""
    path = GOLDENS / f"{name}.json"
    text = json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    if os.environ.get("FLARE_XLT_WRITE_GOLDENS") == "1":
        GOLDENS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} is missing: record it with FLARE_XLT_WRITE_GOLDENS=1"
    assert json.loads(text) == json.loads(path.read_text(encoding="utf-8")), f"{name} differs from its golden"


def arguments(command, *args, **kwargs) -> dict:
    """The arguments of `finetune` or `transfer` by name, defaults filled in: what the command hands its run folder."""
    bound = inspect.signature(command).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def run_configs() -> dict:
    """ "architecture/method" -> the folder name and the recorded config of its run, with non-default settings (paths
    that do not exist, so the hash does not depend on where the test runs)."""
    adapter = AdapterConfig(r=4, fusion="mul", pairing="end", source_dropout=False)
    train = TrainConfig(learning_rate=1e-3, batch_size=4, epochs=2, seed=7, eval_batch_size=8, source_cache="memory")
    common = dict(output=Path("runs"), data="data", adapter=adapter, train=train)
    runs = {}
    for architecture in ARCHITECTURES:
        model = f"models/{architecture}"
        folder, config = finetune_run(arguments(finetune, model, "nusax", architecture=architecture, **common))
        runs[f"{architecture}/finetune"] = {"folder": folder.name, "config": config}
        for method in METHODS:
            stage2 = (model, "nusax", "id", method, Path("runs/stage1"), Path("translations"))
            settings = arguments(transfer, *stage2, mt_states=Path("states"), architecture=architecture, **common)
            folder, config = transfer_run(settings)
            runs[f"{architecture}/{method}"] = {"folder": folder.name, "config": config}
    stage2 = ("models/decoder", "nusax", "id", "flare", Path("runs/stage1"), Path("translations"))
    folder, config = transfer_run(arguments(transfer, *stage2, name="flare-end", **common))
    runs["decoder/flare-end"] = {"folder": folder.name, "config": config}
    return runs


def test_run_folders_and_configs_match_their_golden():
    check_golden("run_configs", run_configs())


def test_plans_match_their_golden():
    plans = {}
    for recipe in ("nusax-xlmr-large", "tydiqa-llama3.1-8b", "xnli-mt5-xl"):
        steps = plan(load_recipe(CONFIGS / f"{recipe}.yaml"))
        plans[recipe] = [asdict(step) for step in steps]
    check_golden("plans", plans)
