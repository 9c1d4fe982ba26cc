"""The classification pooling of encoder heads (pipeline/pooling.py), the linear probe that reads the pooled
features, and stage 1's own training settings: mean and last pooling read the real tokens only, `auto` follows the
model folder, a stage-1 run records its pooling and every later load reads it, the probe equals a logistic
regression fitted by hand on the base encoder's features, and a recipe's stage1_train reaches stage 1 alone."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict
from pathlib import Path

import numpy
import pytest
import torch
from conftest import ENCODER_SIZES, NUSAX_DATA, train_tokenizer
from safetensors.torch import load_file, save_file
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel

from flare_xlt.methods.linear_probe import PROBE_FEATURES, english_features_key
from flare_xlt.pipeline import TrainConfig, evaluate, finetune, transfer
from flare_xlt.pipeline.pooling import PooledEncoderForSequenceClassification, resolve_pooling
from flare_xlt.pipeline.run_folder import transfer_run

QUICK = TrainConfig(batch_size=2, max_steps=2, learning_rate=1e-3, max_length=48, seed=3)


def sentence_transformers_folder(folder: Path, flag: str = "pooling_mode_mean_tokens") -> None:
    """The files sentence-transformers writes beside a model: modules.json naming a Pooling module, its config."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    flags = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, flag: True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooled_heads_read_the_real_tokens_whatever_the_padding(pooling):
    torch.manual_seed(0)
    config = XLMRobertaConfig(**ENCODER_SIZES)
    head = PooledEncoderForSequenceClassification(XLMRobertaModel(config), 3, pooling).eval()
    rows = [[5, 17, 9, 23, 11], [7, 30, 12]]
    pad = config.pad_token_id

    def batch(length: int, side: str) -> dict:
        padded = [
            [pad] * (length - len(row)) + row if side == "left" else row + [pad] * (length - len(row)) for row in rows
        ]
        mask = [[int(token != pad) for token in row] for row in padded]
        return {"input_ids": torch.tensor(padded), "attention_mask": torch.tensor(mask)}

    with torch.no_grad():
        # Each row alone, unpadded, pooled here from the encoder's own output: the reference.
        expected = []
        for row in rows:
            hidden = head.base_model(input_ids=torch.tensor([row])).last_hidden_state[0]  # (L, D)
            expected.append(head.classifier(hidden.mean(0) if pooling == "mean" else hidden[-1]))
        expected = torch.stack(expected)
        for length, side in ((5, "right"), (9, "right"), (7, "left")):
            logits = head(**batch(length, side)).logits
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0, msg=f"{length} tokens, {side} padding")


def test_auto_pooling_follows_the_sentence_transformers_config(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert resolve_pooling("auto", str(plain), "classification", "encoder") == "cls"
    for flag, expected in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_lasttoken", "last")):
        folder = tmp_path / expected
        folder.mkdir()
        sentence_transformers_folder(folder, flag)
        assert resolve_pooling("auto", str(folder), "classification", "encoder") == expected
        assert resolve_pooling("cls", str(folder), "classification", "encoder") == "cls"  # asked for: kept
        # No classification head to pool for: nothing to record.
        assert resolve_pooling("auto", str(folder), "extractive_qa", "encoder") is None
        assert resolve_pooling("auto", str(folder), "classification", "decoder") is None
    with pytest.raises(ValueError, match="not to extractive QA tasks"):
        resolve_pooling("mean", str(plain), "extractive_qa", "encoder")
    with pytest.raises(ValueError, match="not to decoder models"):
        resolve_pooling("last", str(plain), "classification", "decoder")
    with pytest.raises(ValueError, match="valid choices: auto, cls, mean, last"):
        resolve_pooling("max", str(plain), "classification", "encoder")


@pytest.fixture(scope="module")
def pooled_workspace(tmp_path_factory):
    """A tiny XLM-R folder marked as a mean-pooling sentence-transformers model, and NusaX 'translations' (the
    English records themselves: this test is about which head reads them, not about translation)."""
    from flare_xlt.mt.data import write_records
    from flare_xlt.tasks import NUSAX, load_original_view

    root = tmp_path_factory.mktemp("pooling")
    torch.manual_seed(0)
    tokenizer = train_tokenizer("encoder")
    sizes = {**ENCODER_SIZES, "vocab_size": len(tokenizer), "max_position_embeddings": 160}
    XLMRobertaForMaskedLM(XLMRobertaConfig(**sizes)).save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    sentence_transformers_folder(root / "encoder")
    translations = root / "translations"
    write_records(translations / "nusax_train_en-id.jsonl", load_original_view(NUSAX, "en", "train", NUSAX_DATA))
    write_records(translations / "nusax_test_id-en.jsonl", load_original_view(NUSAX, "id", "test", NUSAX_DATA))
    return root


def pooled_heads(model: torch.nn.Module) -> list[str]:
    return [module.pooling for module in model.modules() if isinstance(module, PooledEncoderForSequenceClassification)]


def rebuilt(run_dir: Path) -> torch.nn.Module:
    """The model `evaluate` rebuilds for a finished run."""
    from flare_xlt.pipeline.finished_runs import run_model, run_pooling
    from flare_xlt.pipeline.run_data import load
    from flare_xlt.tasks import NUSAX

    config = json.loads((run_dir / "config.json").read_text())
    loaded = load(config["model"], NUSAX, config["architecture"], False, QUICK, run_pooling(config))
    return run_model(loaded, run_dir, config, config["model"], NUSAX)


def test_a_stage1_run_records_its_pooling_and_every_later_load_reads_it(pooled_workspace, one_thread):
    model, runs = str(pooled_workspace / "encoder"), pooled_workspace / "runs"
    stage1 = finetune(model, "nusax", output=runs, data=NUSAX_DATA, train=QUICK)
    assert json.loads((stage1 / "config.json").read_text())["pooling"] == "mean"  # auto, from modules.json
    assert pooled_heads(rebuilt(stage1)) == ["mean"]
    common = dict(output=runs, data=NUSAX_DATA, train=QUICK)
    for method in ("zero-shot", "flare"):
        run_dir = transfer(model, "nusax", "id", method, stage1, pooled_workspace / "translations", **common)
        assert pooled_heads(rebuilt(run_dir)) == ["mean"], method
        recorded = json.loads((run_dir / "metrics.json").read_text())["scores"]
        assert evaluate(run_dir)["scores"] == recorded, method
    # The architecture's own head, asked for on the same folder: another stage-1 run, with no pooled head.
    own = finetune(model, "nusax", output=runs, data=NUSAX_DATA, train=QUICK, pooling="cls")
    assert own != stage1 and json.loads((own / "config.json").read_text())["pooling"] == "cls"
    assert pooled_heads(rebuilt(own)) == []


RECIPE = """
model: models/encoder
task: nusax
languages: [id]
methods: [zero-shot, lora]
seeds: [1, 2]
architecture: encoder
train: {epochs: 2, learning_rate: 2.0e-5, max_train_samples: 100}
"""


def test_stage1_train_reaches_stage1_only_and_makes_another_stage1(tmp_path):
    from flare_xlt.pipeline.recipe_file import load_recipe
    from flare_xlt.pipeline.recipes import PlannedStep, _stage1_settings, _transfer_settings
    from flare_xlt.pipeline.run_folder import finetune_run, transfer_run

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    shared = load_recipe(path)
    overrides = {"epochs": 5, "learning_rate": 1e-3, "max_train_samples": 2000}
    own = load_recipe(path, {f"stage1_train.{name}": value for name, value in overrides.items()})
    stage1_dir, stage1_config = finetune_run(_stage1_settings(own, 2))
    assert {name: stage1_config["train"][name] for name in overrides} == overrides
    assert stage1_config["train"]["seed"] == 2 and stage1_config["train"]["batch_size"] == own.train.batch_size
    shared_dir, shared_config = finetune_run(_stage1_settings(shared, 2))
    assert shared_config["train"]["epochs"] == 2 and shared_dir != stage1_dir
    step = PlannedStep("transfer", "id", "lora", 2)
    transfers = [transfer_run(_transfer_settings(recipe, step, stage1_dir))[1]["train"] for recipe in (shared, own)]
    assert transfers[0] == transfers[1] and transfers[1]["epochs"] == 2 and transfers[1]["max_train_samples"] == 100
    with pytest.raises(ValueError, match=r"Unknown stage1_train settings \['epoch'\]; valid settings: .*'epochs'"):
        load_recipe(path, {"stage1_train.epoch": 3})
    with pytest.raises(ValueError, match="stage1_train cannot set seed"):
        load_recipe(path, {"stage1_train.seed": 3})
    assert asdict(shared.stage1_train_config(1)) == {**asdict(shared.train), "seed": 1}


def test_the_linear_probe_is_a_logistic_regression_on_the_base_encoders_pooled_features(pooled_workspace, one_thread):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoTokenizer

    from flare_xlt.report import write_report
    from flare_xlt.tasks import NUSAX, load_original_view

    model, runs = str(pooled_workspace / "encoder"), pooled_workspace / "runs-probe"
    # A stage 1 that moves the encoder well away from the base, which the probe must not read. It reads the first
    # two of the three English training examples; the probe, its floor, fits on the same two, whatever the
    # transfer's own max_train_samples (QUICK: all).
    strong = TrainConfig(batch_size=2, max_steps=4, learning_rate=0.05, max_length=48, seed=3, max_train_samples=2)
    stage1 = finetune(model, "nusax", output=runs, data=NUSAX_DATA, train=strong)
    probe = transfer(model, "nusax", "id", "linear-probe", stage1, output=runs, data=NUSAX_DATA, train=QUICK)
    config = json.loads((probe / "config.json").read_text())
    assert config["translations"] is None and config["adapter"] is None and config["trainable"] is None
    assert set(config["train"]) == {"seed", "max_length", "max_eval_samples", "max_train_samples"}
    assert config["train"]["max_train_samples"] == 2 and QUICK.max_train_samples is None
    # The folder is the one the recipe planner and --dry_run compute from transfer's arguments (transfer_run), so a
    # finished probe run is found there, not planned again.
    arguments = {name: parameter.default for name, parameter in inspect.signature(transfer).parameters.items()}
    arguments |= dict(model=model, task="nusax", language="id", method="linear-probe", stage1=stage1, output=runs)
    assert transfer_run(arguments | dict(data=NUSAX_DATA, train=QUICK))[0] == probe

    # By hand: the base checkpoint (no stage-1 adapter), mean-pooled over the real tokens, standardised, fitted.
    tokenizer, encoder = AutoTokenizer.from_pretrained(model), AutoModel.from_pretrained(model).eval()

    def features(records: list[dict]) -> torch.Tensor:
        batch = tokenizer([record["text"] for record in records], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1)).numpy()

    english = load_original_view(NUSAX, "en", "train", NUSAX_DATA)[:2]
    assert len({record["label"] for record in english}) == 2
    indonesian = load_original_view(NUSAX, "id", "test", NUSAX_DATA)
    scaler = StandardScaler().fit(features(english))
    regression = LogisticRegression(C=1.0, max_iter=2000).fit(
        scaler.transform(features(english)), [record["label"] for record in english]
    )
    expected = regression.predict_log_proba(scaler.transform(features(indonesian)))
    predictions = [json.loads(line)["prediction"] for line in (probe / "predictions.jsonl").read_text().splitlines()]
    assert predictions == expected.argmax(-1).tolist()
    scored = rebuilt(probe)  # as `evaluate` fits it again
    batch = tokenizer([record["text"] for record in indonesian], padding=True, return_tensors="pt")
    logits = scored(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    seen = torch.as_tensor(regression.classes_)  # the class the two English examples lack scores -inf
    torch.testing.assert_close(logits[:, seen], torch.as_tensor(expected, dtype=logits.dtype), atol=1e-4, rtol=0)
    unseen = [label for label in range(logits.shape[1]) if label not in regression.classes_]
    assert len(unseen) == 1 and torch.isneginf(logits[:, unseen]).all()
    assert evaluate(probe)["scores"] == json.loads((probe / "metrics.json").read_text())["scores"]
    table = next(path for path in write_report(runs) if path.name == "report_nusax.md").read_text()
    assert "| linear-probe |" in table

    # The English features are kept beside the runs, and a refit reads them there: with the cached rows swapped, the
    # head is the one fitted by hand on the swapped rows.
    (cached,) = (runs / PROBE_FEATURES).glob("*.safetensors")
    stored = load_file(cached)["features"]
    torch.testing.assert_close(stored, torch.as_tensor(features(english)), atol=1e-5, rtol=0)
    save_file({"features": stored.flip(0).contiguous()}, cached)
    swapped = LogisticRegression(C=1.0, max_iter=2000).fit(
        scaler.transform(features(english)[::-1]), [record["label"] for record in english]
    )
    with numpy.errstate(divide="ignore"):  # two examples fit a head sure enough to give some classes probability 0
        expected = swapped.predict_log_proba(scaler.transform(features(indonesian)))
        logits = rebuilt(probe)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits[:, seen], torch.as_tensor(expected, dtype=logits.dtype), atol=1e-4, rtol=0)


def test_the_probe_features_key_changes_with_everything_the_features_depend_on(pooled_workspace):
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(pooled_workspace / "encoder")).eval()
    batches = [{"input_ids": torch.tensor([[0, 5, 6, 2]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}]
    key = english_features_key(base, batches, "mean")
    assert english_features_key(base, [dict(batch) for batch in batches], "mean") == key
    assert english_features_key(base, batches, "cls") != key
    other_ids = [{**batches[0], "input_ids": torch.tensor([[0, 5, 7, 2]])}]
    assert english_features_key(base, other_ids, "mean") != key
    padded = [{"input_ids": torch.tensor([[0, 5, 6, 2, 1]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0]])}]
    assert english_features_key(base, padded, "mean") != key
    with torch.no_grad():
        next(base.parameters())[0, 0] += 1e-3
    nudged = english_features_key(base, batches, "mean")
    assert nudged != key
    assert english_features_key(base.double(), batches, "mean") != nudged


def test_the_linear_probe_is_refused_where_there_is_no_encoder_classifier_and_planned_without_translations(tmp_path):
    from flare_xlt.methods import get_method
    from flare_xlt.pipeline.recipe_file import load_recipe
    from flare_xlt.pipeline.recipes import plan

    probe = get_method("linear-probe")
    for architecture in ("decoder", "seq2seq"):
        with pytest.raises(ValueError, match=f"linear-probe does not run on {architecture} models: .*encoder models"):
            probe.check_fit("classification", architecture)
    with pytest.raises(ValueError, match="linear-probe does not run for extractive QA tasks"):
        probe.check_fit("extractive_qa", "encoder")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("[zero-shot, lora]", "[linear-probe]"))
    steps = plan(load_recipe(path))
    assert [(step.kind, step.method, step.seed) for step in steps] == [
        ("finetune", None, 1),
        ("transfer", "linear-probe", 1),
        ("finetune", None, 2),
        ("transfer", "linear-probe", 2),
    ]
    with pytest.raises(ValueError, match="linear-probe does not run for extractive QA tasks"):
        path.write_text(RECIPE.replace("[zero-shot, lora]", "[linear-probe]").replace("nusax", "tydiqa"))
        load_recipe(path)
