"""A task defined only by a YAML file goes through loading, pairing, formatting and metrics."""

from __future__ import annotations

import pytest
from conftest import answer_tokens, train_tokenizer

from flare_xlt.metrics import parse_verbalized, task_scores
from flare_xlt.tasks import (
    PairedCollator,
    TaskEncoder,
    get_task,
    load_record_file,
    load_task_splits,
    pair_views,
)

SPEC = """\
name: product-reviews
kind: classification
text_fields: [title, body]
label_names: [bad, good]
verbalizers: [negative, positive]
languages: [en, de]
metric: macro_f1
encoder_template: "Title: {title} Review: {body}"
decoder_template: "Title: {title}\\nReview: {body}\\nSentiment: "
"""


@pytest.fixture
def custom_task(tmp_path):
    (tmp_path / "reviews.yaml").write_text(SPEC)
    (tmp_path / "en.csv").write_text(
        "id,title,body,label\n1,Great,Works well,good\n2,Broken,Stopped after a day,bad\n3,Fine,Does the job,good\n"
    )
    (tmp_path / "de.jsonl").write_text(
        '{"id": "1", "title": "Toll", "body": "Funktioniert gut", "label": 1}\n'
        '{"id": "2", "title": "Kaputt", "body": "Nach einem Tag defekt", "label": 0}\n'
        '{"id": "3", "title": "Gut", "body": "Erfüllt den Zweck", "label": "good"}\n'
    )
    return get_task(tmp_path / "reviews.yaml"), tmp_path


def test_custom_yaml_task_runs_through_formatting_and_metrics(custom_task):
    task, folder = custom_task
    assert (
        task.input_fusion_encoder_template
        == "Title: {source_title} Review: {source_body} Title: {title} Review: {body}"
    )
    pairs = pair_views(
        task, load_record_file(task, folder / "de.jsonl", "de"), load_record_file(task, folder / "en.csv", "en")
    )
    assert [pair["label"] for pair in pairs] == [1, 0, 1]

    tokenizer = train_tokenizer("decoder")
    features, report, _ = TaskEncoder(task, tokenizer, "decoder").encode(pairs)
    assert report.truncated == 0
    answer = answer_tokens(features[0])
    assert tokenizer.decode(answer[:-1]) == "positive" and answer[-1] == tokenizer.eos_token_id
    batch = PairedCollator.for_tokenizer(tokenizer)(features)
    assert batch["input_ids"].shape == batch["source_input_ids"].shape

    encoder_features, _, _ = TaskEncoder(task, train_tokenizer("encoder"), "encoder").encode(pairs)
    assert [feature["labels"] for feature in encoder_features] == [1, 0, 1]

    generations = ["positive", "Negative.\nmore text", "great!"]
    predictions = [parse_verbalized(text, task.answer_words) for text in generations]
    assert predictions == [1, 0, None]
    scores = task_scores(task, ["1", "2", "3"], ["de"] * 3, predictions, [1, 0, 1])
    # gold [good, bad, good], predicted [good, bad, none]: bad F1 = 1, good P = 1/1, R = 1/2 -> F1 = 2/3
    assert scores["de"]["macro_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["de"]["accuracy"] == pytest.approx(2 / 3)
    assert scores["average"]["unparseable"] == 1


def test_custom_task_splits_load_from_a_record_folder(custom_task):
    task, folder = custom_task
    (folder / "data" / "en").mkdir(parents=True)
    (folder / "data" / "de").mkdir()
    (folder / "en.csv").rename(folder / "data" / "en" / "test.csv")
    (folder / "de.jsonl").rename(folder / "data" / "de" / "test.jsonl")
    splits = load_task_splits(task, "de", ["test"], str(folder / "data"))
    assert [(record["id"], record["body"], record["label"]) for record in splits["test"]] == [
        ("1", "Funktioniert gut", 1),
        ("2", "Nach einem Tag defekt", 0),
        ("3", "Erfüllt den Zweck", 1),
    ]
    assert load_task_splits(task, "en", ["test"], str(folder / "data"))["test"][1]["title"] == "Broken"

    with pytest.raises(FileNotFoundError, match=r"none of .*de/train.jsonl"):
        load_task_splits(task, "de", ["train"], str(folder / "data"))
    (folder / "data" / "de" / "test.csv").write_text("id,title,body,label\n1,a,b,good\n")
    with pytest.raises(FileNotFoundError, match="more than one of"):
        load_task_splits(task, "de", ["test"], str(folder / "data"))


def test_custom_spec_errors_name_the_field(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "name: x\nkind: regression\ntext_fields: [text]\nlanguages: [en]\nmetric: accuracy\n"
    )
    with pytest.raises(ValueError, match="unknown kind 'regression'; valid choices: classification, extractive_qa"):
        get_task(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text(
        "name: x\nkind: classification\ntext_fields: [text]\nlabel_names: [a, b]\n"
        "languages: [en]\nmetric: accuracy\nencoder_templat: '{text}'\n"
    )
    with pytest.raises(ValueError, match=r"unknown task fields \['encoder_templat'\]"):
        get_task(tmp_path / "typo.yaml")
    (tmp_path / "field.yaml").write_text(
        "name: x\nkind: classification\ntext_fields: [text]\nlabel_names: [a, b]\n"
        "languages: [en]\nmetric: accuracy\nencoder_template: '{body}'\n"
    )
    with pytest.raises(ValueError, match=r"encoder_template '\{body\}' uses a field that is not one of \['text'\]"):
        get_task(tmp_path / "field.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        get_task(tmp_path / "broken.yaml")


def test_qa_task_scores_by_language():
    from flare_xlt.tasks import TYDIQA

    scores = task_scores(
        TYDIQA,
        ["a", "b", "c"],
        ["sw", "sw", "fi"],
        ["Nairobi", "milioni 4", "Helsinki."],
        [["Nairobi"], ["milioni 4.4"], ["Helsinki"]],
    )
    # sw: EM (1 + 0)/2; F1 (1 + F1("milioni 4", "milioni 44")): tokens [milioni, 4] vs [milioni, 44] -> 1/2
    assert scores["sw"]["exact_match"] == pytest.approx(0.5)
    assert scores["sw"]["f1"] == pytest.approx((1 + 0.5) / 2)
    assert scores["fi"]["exact_match"] == 1.0  # the trailing period is normalised away
    assert scores["average"]["exact_match"] == pytest.approx((0.5 + 1.0) / 2)


def test_spec_consistency_checks(tmp_path):
    base = "name: x\nlanguages: [en]\n"
    (tmp_path / "metric.yaml").write_text(
        base + "kind: classification\ntext_fields: [text]\nlabel_names: [a, b]\nmetric: squad\n"
    )
    with pytest.raises(
        ValueError, match="metric 'squad' does not fit kind 'classification'; valid choices: accuracy, macro_f1"
    ):
        get_task(tmp_path / "metric.yaml")
    (tmp_path / "qa.yaml").write_text(base + "kind: extractive_qa\ntext_fields: [query, passage]\nmetric: squad\n")
    with pytest.raises(ValueError, match=r"extractive_qa needs text_fields \[question, context\]"):
        get_task(tmp_path / "qa.yaml")
    (tmp_path / "qa_ok.yaml").write_text(
        base + "kind: extractive_qa\ntext_fields: [question, context]\nmetric: squad\n"
    )
    # Encoder QA puts the input-fusion text in the first segment, before the target context: no {context} there.
    assert (
        get_task(tmp_path / "qa_ok.yaml").input_fusion_encoder_template
        == "{source_question} {source_context} {question}"
    )
