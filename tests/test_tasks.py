"""Tasks and data: loading every source format, strict pairing, formatting for each view, and collation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, answer_tokens, train_tokenizer
from datasets import Dataset

from flare_xlt.tasks import (
    ANSWER_TOKENS,
    NUSAX,
    TYDIQA,
    XNLI,
    PairedCollator,
    TaskEncoder,
    get_task,
    load_hub_view,
    load_original_view,
    load_record_file,
    pair_views,
    sources,
)

ENCODER_TOKENIZER = train_tokenizer("encoder")
DECODER_TOKENIZER = train_tokenizer("decoder")


# ---------------------------------------------------------------------- original release files
def test_xnli_tsv_views_share_pair_ids():
    english = load_original_view(XNLI, "en", "validation", FIXTURES / "XNLI-1.0")
    spanish = load_original_view(XNLI, "es", "test", FIXTURES / "XNLI-1.0" / "xnli.test.tsv")
    assert [r["id"] for r in english] == ["1", "2", "3"]
    assert [r["id"] for r in spanish] == ["101", "102", "103"]
    assert english[0] == {
        "id": "1",
        "language": "en",
        "premise": 'The cat sleeps on the "warm" mat.',
        "hypothesis": "An animal is resting.",
        "label": 0,
    }
    assert [r["label"] for r in spanish] == [0, 1, 2]
    with pytest.raises(ValueError, match="MultiNLI"):
        load_original_view(XNLI, "en", "train", FIXTURES / "XNLI-1.0")
    with pytest.raises(ValueError, match="valid choices: ar, bg"):
        load_original_view(XNLI, "xx", "test", FIXTURES / "XNLI-1.0")


def test_tydiqa_json_filters_by_id_prefix_and_keeps_offsets():
    swahili = load_original_view(TYDIQA, "sw", "validation", FIXTURES / "tydiqa")
    assert [r["id"] for r in swahili] == ["swahili--1001-0", "swahili--1002-0"]
    second = swahili[1]
    start = second["answers"]["answer_start"][0]
    assert second["context"][start : start + len("milioni 4.4")] == "milioni 4.4"
    english_train = load_original_view(TYDIQA, "en", "train", FIXTURES / "tydiqa")
    assert [r["answers"]["text"] for r in english_train] == [["Zürich"], ["Lake Zürich"]]
    assert TYDIQA.splits["test"] == "validation"


def test_nusax_csv_views():
    english = load_original_view(NUSAX, "en", "validation", FIXTURES / "nusax")
    indonesian = load_original_view(NUSAX, "id", "test", FIXTURES / "nusax")
    assert [r["label"] for r in english] == [2, 0, 1]
    assert english[1]["text"] == "The room's dirty and smelly, there's a \"used\" towel, too."
    assert [r["id"] for r in indonesian] == ["11", "12", "13"]


# ---------------------------------------------------------------------- hub datasets (schema conversion)
def test_hub_loaders_convert_each_schema(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None, revision=None):
        calls.append((name, config, split, revision))
        if name == sources.XNLI_HUB:
            return Dataset.from_dict({"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0]})
        if name == sources.TYDIQA_HUB:
            return Dataset.from_list(
                [
                    {
                        "id": "english-1-0",
                        "title": "t",
                        "context": "Paris is in France.",
                        "question": "Where is Paris?",
                        "answers": {"text": ["France"], "answer_start": [12]},
                    },
                    {
                        "id": "finnish-2-0",
                        "title": "t",
                        "context": "Oulu",
                        "question": "?",
                        "answers": {"text": ["Oulu"], "answer_start": [0]},
                    },
                ]
            )
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found NusaX-senti.py")
        return Dataset.from_dict({"id": ["7"], "text": ["Enak sekali"], "label": [2]})

    monkeypatch.setattr(sources, "load_dataset", fake_load_dataset)
    xnli = load_hub_view(XNLI, "de", "test")
    assert xnli == [
        {"id": "test-0", "language": "de", "premise": "p0", "hypothesis": "h0", "label": 2},
        {"id": "test-1", "language": "de", "premise": "p1", "hypothesis": "h1", "label": 0},
    ]
    tydiqa = load_hub_view(TYDIQA, "en", "validation")
    assert [r["id"] for r in tydiqa] == ["english-1-0"]
    nusax = load_hub_view(NUSAX, "id", "train")
    assert nusax == [{"id": "7", "language": "id", "text": "Enak sekali", "label": 2}]
    assert calls[-2:] == [
        (sources.NUSAX_HUB, "ind", "train", None),
        (sources.NUSAX_HUB, "ind", "train", "refs/convert/parquet"),
    ]


# ---------------------------------------------------------------------- record files (our translations)
def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_record_files_and_their_errors(tmp_path):
    good = write_jsonl(
        tmp_path / "train_en-es.jsonl",
        [
            {"id": "1", "premise": "El gato duerme.", "hypothesis": "Un animal descansa.", "label": "entailment"},
            {"id": "2", "premise": "Compró manzanas.", "hypothesis": "Compró fruta.", "label": 1},
        ],
    )
    records = load_record_file(XNLI, good, language="es")
    assert [(r["id"], r["label"], r["language"]) for r in records] == [("1", 0, "es"), ("2", 1, "es")]

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "1", "premise": "a", "hypothesis": "b", "label": 0}\n{"id": "2", "premise": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl line 2: malformed JSON"):
        load_record_file(XNLI, broken, language="es")

    bad_label = write_jsonl(tmp_path / "labels.jsonl", [{"id": "1", "premise": "a", "hypothesis": "b", "label": 3}])
    with pytest.raises(ValueError, match=r"line 1: label 3 is outside the label set of 'xnli': ids 0..2"):
        load_record_file(XNLI, bad_label, language="es")

    ragged = tmp_path / "ragged.csv"
    ragged.write_text("id,text,label\n1,good food,positive\n2,too,many,columns,negative\n")
    with pytest.raises(ValueError, match=r"ragged.csv line 3: .*3 \(id, text, label\)"):
        load_record_file(NUSAX, ragged, language="en")

    missing = write_jsonl(tmp_path / "missing.jsonl", [{"id": "1", "premise": "a", "label": 0}])
    with pytest.raises(ValueError, match=r"missing fields \['hypothesis'\]"):
        load_record_file(XNLI, missing, language="es")

    shifted = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"id": "q", "question": "?", "context": "abc [def]", "answers": {"text": ["def"], "answer_start": [3]}}],
    )
    with pytest.raises(ValueError, match=r"answer 'def' is not at answer_start 3 .*found ' \[d'"):
        load_record_file(TYDIQA, shifted, language="sw")


# ---------------------------------------------------------------------- pairing
def test_pairing_is_strict():
    english = load_original_view(XNLI, "en", "validation", FIXTURES / "XNLI-1.0")
    spanish = load_original_view(XNLI, "es", "validation", FIXTURES / "XNLI-1.0")
    pairs = pair_views(XNLI, spanish, english)
    assert pairs[0]["premise"].startswith("El gato") and pairs[0]["source_premise"].startswith("The cat")
    assert [p["label"] for p in pairs] == [0, 1, 2]

    with pytest.raises(
        ValueError, match=r"3 target and 2 source examples; 1 ids only in the target view \(first: \['3'\]\)"
    ):
        pair_views(XNLI, spanish, english[:2])
    with pytest.raises(ValueError, match=r"1 ids occur more than once in the source view \(first: \['1'\]\)"):
        pair_views(XNLI, spanish, [*english, english[0]])
    relabelled = [{**english[0], "label": 2}, *english[1:]]
    with pytest.raises(ValueError, match=r"1 pairs carry different labels .*\['1'\]"):
        pair_views(XNLI, spanish, relabelled)


def xnli_pairs():
    english = load_original_view(XNLI, "en", "validation", FIXTURES / "XNLI-1.0")
    german = load_original_view(XNLI, "de", "validation", FIXTURES / "XNLI-1.0")
    return pair_views(XNLI, german, english)


# ---------------------------------------------------------------------- formatting
def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_encoder_single_segment_and_sentence_pair():
    pairs = xnli_pairs()
    features, report, _ = TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder").encode(pairs)
    assert report.summary() == "3 examples -> 3 features; 0 truncated to max_length"
    first = features[0]
    assert first["labels"] == 0
    assert decode(ENCODER_TOKENIZER, first["input_ids"]) == ENCODER_TOKENIZER.decode(
        ENCODER_TOKENIZER("Premise: Die Katze schläft auf der „warmen“ Matte. Hypothesis: Ein Tier ruht sich aus.")[
            "input_ids"
        ],
        skip_special_tokens=True,
    )
    assert decode(ENCODER_TOKENIZER, first["source_input_ids"]).startswith("Premise : The cat")

    paired, _, _ = TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder", sentence_pair=True).encode(pairs)
    sep = ENCODER_TOKENIZER.sep_token_id
    assert paired[0]["input_ids"].count(sep) == 2 and paired[0]["source_input_ids"].count(sep) == 2
    assert "Premise" not in decode(ENCODER_TOKENIZER, paired[0]["input_ids"])


def test_encoder_truncation_is_counted():
    features, report, _ = TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder", max_length=8).encode(xnli_pairs())
    assert report.truncated == 6  # every target and source text is longer than 8 tokens
    assert all(len(f["input_ids"]) == 8 and f["input_ids"][-1] == ENCODER_TOKENIZER.sep_token_id for f in features)


def test_decoder_training_labels_only_the_answer():
    pairs = xnli_pairs()
    features, _, _ = TaskEncoder(XNLI, DECODER_TOKENIZER, "decoder").encode(pairs)
    feature = features[2]  # contradiction
    answer = DECODER_TOKENIZER("contradiction", add_special_tokens=False)["input_ids"] + [
        DECODER_TOKENIZER.eos_token_id
    ]
    prompt = DECODER_TOKENIZER(
        XNLI.decoder_template.format(premise=pairs[2]["premise"], hypothesis=pairs[2]["hypothesis"])
    )["input_ids"]
    assert feature["input_ids"] == prompt + answer
    assert feature["labels"] == [-100] * len(prompt) + answer
    source_prompt = DECODER_TOKENIZER(
        XNLI.decoder_template.format(premise=pairs[2]["source_premise"], hypothesis=pairs[2]["source_hypothesis"])
    )["input_ids"]
    assert feature["source_input_ids"] == source_prompt  # the English prompt, without the answer

    generation, _, _ = TaskEncoder(XNLI, DECODER_TOKENIZER, "decoder", for_generation=True).encode(pairs)
    assert generation[2]["input_ids"] == prompt and "labels" not in generation[2]


def test_decoder_truncation_keeps_bos_and_the_prompt_end():
    pairs = xnli_pairs()
    features, report, _ = TaskEncoder(XNLI, DECODER_TOKENIZER, "decoder", max_length=20).encode(pairs)
    assert report.truncated == 6  # every target and every English prompt
    for feature in features:
        # both prompts leave the answer room (8 tokens for classification) free
        prompt_length = len(feature["input_ids"]) - len(answer_tokens(feature))
        assert prompt_length == 12 and len(feature["source_input_ids"]) == 12
        assert feature["source_input_ids"][0] == DECODER_TOKENIZER.bos_token_id
        assert feature["input_ids"][0] == DECODER_TOKENIZER.bos_token_id
        assert decode(
            DECODER_TOKENIZER, feature["input_ids"][: len(feature["input_ids"]) - len(answer_tokens(feature))]
        ).endswith("Label :")


def test_views_for_translate_test_and_input_fusion():
    pairs = xnli_pairs()
    translate_test, _, _ = TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder", view="source").encode(pairs)
    assert decode(ENCODER_TOKENIZER, translate_test[0]["input_ids"]).startswith("Premise : The cat")
    assert "source_input_ids" not in translate_test[0]
    fused, _, _ = TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder", view="input_fusion").encode(pairs)
    text = decode(ENCODER_TOKENIZER, fused[0]["input_ids"])
    assert text.startswith("Premise : The cat") and "Premise : Die Katze" in text
    cut, report, _ = TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder", view="input_fusion", max_length=12).encode(pairs)
    assert report.truncated == 3 and ENCODER_TOKENIZER.truncation_side == "right"
    assert decode(ENCODER_TOKENIZER, cut[0]["input_ids"]).endswith("Ein Tier ruht sich aus.")  # English cut first
    assert cut[0]["input_ids"][0] == ENCODER_TOKENIZER.cls_token_id
    prompt, _, _ = TaskEncoder(XNLI, DECODER_TOKENIZER, "decoder", view="input_fusion", for_generation=True).encode(
        pairs
    )
    assert decode(DECODER_TOKENIZER, prompt[0]["input_ids"]).endswith("Label :")


def test_nusax_and_tydiqa_decoder_prompts():
    nusax = pair_views(
        NUSAX,
        load_original_view(NUSAX, "id", "train", FIXTURES / "nusax"),
        load_original_view(NUSAX, "en", "train", FIXTURES / "nusax"),
    )
    features, _, _ = TaskEncoder(NUSAX, DECODER_TOKENIZER, "decoder").encode(nusax)
    answer = answer_tokens(features[0])
    assert decode(DECODER_TOKENIZER, answer) == "positive"

    swahili = load_original_view(TYDIQA, "sw", "validation", FIXTURES / "tydiqa")
    english = [
        {**r, "id": s["id"]}
        for r, s in zip(load_original_view(TYDIQA, "en", "validation", FIXTURES / "tydiqa") * 2, swahili, strict=False)
    ]
    qa_pairs = pair_views(TYDIQA, swahili, english)
    qa, _, _ = TaskEncoder(TYDIQA, DECODER_TOKENIZER, "decoder").encode(qa_pairs)
    answer = answer_tokens(qa[1])
    assert decode(DECODER_TOKENIZER, answer) == "milioni 4. 4"  # WordPiece decoding spaces out punctuation


def test_qa_windows_pair_with_source_windows():
    context = " ".join(["Nairobi ni mji mkuu wa Kenya."] * 12) + " Jibu ni Mombasa."
    answer = {"text": ["Mombasa"], "answer_start": [context.index("Mombasa")]}
    pair = {
        "id": "q1",
        "language": "sw",
        "question": "Jibu ni nini?",
        "context": context,
        "answers": answer,
        "source_question": "What is the answer?",
        "source_context": "Nairobi is the capital of Kenya.",
        "source_answers": None,
    }
    features, report, windows = TaskEncoder(TYDIQA, ENCODER_TOKENIZER, "encoder", max_length=48, stride=16).encode(
        [pair]
    )
    assert report.features == len(windows.input_ids) > 2
    last = features[-1]
    span = last["input_ids"][last["start_positions"] : last["end_positions"] + 1]
    assert decode(ENCODER_TOKENIZER, span) == "Mombasa"
    assert all(f["start_positions"] == 0 for f in features[:-1])
    source = ENCODER_TOKENIZER("What is the answer?", "Nairobi is the capital of Kenya.")["input_ids"]
    assert all(f["source_input_ids"] == source for f in features)  # the short English side has one window


# ---------------------------------------------------------------------- collation
def test_collator_pads_source_and_target_to_one_length():
    pairs = xnli_pairs()
    features, _, _ = TaskEncoder(XNLI, DECODER_TOKENIZER, "decoder").encode(pairs)
    batch = PairedCollator.for_tokenizer(DECODER_TOKENIZER)(features)
    length = max(max(len(f["input_ids"]), len(f["source_input_ids"])) for f in features)
    for key in ("input_ids", "attention_mask", "labels", "source_input_ids", "source_attention_mask"):
        assert batch[key].shape == (3, length)
    row = batch["input_ids"][0]
    pad = length - len(features[0]["input_ids"])
    assert row[:pad].eq(DECODER_TOKENIZER.pad_token_id).all() and batch["attention_mask"][0, :pad].eq(0).all()
    assert batch["labels"][0, :pad].eq(-100).all()
    assert row[pad:].tolist() == features[0]["input_ids"]

    encoder_features, _, _ = TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder").encode(pairs)
    encoder_batch = PairedCollator.for_tokenizer(ENCODER_TOKENIZER, pad_to_multiple_of=8)(encoder_features)
    assert encoder_batch["input_ids"].shape[1] % 8 == 0
    assert encoder_batch["labels"].tolist() == [0, 1, 2]
    assert (
        encoder_batch["input_ids"][0, : len(encoder_features[0]["input_ids"])].tolist()
        == encoder_features[0]["input_ids"]
    )
    assert encoder_batch["source_attention_mask"].dtype == torch.long


def test_collator_needs_a_pad_token():
    tokenizer = train_tokenizer("decoder")
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        PairedCollator.for_tokenizer(tokenizer)


def test_unknown_task_lists_choices():
    with pytest.raises(ValueError, match="valid choices: xnli, tydiqa, nusax"):
        get_task("mnli")


# ---------------------------------------------------------------------- every task, end to end
TRANSLATIONS = FIXTURES / "translations"
END_TO_END = {
    # task: (target view, English view) as FLARE uses them: translate-train pairs the original English with its
    # machine translation; translate-test pairs the original target test set with its translation into English.
    "xnli": (
        lambda: load_record_file(XNLI, TRANSLATIONS / "xnli_validation_en-es.jsonl"),
        lambda: load_original_view(XNLI, "en", "validation", FIXTURES / "XNLI-1.0"),
    ),
    "tydiqa": (
        lambda: load_original_view(TYDIQA, "sw", "validation", FIXTURES / "tydiqa"),
        lambda: load_record_file(TYDIQA, TRANSLATIONS / "tydiqa_validation_sw-en.jsonl"),
    ),
    "nusax": (
        lambda: load_record_file(NUSAX, TRANSLATIONS / "nusax_test_en-jav.jsonl"),
        lambda: load_original_view(NUSAX, "en", "test", FIXTURES / "nusax"),
    ),
}


@pytest.mark.parametrize("name", list(END_TO_END))
@pytest.mark.parametrize("architecture", ["encoder", "decoder"])
def test_every_task_pairs_formats_and_collates(name, architecture):
    task = get_task(name)
    target_view, english_view = END_TO_END[name]
    pairs = pair_views(task, target_view(), english_view())
    assert {pair["language"] for pair in pairs} == {{"xnli": "es", "tydiqa": "sw", "nusax": "jav"}[name]}
    tokenizer = ENCODER_TOKENIZER if architecture == "encoder" else DECODER_TOKENIZER
    features, report, windows = TaskEncoder(task, tokenizer, architecture, max_length=64).encode(pairs)
    assert report.examples == len(pairs) and report.features == len(features) >= len(pairs)
    batch = PairedCollator.for_tokenizer(tokenizer)(features)
    length = batch["input_ids"].shape[1]
    assert batch["source_input_ids"].shape == (len(features), length)
    real = batch["attention_mask"].bool()
    # Encoders pad on the right (real tokens first), decoders on the left (real tokens last).
    edge = real[:, 0] if architecture == "encoder" else real[:, -1]
    assert edge.all()
    if architecture == "decoder":
        assert batch["labels"].shape == (len(features), length)
        answers = [tokenizer.decode(answer_tokens(feature), skip_special_tokens=True) for feature in features]
        if task.kind == "classification":
            assert answers == [task.answer_words[pair["label"]] for pair in pairs]
        else:
            assert answers == ["Nairobi", "milioni 4. 4"]  # WordPiece decoding spaces out the period
    elif task.kind == "extractive_qa":
        for feature, example in zip(features, windows.example_index, strict=True):
            span = feature["input_ids"][feature["start_positions"] : feature["end_positions"] + 1]
            assert tokenizer.decode(span) == tokenizer.decode(
                tokenizer(pairs[example]["answers"]["text"][0], add_special_tokens=False)["input_ids"]
            )
    else:
        assert batch["labels"].tolist() == [pair["label"] for pair in pairs]


def test_loader_consistency_errors(tmp_path):
    with pytest.raises(ValueError, match=r"NusaX ships the splits \['train', 'validation', 'test'\]; got 'dev'"):
        load_original_view(NUSAX, "en", "dev", FIXTURES / "nusax")
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"id": "1", "language": "de", "text": "gut", "label": 2}])
    with pytest.raises(ValueError, match=r"language 'de' differs from the expected 'jav'"):
        load_record_file(NUSAX, mixed, language="jav")
    with pytest.raises(ValueError, match=r"has no language 'de'; valid choices: ace"):
        load_record_file(NUSAX, mixed)
    unlabelled = [
        {k: v for k, v in r.items() if k != "label"}
        for r in load_original_view(NUSAX, "en", "test", FIXTURES / "nusax")
    ]
    with pytest.raises(ValueError, match=r"3 pairs have a label in neither view \(first: \['11', '12', '13'\]\)"):
        pair_views(NUSAX, unlabelled, unlabelled)


def test_seq2seq_features_put_the_answer_in_the_labels():
    pairs = xnli_pairs()
    features, _, _ = TaskEncoder(XNLI, DECODER_TOKENIZER, "seq2seq").encode(pairs)
    prompt = DECODER_TOKENIZER(
        XNLI.decoder_template.format(premise=pairs[1]["premise"], hypothesis=pairs[1]["hypothesis"])
    )["input_ids"]
    answer = DECODER_TOKENIZER("neutral", add_special_tokens=False)["input_ids"] + [DECODER_TOKENIZER.eos_token_id]
    assert features[1]["input_ids"] == prompt and features[1]["labels"] == answer
    right = train_tokenizer("decoder")
    right.padding_side = "right"
    batch = PairedCollator.for_tokenizer(right)(features)
    longest_answer = max(len(feature["labels"]) for feature in features)
    assert batch["labels"].shape == (3, longest_answer)  # the decoder's own length, not the inputs'
    assert batch["labels"][1].tolist() == answer + [-100] * (longest_answer - len(answer))
    assert batch["input_ids"].shape == batch["source_input_ids"].shape


@pytest.mark.parametrize("pairing", ["start", "end", "proportional"])
@pytest.mark.parametrize("cut", [False, True], ids=["fits", "cut"])
@pytest.mark.parametrize("name", list(END_TO_END))
def test_decoder_training_and_generation_read_the_same_answer_position(name, cut, pairing):
    """The logits that predict the answer are the same in a training forward (prompt + answer, labelled) and in
    the generation forward (prompt only), cut or not: both prompts and their English pairing are the same."""
    from conftest import DECODER_SIZES, randomize_lora
    from transformers import LlamaConfig, LlamaForCausalLM

    from flare_xlt import FlareConfig, get_flare_model

    task = get_task(name)
    max_length = ANSWER_TOKENS[task.kind] + 10 if cut else 256  # "cut": a 10-token prompt room
    target_view, english_view = END_TO_END[name]
    pairs = pair_views(task, target_view(), english_view())
    tokenizer = DECODER_TOKENIZER
    torch.manual_seed(0)
    sizes = {**DECODER_SIZES, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    flare = get_flare_model(LlamaForCausalLM(LlamaConfig(**sizes)), FlareConfig(pairing=pairing)).eval()
    randomize_lora(flare)
    training, training_report, _ = TaskEncoder(task, tokenizer, "decoder", max_length=max_length).encode(pairs)
    generation, _, _ = TaskEncoder(task, tokenizer, "decoder", max_length=max_length, for_generation=True).encode(pairs)
    assert (training_report.truncated > 0) == cut
    for train_feature, prompt_feature in zip(training, generation, strict=True):
        answer_position = len(prompt_feature["input_ids"]) - 1
        assert train_feature["labels"][answer_position] == -100 and train_feature["labels"][answer_position + 1] != -100
        assert len(train_feature["input_ids"]) <= max_length
        with torch.no_grad():
            trained = flare(**{k: torch.tensor([v]) for k, v in train_feature.items()}).logits
            prompted = flare(**{k: torch.tensor([v]) for k, v in prompt_feature.items()}).logits
        torch.testing.assert_close(trained[0, answer_position], prompted[0, -1], atol=1e-5, rtol=0)


def test_flare_mt_state_texts_follow_each_window_and_prompt():
    """FLARE-MT states cover what the model reads: each QA window its own slice of the context, decoders their
    prompt; keys follow the features of encode() one to one."""
    context = " ".join(f"Mji wa {number} ni mkubwa." for number in range(30)) + " Jibu ni Mombasa."
    record = {"id": "q1", "language": "sw", "question": "Jibu ni nini?", "context": context}
    encoder = TaskEncoder(TYDIQA, ENCODER_TOKENIZER, "encoder", view="target", max_length=48, stride=16)
    features, _, windows = encoder.encode([{**record, "answers": None}])
    keyed = encoder.state_texts([record])
    assert [key for key, _ in keyed] == [f"q1#{window}" for window in windows.window_index]
    assert len(keyed) == len(features) > 2
    starts = []
    for (_, text), offsets in zip(keyed, windows.offset_mapping, strict=True):
        spans = [span for span in offsets if span is not None]
        first, last = spans[0][0], spans[-1][1]
        assert text == f"Jibu ni nini? {context[first:last]}"
        starts.append(first)
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] > 0  # later windows start later
    assert keyed[-1][1].endswith("Jibu ni Mombasa.") and not keyed[0][1].endswith("Mombasa.")

    pairs = xnli_pairs()
    decoder = TaskEncoder(XNLI, DECODER_TOKENIZER, "decoder")
    prompts = [XNLI.decoder_template.format(premise=p["premise"], hypothesis=p["hypothesis"]) for p in pairs]
    assert decoder.state_texts(pairs) == [(p["id"], prompt) for p, prompt in zip(pairs, prompts, strict=True)]
    assert decoder.state_signature() != TaskEncoder(XNLI, ENCODER_TOKENIZER, "encoder").state_signature()
