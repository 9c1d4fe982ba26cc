"""The translate-train + translate-test ensemble: averaged class probabilities, computed independently here."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import NUSAX_DATA, PAD, build
from test_pipeline import QUICK, read_metrics

from flare_xlt.methods import get_method
from flare_xlt.methods.ensemble import ProbabilityEnsemble
from flare_xlt.pipeline import evaluate, finetune, transfer
from flare_xlt.pipeline.finished_runs import run_model
from flare_xlt.pipeline.loading import load_model
from flare_xlt.tasks import NUSAX, PairedCollator, TaskEncoder, get_task, load_record_file, pair_views


def test_encoder_probabilities_are_the_mean_of_both_models_softmax():
    target, source = build("xlmr-cls", seed=1), build("xlmr-cls", seed=2)
    ensemble = ProbabilityEnsemble(target, source, "encoder", None, PAD)
    generator = torch.Generator().manual_seed(4)
    ids, english = torch.randint(3, 96, (3, 6), generator=generator), torch.randint(3, 96, (3, 5), generator=generator)
    mask, english_mask = torch.ones_like(ids), torch.ones_like(english)
    with torch.no_grad():
        expected = (target(input_ids=ids).logits.softmax(-1) + source(input_ids=english).logits.softmax(-1)) / 2
        got = ensemble(ids, mask, english, english_mask).logits.exp()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "mt5"])
def test_generative_class_probabilities_score_each_answer_after_its_prompt(kind):
    """A class's log-probability is its answer's teacher-forced log-probability after the unpadded prompt, one
    example at a time; the batch is left-padded (decoder) or right-padded (encoder-decoder), as predict pads it."""
    model = build(kind)
    answers = [[10, 2], [11, 12, 2], [13, 2]]
    ensemble = ProbabilityEnsemble(model, model, "seq2seq" if kind == "mt5" else "decoder", answers, PAD, PAD)
    prompts = [[5, 6, 7, 8], [9, 20]]
    length = max(map(len, prompts))
    pads = [[PAD] * (length - len(prompt)) for prompt in prompts]
    rows = [pad + prompt if kind == "llama" else prompt + pad for prompt, pad in zip(prompts, pads, strict=True)]
    ids = torch.tensor(rows)
    mask = torch.tensor([[0] * len(pad) + [1] * len(p) for p, pad in zip(prompts, pads, strict=True)])
    if kind == "mt5":
        mask = mask.flip(-1)
    with torch.no_grad():
        got = ensemble.class_log_probs(model, ids, mask)
        for row, prompt in enumerate(prompts):
            scores = []
            for answer in answers:
                if kind == "mt5":
                    logits = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([answer])).logits[0]
                else:
                    logits = model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
                log_probs = logits.log_softmax(-1)
                scores.append(sum(log_probs[i, token].item() for i, token in enumerate(answer)))
            expected = torch.tensor(scores).log_softmax(-1)
            torch.testing.assert_close(got[row], expected, atol=1e-4, rtol=0)
        # generate writes the chosen class's answer where the workflow reads generated text
        chosen = got.argmax(-1)
        written = ensemble.generate(ids, mask, ids, mask)
        start = ids.shape[1] if kind == "llama" else 1
        for row, choice in enumerate(chosen.tolist()):
            assert written[row, start : start + len(answers[choice])].tolist() == answers[choice]


def test_the_ensemble_fits_classification_only():
    with pytest.raises(ValueError, match="ensemble does not run for extractive QA tasks: the ensemble averages"):
        get_method("ensemble").check_fit(get_task("tydiqa").kind)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_the_ensemble_run_reuses_the_lora_run_and_averages_it_with_translate_test(workspace, kind, one_thread):
    runs, model = workspace / f"runs-ensemble-{kind}", str(workspace / kind)
    stage1 = finetune(model, "nusax", output=runs, data=NUSAX_DATA, train=QUICK)
    common = dict(output=runs, data=NUSAX_DATA, train=QUICK)
    ensemble = transfer(model, "nusax", "id", "ensemble", stage1, workspace / "translations", **common)
    config = json.loads((ensemble / "config.json").read_text())
    lora = runs / config["reuses"]
    assert json.loads((lora / "config.json").read_text())["method"] == "lora"  # made first, as it was missing
    assert (lora / "metrics.json").is_file()
    made_inside = json.loads((ensemble / "timings.json").read_text())["wall_seconds"]["reused run"]
    assert made_inside >= json.loads((lora / "timings.json").read_text())["total_wall_seconds"] > 0
    assert transfer(model, "nusax", "id", "lora", stage1, workspace / "translations", **common) == lora
    metrics, predictions = read_metrics(ensemble)
    assert evaluate(ensemble)["scores"] == metrics["scores"]
    if kind != "encoder":
        return
    # Independently: softmax of the LoRA run's model on the Indonesian text and of the stage-1 model on the English
    # translation, averaged, one example at a time.
    loaded = load_model(model, NUSAX)
    lora_model = run_model(loaded, lora, json.loads((lora / "config.json").read_text()), model, NUSAX).eval()
    english_loaded = load_model(model, NUSAX)
    zero_shot = run_model(english_loaded, stage1, {"stage": "finetune"}, model, NUSAX).eval()
    records = load_record_file(NUSAX, workspace / "translations" / "nusax_test_id-en.jsonl")
    from flare_xlt.tasks import load_task_splits

    pairs = pair_views(NUSAX, load_task_splits(NUSAX, "id", ["test"], NUSAX_DATA)["test"], records)
    features, _, _ = TaskEncoder(NUSAX, loaded.tokenizer, "encoder", "paired", QUICK.max_length).encode(pairs)
    expected = []
    with torch.no_grad():
        for feature in features:
            batch = PairedCollator.for_tokenizer(loaded.tokenizer)([feature])
            target = lora_model(input_ids=batch["input_ids"]).logits.softmax(-1)
            source = zero_shot(input_ids=batch["source_input_ids"]).logits.softmax(-1)
            expected.append(int(((target + source) / 2).argmax(-1)))
    assert [row["prediction"] for row in predictions] == expected
    assert not math.isnan(metrics["scores"]["average"]["accuracy"])
