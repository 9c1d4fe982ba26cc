"""The workflow end to end on tiny models: finetune -> translate -> transfer with each method -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, NUSAX_DATA
from test_goldens import check_golden

from flare_xlt.pipeline import AdapterConfig, TrainConfig, evaluate, finetune, transfer
from flare_xlt.report import write_report

QUICK = TrainConfig(batch_size=2, max_steps=2, learning_rate=1e-3, max_length=48, seed=3)


def transfer_to_indonesian(workspace, kind: str, method: str, stage1, runs, **settings):
    """A NusaX transfer to Indonesian of the workspace's `kind` model (QUICK training unless `settings` say)."""
    settings = {"output": runs, "data": NUSAX_DATA, "train": QUICK, **settings}
    return transfer(str(workspace / kind), "nusax", "id", method, stage1, workspace / "translations", **settings)


def read_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return metrics, predictions


@pytest.mark.parametrize("kind", ["encoder", "decoder", "seq2seq"])
def test_every_method_runs_end_to_end(workspace, kind, capsys, one_thread):
    runs = workspace / f"runs-{kind}"
    stage1 = finetune(str(workspace / kind), "nusax", output=runs, data=NUSAX_DATA, train=QUICK)
    assert (stage1 / "adapter" / "adapter_config.json").is_file()
    methods = ["zero-shot", "translate-test", "lora", "input-fusion", "ensemble", "flare", "flare-mt"]
    if kind == "encoder":
        methods.append("x-mixup")
    finished = []
    for method in methods:
        run_dir = transfer_to_indonesian(workspace, kind, method, stage1, runs, mt_states=workspace / "states" / kind)
        metrics, predictions = read_metrics(run_dir)
        assert (metrics["task"], metrics["language"], metrics["method"], metrics["seed"]) == ("nusax", "id", method, 3)
        assert metrics["metric"] == "macro_f1" and metrics["scores"]["id"]["count"] == 3
        assert [row["id"] for row in predictions] == ["11", "12", "13"]
        assert [row["reference"] for row in predictions] == [2, 0, 1]
        if method in ("lora", "input-fusion", "flare", "flare-mt", "x-mixup"):
            assert (run_dir / "adapter" / "adapter_config.json").is_file()
        if method == "x-mixup":
            assert (run_dir / "adapter" / "xmixup.safetensors").is_file()
        if method.startswith("flare"):
            assert (run_dir / "adapter" / "flare_config.json").is_file()
        assert json.loads((run_dir / "config.json").read_text())["method"] == method
        assert "torch" in json.loads((run_dir / "environment.json").read_text())
        finished.append(run_dir)
    written = write_report(runs)
    table = next(path for path in written if path.name == "report_nusax.md").read_text()
    assert all(f"| {method} |" in table for method in methods)
    # Predictions and metrics at a fixed seed on CPU equal those recorded from a known-good version (the folder's
    # name and hash depend on where the test runs: test_goldens checks them), and `evaluate` on each finished run
    # reproduces its metrics.json.
    scored = {}
    for run_dir in [stage1, *finished]:
        metrics, predictions = read_metrics(run_dir)
        assert evaluate(run_dir)["scores"] == metrics["scores"], run_dir.name
        volatile = ("run", "config_hash")
        scored[metrics["method"]] = {
            "metrics": {key: value for key, value in metrics.items() if key not in volatile},
            "predictions": predictions,
        }
    check_golden(f"pipeline_{kind}", scored)

    # The same request again finds the finished run; another seed is another directory.
    again = transfer(
        str(workspace / kind),
        "nusax",
        "id",
        "flare",
        stage1,
        workspace / "translations",
        output=runs,
        data=NUSAX_DATA,
        train=QUICK,
    )
    assert "finished earlier, skipped" in capsys.readouterr().out
    other = transfer(
        str(workspace / kind),
        "nusax",
        "id",
        "flare",
        stage1,
        workspace / "translations",
        output=runs,
        data=NUSAX_DATA,
        train=TrainConfig(**{**vars(QUICK), "seed": 4}),
    )
    assert other != again and other.name.startswith("nusax-id-flare-seed4-")


def test_transfer_errors_name_the_choices(workspace):
    with pytest.raises(
        ValueError, match="Unknown method 'mixup'; valid choices: linear-probe, zero-shot, translate-test"
    ):
        transfer(str(workspace / "encoder"), "nusax", "id", "mixup", workspace)
    with pytest.raises(ValueError, match="has no language 'xx'"):
        transfer(str(workspace / "encoder"), "nusax", "xx", "flare", workspace)
    with pytest.raises(ValueError, match="needs --translations"):
        transfer(str(workspace / "encoder"), "nusax", "id", "flare", workspace)
    with pytest.raises(ValueError, match="translate-test does not run for extractive QA tasks"):
        transfer(str(workspace / "encoder"), "tydiqa", "sw", "translate-test", workspace, workspace)
    with pytest.raises(ValueError, match=r"Unknown stage1_mode 'keep'; valid choices: auto, merge, frozen"):
        transfer(str(workspace / "encoder"), "nusax", "id", "flare", workspace, workspace, stage1_mode="keep")
    with pytest.raises(ValueError, match=r"max_length=300 exceeds the 159 positions this model can encode"):
        finetune(str(workspace / "encoder"), "nusax", data=NUSAX_DATA, train=TrainConfig(max_length=300))
    assert AdapterConfig().fusion == "add_relu"


def test_best_on_validation_restores_the_best_epoch():
    from transformers import TrainerState

    from flare_xlt.pipeline.training import BestOnValidation

    model = torch.nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    scores = iter([0.5, 0.8, 0.6])
    callback = BestOnValidation(model, lambda: next(scores), "accuracy")
    state = TrainerState()
    weights_by_epoch = []
    for epoch in range(3):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
            model.bias.fill_(10.0 + epoch)
        weights_by_epoch.append(model.weight.detach().clone())
        state.epoch, state.global_step = epoch + 1.0, 2 * (epoch + 1)
        callback.on_epoch_end(None, state, None)
    callback.on_train_end(None, state, None)
    # every epoch's score is in the log history that <run>/logs/trainer_state.json keeps
    assert state.log_history[1] == {"epoch": 2.0, "step": 4, "eval_accuracy": 0.8}
    assert torch.equal(model.weight, weights_by_epoch[1])  # epoch 2 scored best
    assert model.bias.item() == 12.0  # frozen parameters are neither saved nor restored
    assert callback.summary() == {"validation_history": [0.5, 0.8, 0.6], "best_epoch": 2}


def test_selection_on_validation_is_recorded_and_refused_without_a_validation_set(workspace):
    select = TrainConfig(
        batch_size=2, epochs=2, learning_rate=1e-3, max_length=48, seed=5, select_best_on_validation=True
    )
    stage1 = finetune(
        str(workspace / "encoder"), "nusax", output=workspace / "runs-select", data=NUSAX_DATA, train=select
    )
    metrics = json.loads((stage1 / "metrics.json").read_text())
    history = metrics["validation_history"]
    assert len(history) == 2 and metrics["best_epoch"] == 1 + history.index(max(history))
    run_dir = transfer(
        str(workspace / "encoder"),
        "nusax",
        "id",
        "flare",
        stage1,
        workspace / "translations",
        output=workspace / "runs-select",
        data=NUSAX_DATA,
        train=select,
    )
    assert len(json.loads((run_dir / "metrics.json").read_text())["validation_history"]) == 2
    for run in (stage1, run_dir):  # where the run's time went, phase by phase, adding up to the whole
        timings = json.loads((run / "timings.json").read_text())
        wall = timings["wall_seconds"]
        assert {"load", "train", "validate", "evaluate", "save", "other"} <= set(wall) and min(wall.values()) >= 0
        assert wall["train"] > 0 and wall["validate"] > 0
        assert sum(wall.values()) == pytest.approx(timings["total_wall_seconds"], abs=0.01)
    assert "build" in json.loads((run_dir / "timings.json").read_text())["wall_seconds"]
    with pytest.raises(ValueError, match="tydiqa uses its 'validation' split as the test set"):
        finetune(str(workspace / "encoder"), "tydiqa", data=str(FIXTURES / "tydiqa"), train=select)


def test_trainable_choices_pick_the_modules_to_save(workspace):
    from flare_xlt.pipeline import load_model
    from flare_xlt.tasks import NUSAX, TYDIQA

    decoder = load_model(str(workspace / "decoder"), NUSAX)
    assert decoder.architecture == "decoder" and decoder.tokenizer.padding_side == "left"
    assert decoder.head_modules(NUSAX, "lora") is None
    assert decoder.head_modules(NUSAX, "lora+head") == ["lm_head"]
    assert decoder.head_modules(NUSAX, "lora+head+embeddings") == ["lm_head", "embed_tokens"]
    encoder = load_model(str(workspace / "encoder"), TYDIQA)
    assert encoder.architecture == "encoder" and encoder.head_modules(TYDIQA, "lora") == ["qa_outputs"]
    assert encoder.head_modules(TYDIQA, "lora+head") == ["qa_outputs"]
    assert encoder.head_modules(TYDIQA, "lora+head+embeddings") == ["qa_outputs", "word_embeddings"]
    with pytest.raises(ValueError, match="valid choices: lora, lora\\+head, lora\\+head\\+embeddings"):
        decoder.head_modules(NUSAX, "everything")


def test_frozen_stage1_mode_runs_and_is_a_different_run(workspace):
    runs = workspace / "runs-frozen"
    stage1 = finetune(str(workspace / "encoder"), "nusax", output=runs, data=NUSAX_DATA, train=QUICK)
    common = dict(output=runs, data=NUSAX_DATA, train=QUICK)
    merged = transfer(str(workspace / "encoder"), "nusax", "id", "flare", stage1, workspace / "translations", **common)
    frozen = transfer(
        str(workspace / "encoder"),
        "nusax",
        "id",
        "flare",
        stage1,
        workspace / "translations",
        stage1_mode="frozen",
        **common,
    )
    assert merged != frozen
    assert json.loads((frozen / "config.json").read_text())["stage1_mode"] == "frozen"
    assert read_metrics(frozen)[0]["scores"]["id"]["count"] == 3


def test_under_a_frozen_stage1_lora_at_learning_rate_0_scores_what_zero_shot_scores(
    workspace, unload_gives_original_modules
):
    """Zero-shot scores the stage-1 PeftModel itself; a LoRA that has not moved must start from, and be, that model,
    trained head included, whichever module PEFT's unload() gives back."""
    from flare_xlt.pipeline.finished_runs import run_model
    from flare_xlt.pipeline.loading import load_model
    from flare_xlt.tasks import NUSAX

    runs, model = workspace / "runs-frozen-lr0", str(workspace / "encoder")
    stage1 = finetune(model, "nusax", output=runs, data=NUSAX_DATA, train=QUICK)
    still = TrainConfig(batch_size=2, max_steps=1, learning_rate=0.0, max_length=48, seed=3)
    logits, predictions = {}, {}
    for method, train in (("zero-shot", QUICK), ("lora", still)):
        run_dir = transfer_to_indonesian(workspace, "encoder", method, stage1, runs, train=train, stage1_mode="frozen")
        predictions[method] = read_metrics(run_dir)[1]
        loaded = load_model(model, NUSAX)
        scored = run_model(loaded, run_dir, json.loads((run_dir / "config.json").read_text()), model, NUSAX)
        batch = loaded.tokenizer(["saya suka makanan ini", "buruk sekali"], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits[method] = scored.eval()(**batch).logits
    assert predictions["lora"] == predictions["zero-shot"]
    torch.testing.assert_close(logits["lora"], logits["zero-shot"], atol=1e-5, rtol=0)


def test_run_hash_spells_numbers_and_paths_one_way(tmp_path, monkeypatch):
    from flare_xlt.pipeline.run_folder import run_directory

    (tmp_path / "translations").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = run_directory(Path("runs"), "x", {"train": {"epochs": 3}, "translations": "translations", "method": "a"})
    absolute = run_directory(
        Path("runs"), "x", {"train": {"epochs": 3.0}, "translations": str(tmp_path / "translations"), "method": "a"}
    )
    assert relative == absolute
    assert (
        run_directory(Path("runs"), "x", {"train": {"epochs": 2}, "translations": "translations", "method": "a"})
        != relative
    )


def test_every_method_starts_from_the_same_stage1_model(workspace, monkeypatch):
    """A merge into a 4-bit base re-quantises. Simulated here by a merge that shifts the classifier: zero-shot must
    evaluate the same merged model that a trained method starts from (checked with a LoRA that cannot move)."""
    from peft.tuners.tuners_utils import BaseTuner

    from flare_xlt.pipeline.settings import resolve_stage1_mode

    assert resolve_stage1_mode("auto", load_in_4bit=True) == "frozen"
    assert resolve_stage1_mode("auto", load_in_4bit=False) == "merge"
    merge = BaseTuner.merge_and_unload  # what PeftModel.merge_and_unload runs

    def lossy_merge(self, *args, **kwargs):
        model = merge(self, *args, **kwargs)
        with torch.no_grad():
            model.classifier.out_proj.bias += torch.tensor([0.0, 0.0, 50.0])  # every prediction becomes class 2
        return model

    monkeypatch.setattr(BaseTuner, "merge_and_unload", lossy_merge)
    runs = workspace / "runs-same-start"
    stage1 = finetune(str(workspace / "encoder"), "nusax", output=runs, data=NUSAX_DATA, train=QUICK)
    still = TrainConfig(**{**vars(QUICK), "learning_rate": 0.0})
    common = dict(output=runs, data=NUSAX_DATA, train=still, stage1_mode="merge")
    zero_shot = transfer(str(workspace / "encoder"), "nusax", "id", "zero-shot", stage1, **common)
    lora = transfer(str(workspace / "encoder"), "nusax", "id", "lora", stage1, workspace / "translations", **common)
    zero_shot_predictions = [row["prediction"] for row in read_metrics(zero_shot)[1]]
    assert zero_shot_predictions == [row["prediction"] for row in read_metrics(lora)[1]] == [2, 2, 2]
