"""The lm-evaluation-harness model `flare` (flare_xlt/harness.py), end to end and offline: a tiny FLARE decoder, a
multiple-choice task YAML over a local JSONL file, the stub MT command. Its per-item scores must equal the fused
model's own teacher-forced scores of the same items, computed here independently of the harness."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import DECODER_SIZES, randomize_lora, train_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from flare_xlt.adapter import FlareConfig, FlareModel

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None and os.environ.get("CI") != "true",
    reason="lm-eval is not installed (pip install 'flare-xlt[lm-eval]'; make install installs it from the lock)",
)

STUB = Path(__file__).parent / "mt_command_stub.py"
CHOICES = ["entailment", "neutral", "contradiction"]
DOCS = [  # Spanish items of the XNLI fixture; the first premise twice, so that a context repeats across documents
    {"premise": 'El gato duerme sobre la alfombra "cálida".', "hypothesis": "Un animal está descansando.", "label": 0},
    {"premise": "Compró tres manzanas.", "hypothesis": "Compró fruta en el mercado.", "label": 1},
    {"premise": "La tienda cierra los domingos.", "hypothesis": "La tienda abre todos los días.", "label": 2},
    {"premise": 'El gato duerme sobre la alfombra "cálida".', "hypothesis": "Un animal está descansando.", "label": 0},
]
TASK_YAML = """task: flare_tiny_nli
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Premise: {{{{premise}}}} Hypothesis: {{{{hypothesis}}}} Label:"
doc_to_choice: {choices}
doc_to_target: label
metric_list:
  - metric: acc
"""


def context_of(doc: dict) -> str:
    return f"Premise: {doc['premise']} Hypothesis: {doc['hypothesis']} Label:"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Llama with its tokenizer, and a FLARE adapter with random LoRA weights saved beside it."""
    root = tmp_path_factory.mktemp("harness")
    tokenizer = train_tokenizer("decoder")
    torch.manual_seed(0)
    sizes = {**DECODER_SIZES, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    sizes.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(LlamaConfig(**sizes)).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    flare = FlareModel(base, FlareConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], fusion="add_relu"))
    randomize_lora(flare, scale=1.0)
    flare.save_pretrained(root / "adapter")
    return root


def own_score(flare: FlareModel, tokenizer, context: str, continuation: str, english: str) -> float:
    """The fused model's summed log-probability of the continuation after the context, one item alone (no padding):
    the target reads context and continuation, the source the English context, the continuation carries the labels."""
    context_ids = tokenizer(context)["input_ids"]
    continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([context_ids + continuation_ids])
    labels = torch.tensor([[-100] * len(context_ids) + continuation_ids])
    source = torch.tensor([tokenizer(english)["input_ids"]])
    with torch.no_grad():
        logits = flare(input_ids=input_ids, labels=labels, source_input_ids=source).logits[0]
    log_probs = logits.double().log_softmax(-1)
    start = len(context_ids)
    return sum(log_probs[start + k - 1, token].item() for k, token in enumerate(continuation_ids))


def test_lm_eval_runs_the_flare_model_end_to_end_with_the_fused_models_own_scores(saved, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from flare_xlt.harness import FlareLM

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "flare_tiny_nli.yaml").write_text(TASK_YAML.format(data=data, choices=json.dumps(CHOICES)))

    model = FlareLM(
        adapter=str(saved / "adapter"),
        pretrained=str(saved / "base"),
        task="xnli",
        language="es",
        backend="command",
        command=f"{sys.executable} {STUB} upper",  # the "translation" upper-cases each line
        cache=str(tmp_path / "translations.sqlite"),
        batch_size=5,  # batches mix items of different lengths: left padding must not change a score
    )
    results = lm_eval.simple_evaluate(
        model=model, tasks=["flare_tiny_nli"], task_manager=TaskManager(include_path=str(tasks)), log_samples=True
    )

    tokenizer = AutoTokenizer.from_pretrained(saved / "base")
    base = AutoModelForCausalLM.from_pretrained(saved / "base")
    flare = FlareModel.from_pretrained(base, saved / "adapter").eval()
    samples = sorted(results["samples"]["flare_tiny_nli"], key=lambda sample: sample["doc_id"])
    assert len(samples) == len(DOCS)
    correct = 0
    for sample, doc in zip(samples, DOCS, strict=True):
        context = context_of(doc)
        harness_scores = [response[0][0] for response in sample["resps"]]
        expected = [own_score(flare, tokenizer, context, f" {choice}", context.upper()) for choice in CHOICES]
        assert harness_scores == pytest.approx(expected, abs=1e-4)
        # The source side is the translation: scoring with the untranslated context gives other numbers.
        untranslated = own_score(flare, tokenizer, context, f" {CHOICES[0]}", context)
        assert abs(untranslated - expected[0]) > 1e-3
        correct += max(range(len(CHOICES)), key=lambda index: expected[index]) == doc["label"]
    assert results["results"]["flare_tiny_nli"]["acc,none"] == pytest.approx(correct / len(DOCS))
    # 12 requests, 3 distinct contexts, each translated once; asking again translates nothing new.
    assert (model.report.requests, model.report.contexts, model.report.translated) == (12, 3, 3)

    context = context_of(DOCS[1])
    request = Instance("generate_until", DOCS[1], (context, {"until": ["contradiction"], "max_gen_toks": 4}), 0)
    [generated] = model.generate_until([request])
    assert model.report.contexts == 3  # the context was translated for the loglikelihood requests already
    prompt = tokenizer([context], return_tensors="pt")
    source = tokenizer([context.upper()], return_tensors="pt")
    with torch.no_grad():
        tokens = flare.generate(
            **prompt,
            source_input_ids=source["input_ids"],
            source_attention_mask=source["attention_mask"],
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    text = tokenizer.decode(tokens[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert generated == text.split("contradiction")[0]

    # A whole text (perplexity tasks) is one window here: scored after BOS, with its translation as the source.
    text = DOCS[2]["premise"]
    [rolling] = model.loglikelihood_rolling([Instance("loglikelihood_rolling", DOCS[2], (text,), 0)])
    assert rolling == pytest.approx(own_score(flare, tokenizer, "", text, text.upper()), abs=1e-4)
    # An empty context has no English to fuse: the source is the empty text's tokens, and the request is counted.
    [(empty, _)] = model.loglikelihood([Instance("loglikelihood", DOCS[0], ("", " entailment"), 0)])
    assert empty == pytest.approx(own_score(flare, tokenizer, "", " entailment", ""), abs=1e-4)
    assert model.report.empty_contexts == 1


def test_the_flare_model_refuses_what_it_cannot_score(saved):
    from flare_xlt.harness import FlareLM

    with pytest.raises(ValueError, match="exactly one of run="):
        FlareLM()
    with pytest.raises(ValueError, match="give pretrained="):
        FlareLM(adapter=str(saved / "adapter"))
