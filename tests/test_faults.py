"""The fault matrix: every kind of bad input fails loudly, with the exception type and a message that names the
setting, file or line and the valid choices, or warns with counts; and no case leaves a new or changed file behind.

docs/reliability.md lists each case with what happens; the ids below are the ids it cites.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import NUSAX_DATA, batch_for, build
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from flare_xlt import FlareConfig, FlareModel, get_flare_model
from flare_xlt.io import replace_atomically, replace_directory_atomically, write_text_atomic
from flare_xlt.mt import (
    FallbackLanguageWarning,
    GenerationSettings,
    TranslationCacheWarning,
    TranslationInputWarning,
    Translator,
    nllb_code,
)
from flare_xlt.mt.states import EncoderStateStore
from flare_xlt.pipeline import AdapterConfig, NonFiniteTrainingError, TrainConfig, finetune, transfer
from flare_xlt.pipeline.checkpoints import TRAINABLE_WEIGHTS_NAME, CheckpointSchedule, ResumableTrainer
from flare_xlt.pipeline.recipe_file import load_recipe
from flare_xlt.tasks import NUSAX, TYDIQA, get_task, load_record_file, load_task_spec

QUICK = TrainConfig(batch_size=2, max_steps=2, learning_rate=1e-3, max_length=48, seed=3)


@dataclass
class Context:
    workspace: Path  # tiny models, translations and state stores (conftest)
    stage1: Path  # a finished stage-1 run of the tiny encoder
    inputs: Path  # where a case writes its broken inputs
    out: Path  # the output folder: it must hold exactly what it held before the fault

    @property
    def encoder(self) -> str:
        return str(self.workspace / "encoder")

    def translations_with(self, name: str, edit: Callable[[list[dict]], list[dict]]) -> Path:
        """A copy of the workspace translations in which `name` is replaced by `edit(its records)`."""
        folder = self.inputs / "translations"
        shutil.copytree(self.workspace / "translations", folder)
        records = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        (folder / name).write_text("".join(json.dumps(record) + "\n" for record in edit(records)))
        return folder

    def transfer(self, method: str = "flare", **overrides) -> Path:
        arguments = dict(
            model=self.encoder,
            task="nusax",
            language="id",
            method=method,
            stage1=self.stage1,
            translations=self.workspace / "translations",
            output=self.out,
            data=NUSAX_DATA,
            train=QUICK,
        )
        return transfer(**{**arguments, **overrides})


@pytest.fixture(scope="module")
def stage1(workspace, tmp_path_factory):
    return finetune(
        str(workspace / "encoder"), "nusax", output=tmp_path_factory.mktemp("stage1"), data=NUSAX_DATA, train=QUICK
    )


@pytest.fixture
def context(workspace, stage1, tmp_path):
    (tmp_path / "inputs").mkdir()
    return Context(workspace, stage1, tmp_path / "inputs", tmp_path / "out")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----------------------------------------------------------------------------------------------- triggers
def drop_first(records: list[dict]) -> list[dict]:
    return records[1:]


def add_extra(records: list[dict]) -> list[dict]:
    return [*records, {**records[0], "id": "extra-1"}]


def duplicate_first(records: list[dict]) -> list[dict]:
    return [*records, records[0]]


def flip_first_label(records: list[dict]) -> list[dict]:
    return [{**records[0], "label": (records[0]["label"] + 1) % 3}, *records[1:]]


def translation_ids_missing(c: Context) -> None:
    c.transfer(translations=c.translations_with("nusax_train_en-id.jsonl", drop_first))


def translation_ids_extra(c: Context) -> None:
    c.transfer(translations=c.translations_with("nusax_train_en-id.jsonl", add_extra))


def translation_ids_duplicated(c: Context) -> None:
    c.transfer(translations=c.translations_with("nusax_test_id-en.jsonl", duplicate_first))


def translation_labels_disagree(c: Context) -> None:
    c.transfer(translations=c.translations_with("nusax_train_en-id.jsonl", flip_first_label))


def translation_file_missing(c: Context) -> None:
    folder = c.translations_with("nusax_train_en-id.jsonl", drop_first)
    (folder / "nusax_train_en-id.jsonl").unlink()
    c.transfer(translations=folder)


def unknown_model(c: Context) -> None:
    finetune(str(c.inputs / "no-such-model"), "nusax", output=c.out, data=NUSAX_DATA, train=QUICK)


def tokenizer_without_pad_token(c: Context) -> None:
    folder = c.inputs / "encoder-without-pad"
    shutil.copytree(c.workspace / "encoder", folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("pad_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    finetune(str(folder), "nusax", output=c.out, data=NUSAX_DATA, train=QUICK)


def fusion_modules_match_nothing(c: Context) -> None:
    c.transfer(adapter=AdapterConfig(fusion_modules=["gate_proj"]))


def target_modules_absent(c: Context) -> None:
    finetune(c.encoder, "nusax", output=c.out, data=NUSAX_DATA, adapter=AdapterConfig(target_modules=["q_proj"]))


def stage1_from_another_base_model(c: Context) -> None:
    """A stage-1 adapter whose LoRA matrices have another model's width (48 instead of 32)."""
    stage1 = c.inputs / "stage1-wider"
    shutil.copytree(c.stage1 / "adapter", stage1 / "adapter")
    weights_path = stage1 / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_path)
    save_file({name: torch.zeros(8, 48) if "lora_A" in name else w for name, w in weights.items()}, weights_path)
    c.transfer(stage1=stage1)


def stage1_not_a_run_directory(c: Context) -> None:
    c.transfer(stage1=c.inputs)


def flare_adapter_without_flare_config(c: Context) -> None:
    # A stage-1 adapter is a plain PEFT LoRA: no flare_config.json.
    model = AutoModelForSequenceClassification.from_pretrained(c.encoder, num_labels=3)
    FlareModel.from_pretrained(model, c.stage1 / "adapter")


def mt_states_lack_test_ids(c: Context) -> None:
    states = c.inputs / "states"
    shutil.copytree(c.workspace / "states" / "encoder" / "train", states / "train")
    reader = EncoderStateStore(states / "train").metadata["reader"]
    EncoderStateStore.write(states / "test", ["other"], [torch.zeros(2, 32)], metadata={"reader": reader})
    c.transfer("flare-mt", mt_states=states)


def mt_states_of_another_reader(c: Context) -> None:
    states = c.inputs / "states"
    shutil.copytree(c.workspace / "states" / "decoder", states)  # the decoder's prompts, for an encoder run
    c.transfer("flare-mt", mt_states=states)


def source_batch_size_differs(c: Context) -> None:
    flare = get_flare_model(build("xlmr-cls"), FlareConfig())
    inputs = batch_for("xlmr-cls", batch=3)
    source = {key: inputs[key][:2] for key in ("source_input_ids", "source_attention_mask")}
    flare(**{**inputs, **source})


def source_mask_of_another_shape(c: Context) -> None:
    flare = get_flare_model(build("llama"), FlareConfig())
    inputs = batch_for("llama", batch=3)
    flare(**{**inputs, "source_attention_mask": inputs["source_attention_mask"][:2]})


def source_embeds_of_wrong_width(c: Context) -> None:
    flare = get_flare_model(build("llama"), FlareConfig(mt_source_dim=10))
    inputs = batch_for("llama")
    flare(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], source_embeds=torch.zeros(2, 6, 12))


def write_inputs(c: Context, name: str, text: str) -> Path:
    path = c.inputs / name
    path.write_text(text)
    return path


def malformed_recipe_yaml(c: Context) -> None:
    load_recipe(write_inputs(c, "recipe.yaml", "model: m\ntask: nusax\nlanguages: [id\nmethods: [flare]\n"))


def malformed_task_spec_yaml(c: Context) -> None:
    load_task_spec(write_inputs(c, "task.yaml", "name: reviews\nkind: classification\ntext_fields: [text\n"))


def malformed_csv(c: Context) -> None:
    load_record_file(NUSAX, write_inputs(c, "train.csv", "id,text,label\n1,good,positive\n2,bad,negative,extra\n"))


def malformed_jsonl(c: Context) -> None:
    rows = '{"id": "1", "text": "good", "label": 2}\n{"id": "2", "text": "bad", "label": 0\n'
    load_record_file(NUSAX, write_inputs(c, "train.jsonl", rows), language="id")


def label_outside_label_set(c: Context) -> None:
    load_record_file(NUSAX, write_inputs(c, "train.csv", "id,text,label,language\n1,good,5,id\n"))


def qa_answer_not_at_its_start(c: Context) -> None:
    row = {"id": "q1", "question": "Who?", "context": "Ann met Bob.", "answers": {"text": ["Bob"], "answer_start": [0]}}
    load_record_file(TYDIQA, write_inputs(c, "train.jsonl", json.dumps(row) + "\n"), language="sw")


def copy_stage1_with_other_learning_rate(c: Context) -> None:
    """The finished stage-1 run copied into the output folder, its recorded learning rate edited by hand."""
    copied = c.out / c.stage1.name
    shutil.copytree(c.stage1, copied)
    recorded = json.loads((copied / "config.json").read_text())
    recorded["train"]["learning_rate"] = 0.5
    (copied / "config.json").write_text(json.dumps(recorded))


def copy_stage1_with_broken_config(c: Context) -> None:
    copied = c.out / c.stage1.name
    shutil.copytree(c.stage1, copied)
    (copied / "config.json").write_text('{"stage": "finetune",\n')


def ask_for_stage1_again(c: Context) -> None:
    finetune(c.encoder, "nusax", output=c.out, data=NUSAX_DATA, train=QUICK)


def non_finite_encoder_state(c: Context) -> None:
    EncoderStateStore.write(c.out / "states", ["a", "b"], [torch.zeros(2, 4), torch.full((3, 4), float("nan"))])


@dataclass
class Fault:
    error: type[Exception]
    match: str  # the message, as a regular expression
    trigger: Callable[[Context], object]
    prepare: Callable[[Context], None] | None = None  # puts something into the output folder first


FAULTS = {
    "translation-ids-missing": (
        ValueError,
        r"nusax: the views do not pair one to one: 2 target and 3 source examples; 0 ids only in the target view "
        r"\(first: \[\]\), 1 only in the source view \(first: \['11'\]\)",
        translation_ids_missing,
    ),
    "translation-ids-extra": (
        ValueError,
        r"4 target and 3 source examples; 1 ids only in the target view \(first: \['extra-1'\]\)",
        translation_ids_extra,
    ),
    "translation-ids-duplicated": (
        ValueError,
        r"nusax: 1 ids occur more than once in the source view \(first: \['11'\]\)",
        translation_ids_duplicated,
    ),
    "translation-labels-disagree": (
        ValueError,
        r"nusax: 1 pairs carry different labels in the two views \(first: \['11'\]\)",
        translation_labels_disagree,
    ),
    "translation-file-missing": (FileNotFoundError, r"nusax_train_en-id\.jsonl not found", translation_file_missing),
    "unknown-language": (
        ValueError,
        r"Task 'nusax' has no language 'xx'; valid choices: ace, ban, bbc, bjn, bug, en, id",
        lambda c: c.transfer(language="xx"),
    ),
    "unknown-nllb-language": (
        ValueError,
        r"Unknown language code 'xx'; valid choices: ace, ar, ban, bbc, .* \(or an NLLB code\)",
        lambda c: nllb_code("xx"),
    ),
    "unknown-task": (
        ValueError,
        r"Unknown task 'nli'; valid choices: xnli, tydiqa, nusax or the path of a task spec file",
        lambda c: get_task("nli"),
    ),
    "unknown-model": (
        OSError,
        r"Model '.*no-such-model' is neither a local model folder \(with config\.json\) nor a hub model",
        unknown_model,
    ),
    "unknown-method": (
        ValueError,
        r"Unknown method 'mixup'; valid choices: linear-probe, zero-shot, translate-test, lora, input-fusion, x-mixup, "
        r"ensemble, flare, flare-mt",
        lambda c: c.transfer("mixup"),
    ),
    "unknown-fusion": (
        ValueError,
        r"Unknown fusion 'concat'; valid choices: add, mul, add_relu, mul_relu, matmul, matmul_relu, cross_attention",
        lambda c: AdapterConfig(fusion="concat"),
    ),
    "unknown-source-site": (
        ValueError,
        r"Unknown source_site 'middle'; valid choices: linear_input, block_input",
        lambda c: AdapterConfig(source_site="middle"),
    ),
    "unknown-stage1-mode": (
        ValueError,
        r"Unknown stage1_mode 'keep'; valid choices: auto, merge, frozen",
        lambda c: c.transfer(stage1_mode="keep"),
    ),
    "unknown-architecture": (
        ValueError,
        r"Unknown architecture 'rnn'; valid choices: auto, encoder, decoder, seq2seq",
        lambda c: finetune(c.encoder, "nusax", output=c.out, data=NUSAX_DATA, architecture="rnn", train=QUICK),
    ),
    "unknown-trainable": (
        ValueError,
        r"Unknown trainable 'everything'; valid choices: lora, lora\+head, lora\+head\+embeddings",
        lambda c: finetune(c.encoder, "nusax", output=c.out, data=NUSAX_DATA, trainable="everything", train=QUICK),
    ),
    "fusion-modules-match-nothing": (
        ValueError,
        r"fusion_modules entry 'gate_proj' matches none of the LoRA targets: \[.*layer\.0\.attention\.self\.query",
        fusion_modules_match_nothing,
    ),
    "target-modules-absent": (
        ValueError,
        r"target_modules \['q_proj'\] match no linear layer of .*encoder; its linear layers are named: dense, key, "
        r"out_proj, query, value",
        target_modules_absent,
    ),
    "stage1-from-another-base-model": (
        ValueError,
        r"(?s)The stage-1 adapter .*stage1-wider/adapter does not fit .*encoder: .*size mismatch for .*query\.lora_A.*"
        r"torch\.Size\(\[8, 48\]\).*torch\.Size\(\[8, 32\]\)",
        stage1_from_another_base_model,
    ),
    "stage1-not-a-run-directory": (
        FileNotFoundError,
        r"inputs/adapter/adapter_config\.json not found: --stage1 must be a stage-1 run directory",
        stage1_not_a_run_directory,
    ),
    "flare-adapter-without-flare-config": (
        FileNotFoundError,
        r"flare_config\.json not found: .* is not a FLARE adapter directory",
        flare_adapter_without_flare_config,
    ),
    "tokenizer-without-pad-token": (
        ValueError,
        r"The tokenizer of .*encoder-without-pad has no pad token, which encoder batches need",
        tokenizer_without_pad_token,
    ),
    "mt-states-lack-test-ids": (
        ValueError,
        r"The encoder state store .*states/test lacks 3 of 3 features \(first: \['11', '12', '13'\]\)",
        mt_states_lack_test_ids,
    ),
    "mt-states-of-another-reader": (
        ValueError,
        r"The encoder state store .*states/test holds states of the text \{'task': 'nusax', 'architecture': "
        r"'decoder'.* reads, but this run reads text as \{'task': 'nusax', 'architecture': 'encoder'",
        mt_states_of_another_reader,
    ),
    "non-finite-encoder-state": (
        ValueError,
        r"The state of 'b' is not finite in float16",
        non_finite_encoder_state,
    ),
    "source-batch-size-differs": (
        ValueError,
        r"Source batch size 2 \(source shape \(2, 6\)\) differs from target batch size 3",
        source_batch_size_differs,
    ),
    "source-mask-of-another-shape": (
        ValueError,
        r"source_attention_mask \(2, 6\) does not match the source \(3, 6\): it needs the source's \(batch, length\) "
        r"\(3, 6\)",
        source_mask_of_another_shape,
    ),
    "source-embeds-of-wrong-width": (
        ValueError,
        r"source_embeds must be \(batch, length, 10\) as set by mt_source_dim; got shape \(2, 6, 12\)",
        source_embeds_of_wrong_width,
    ),
    "max-length-beyond-positions": (
        ValueError,
        r"max_length=300 exceeds the 159 positions this model can encode; lower --train\.max_length",
        lambda c: finetune(c.encoder, "nusax", output=c.out, data=NUSAX_DATA, train=TrainConfig(max_length=300)),
    ),
    "malformed-recipe-yaml": (
        ValueError,
        r"(?s)recipe\.yaml: not valid YAML: while parsing a flow sequence.*line 3, column 12",
        malformed_recipe_yaml,
    ),
    "malformed-task-spec-yaml": (
        ValueError,
        r"(?s)task\.yaml: not valid YAML: while parsing a flow sequence.*line 3, column 14",
        malformed_task_spec_yaml,
    ),
    "malformed-csv": (ValueError, r"train\.csv line 3: 4 columns, expected 3 \(id, text, label\)", malformed_csv),
    "malformed-jsonl": (ValueError, r"train\.jsonl line 2: malformed JSON", malformed_jsonl),
    "label-outside-label-set": (
        ValueError,
        r"train\.csv line 2: label 5 is outside the label set of 'nusax': ids 0\.\.2 or "
        r"\['negative', 'neutral', 'positive'\]",
        label_outside_label_set,
    ),
    "qa-answer-not-at-its-start": (
        ValueError,
        r"train\.jsonl line 1: answer 'Bob' is not at answer_start 0 of its context \(found 'Ann'\)",
        qa_answer_not_at_its_start,
    ),
    "output-directory-holds-another-run": (
        ValueError,
        r"nusax-en-finetune-seed3-\w+ holds a different run: its config\.json differs from this one in 1 settings "
        r"\(train\.learning_rate: 0\.5 -> 0\.001\)",
        ask_for_stage1_again,
        copy_stage1_with_other_learning_rate,
    ),
    "run-config-not-json": (
        ValueError,
        r"config\.json line 2: not valid JSON .* it is neither resumed nor skipped",
        ask_for_stage1_again,
        copy_stage1_with_broken_config,
    ),
}


@pytest.mark.parametrize("case", FAULTS)
def test_bad_input_raises_a_named_error_and_leaves_no_output(case, context):
    fault = Fault(*FAULTS[case])
    context.out.mkdir()
    if fault.prepare is not None:
        fault.prepare(context)
    before = snapshot(context.out)
    with pytest.raises(fault.error, match=fault.match):
        fault.trigger(context)
    # Nothing new, nothing changed and nothing removed: no partial run, and a foreign run is left as it was.
    assert snapshot(context.out) == before
    assert (fault.prepare is None) == (before == {})


# ----------------------------------------------------------------------------------------------- warnings with counts
GREEDY = GenerationSettings(num_beams=1, max_input_length=48, max_new_tokens=12)
TEXTS = ["good food", "bad service", "open at nine"]


def test_empty_texts_to_translate_warn_with_counts(workspace):
    translator = Translator(workspace / "nllb", GREEDY, progress=False)
    with pytest.warns(TranslationInputWarning, match=r"^2 of 4 texts are empty or blank; they stay empty"):
        translations, report = translator.translate(["good food", "", "  ", "good food"], "en", "id")
    assert translations[1:3] == ["", ""] and translations[0] == translations[3] != ""
    assert (report.empty, report.unique, report.translated) == (2, 1, 1)


def test_texts_over_the_maximum_length_warn_with_the_policy_and_count(workspace):
    texts = ["good food", "The food was delicious and the staff were friendly.", "The store opens at nine."]
    tokenizer = AutoTokenizer.from_pretrained(workspace / "nllb", src_lang="eng_Latn")
    lengths = [len(tokenizer(text)["input_ids"]) for text in texts]  # language tag and </s> included
    limit = lengths[0]
    too_long = sum(length > limit for length in lengths)
    assert too_long == 2
    translator = Translator(workspace / "nllb", GenerationSettings(1, limit, 12), progress=False)
    with pytest.warns(
        TranslationInputWarning,
        match=rf"^2 of 3 texts to translate are longer than max_input_length={limit} tokens; each is cut to its "
        rf"first {limit - 1} tokens \(language tag included\) and </s>",
    ):
        _, report = translator.translate(texts, "en", "id")
    assert report.truncated == too_long


def test_corrupt_cache_entries_are_skipped_with_a_count_and_translated_again(workspace, tmp_path):
    cache = tmp_path / "cache.sqlite"
    translator = Translator(workspace / "nllb", GREEDY, cache=cache, progress=False)
    first, _ = translator.translate(TEXTS, "en", "id")
    with sqlite3.connect(cache) as database:
        database.execute("UPDATE translations SET translation = ? WHERE source = ?", (b"\xff\xfe", TEXTS[0]))
        database.execute("UPDATE translations SET translation = CAST(X'C328' AS TEXT) WHERE source = ?", TEXTS[1:2])
    database.close()
    with pytest.warns(TranslationCacheWarning, match=r"cache\.sqlite: 2 of 3 cached entries for these texts are "):
        again, report = translator.translate(TEXTS, "en", "id")
    assert again == first and (report.cached, report.translated) == (1, 2)
    with sqlite3.connect(cache) as database:
        rows = database.execute("SELECT source, typeof(translation), translation FROM translations").fetchall()
    database.close()
    assert sorted(rows) == sorted((text, "text", translation) for text, translation in zip(TEXTS, first, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repaired cache reads cleanly
        assert translator.translate(TEXTS, "en", "id")[1].cached == 3


def test_unreadable_cache_file_is_set_aside_with_a_warning(workspace, tmp_path):
    cache = tmp_path / "cache.sqlite"
    cache.write_bytes(b"not a database " * 100)
    translator = Translator(workspace / "nllb", GREEDY, cache=cache, progress=False)
    with pytest.warns(
        TranslationCacheWarning,
        match=r"cache\.sqlite is unreadable \(file is not a database\); moved to .*cache\.sqlite\.corrupt, starting",
    ):
        _, report = translator.translate(TEXTS, "en", "id")
    assert (report.cached, report.translated) == (0, 3)
    assert (tmp_path / "cache.sqlite.corrupt").read_bytes() == b"not a database " * 100


def test_nllb_fallback_languages_warn(workspace):
    translator = Translator(workspace / "nllb", GREEDY, progress=False)
    with pytest.warns(FallbackLanguageWarning, match=r"does not cover Toba Batak \(bbc\); using ind_Latn") as caught:
        fallback, _ = translator.translate(TEXTS, "en", "bbc")
    assert len(caught) == 1 and fallback == translator.translate(TEXTS, "en", "id")[0]


# ----------------------------------------------------------------------------------------------- training
def test_diverging_training_stops_before_a_non_finite_checkpoint(workspace, tmp_path):
    diverging = TrainConfig(batch_size=1, max_steps=7, learning_rate=1e38, max_length=48, seed=3, save_steps=1)
    with pytest.raises(
        NonFiniteTrainingError, match=r"\d+ trainable parameters hold NaN or infinite values after step \d+"
    ) as info:
        finetune(str(workspace / "encoder"), "nusax", output=tmp_path, data=NUSAX_DATA, train=diverging)
    step = int(re.search(r"after step (\d+)", str(info.value)).group(1))
    (run_dir,) = tmp_path.iterdir()
    kept = run_dir / "checkpoints" / f"checkpoint-{step - 1}"
    assert f"so no checkpoint is written for it. The newest checkpoint is kept: {kept}." in str(info.value)
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoints", "config.json", "environment.json", "logs"]
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == [kept.name]
    assert all(torch.isfinite(weight).all() for weight in load_file(kept / TRAINABLE_WEIGHTS_NAME).values())


class Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        return {"loss": ((self.linear(x).squeeze(-1) - y) ** 2).mean()}


def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    targets = [float("nan") if i == 1 else float(i) for i in range(8)]  # one broken example
    features = [{"x": torch.tensor([1.0, float(i)]), "y": torch.tensor(y)} for i, y in enumerate(targets)]
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=1,
        max_steps=8,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
    )
    model = Regression()
    trainer = ResumableTrainer(model=model, args=arguments, train_dataset=features, callbacks=[CheckpointSchedule(1)])
    with pytest.raises(
        NonFiniteTrainingError,
        match=r"The training loss is nan at step \d+ \(epoch 0\.\d+\); training stopped before this step's update\.",
    ) as info:
        trainer.train()
    step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert step >= 2  # the broken example is not the first one in this seed's order
    kept = tmp_path / f"checkpoint-{step - 1}"
    assert f"The newest checkpoint is kept: {kept}." in str(info.value)
    assert [path.name for path in tmp_path.iterdir()] == [kept.name]
    # Stopped before the update: the model still holds exactly the checkpointed weights.
    assert torch.equal(load_file(kept / TRAINABLE_WEIGHTS_NAME)["linear.weight"], model.linear.weight.detach())


# ----------------------------------------------------------------------------------------------- atomic writes
def test_interrupted_file_write_keeps_the_previous_version(tmp_path):
    path = tmp_path / "metrics.json"
    write_text_atomic(path, '{"accuracy": 0.5}\n')

    def crash(temporary: str) -> None:
        Path(temporary).write_text('{"accur')
        raise KeyboardInterrupt  # stands in for a crash in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(path, crash)
    assert snapshot(tmp_path) == {"metrics.json": b'{"accuracy": 0.5}\n'}


def test_interrupted_folder_write_keeps_the_previous_folder(tmp_path):
    adapter = tmp_path / "adapter"
    replace_directory_atomically(adapter, lambda folder: (folder / "adapter_model.safetensors").write_bytes(b"old"))

    def crash(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_bytes(b"ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_directory_atomically(adapter, crash)
    assert snapshot(tmp_path) == {"adapter/adapter_model.safetensors": b"old"}
    # A process killed outright leaves its hidden staging folder; the next write of the folder clears it.
    (tmp_path / ".adapter.staging").mkdir()
    (tmp_path / ".adapter.staging" / "adapter_model.safetensors").write_bytes(b"n")
    replace_directory_atomically(adapter, lambda folder: (folder / "adapter_model.safetensors").write_bytes(b"new"))
    assert snapshot(tmp_path) == {"adapter/adapter_model.safetensors": b"new"}
