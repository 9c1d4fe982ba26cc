"""Task metrics against values worked out by hand."""

from __future__ import annotations

import pytest

from flare_xlt.metrics import (
    accuracy,
    classification_scores,
    exact_match,
    extract_generated_answer,
    f1,
    macro_f1,
    normalize_answer,
    parse_verbalized,
    scores_by_language,
    squad_scores,
)

NLI = ["entailment", "neutral", "contradiction"]


def test_classification_counts_an_unparseable_prediction_wrong_without_adding_a_class():
    references = [0, 0, 1, 1, 2, 2]
    predictions = [0, 1, 1, 1, None, 2]
    # Correct at rows 0, 2, 3, 5.
    assert accuracy(predictions, references) == pytest.approx(4 / 6)
    # class 0: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
    # class 1: TP 2, FP 1 (row 1), FN 0 -> P 2/3, R 1, F1 2·(2/3)/(5/3) = 4/5
    # class 2: TP 1, FP 0, FN 1 (row 4, None) -> F1 2/3; None is no fourth class, so it adds no term.
    expected_macro = (2 / 3 + 4 / 5 + 2 / 3) / 3  # = 32/45
    assert macro_f1(predictions, references, num_labels=3) == pytest.approx(expected_macro)
    assert classification_scores(predictions, references, num_labels=3) == {
        "accuracy": pytest.approx(4 / 6),
        "macro_f1": pytest.approx(expected_macro),
        "unparseable": 1,
        "count": 6,
    }


def test_macro_f1_averages_over_every_label_even_one_never_seen():
    # Same rows, but label 3 occurs neither in references nor predictions: it contributes F1 0 to the mean.
    predictions, references = [0, 1, 1, 1, None, 2], [0, 0, 1, 1, 2, 2]
    assert macro_f1(predictions, references, num_labels=4) == pytest.approx((2 / 3 + 4 / 5 + 2 / 3 + 0) / 4)


def test_classification_rejects_mismatched_or_out_of_range_inputs():
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="No references"):
        accuracy([], [])
    with pytest.raises(ValueError, match=r"\[3\] lie outside range\(3\)"):
        macro_f1([0, 1], [0, 3], num_labels=3)


def test_normalize_answer_is_squad_v1_1():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("an apple, a pear") == "apple pear"
    # Articles are removed as whole words only.
    assert normalize_answer("Theatre and Anna") == "theatre and anna"
    # lower() handles non-ASCII letters, and "." is ASCII punctuation.
    assert normalize_answer("Ärzte.") == "ärzte"
    assert exact_match("Ärzte.", ["ärzte"]) == 1.0
    # "¿" is not in string.punctuation, so the official normalisation keeps it; "?" goes.
    assert normalize_answer("¿Qué?") == "¿qué"
    assert exact_match("¿Qué?", ["qué"]) == 0.0


def test_exact_match_takes_the_best_gold_answer():
    assert exact_match("the Eiffel Tower", ["Tour Eiffel", "Eiffel tower."]) == 1.0
    assert exact_match("Eiffel", ["Tour Eiffel", "Eiffel tower"]) == 0.0


def test_token_f1_partial_overlap_and_best_gold_answer():
    # [big, red, dog] vs [red, dog, barks]: 2 shared, P = 2/3, R = 2/3, F1 = 2·(2/3)·(2/3)/(4/3) = 2/3
    assert f1("the big red dog", ["red dog barks"]) == pytest.approx(2 / 3)
    # vs [big, dog]: 2 shared, P = 2/3, R = 2/2, F1 = 2·(2/3)·1/(5/3) = 4/5; vs [cat]: 0. Max is 4/5.
    assert f1("the big red dog", ["cat", "red dog barks", "big dog"]) == pytest.approx(4 / 5)
    # Repeated tokens count once per occurrence in both: min(3, 1) = 1 shared, P = 1/3, R = 1, F1 = (2/3)/(4/3) = 1/2
    assert f1("dog dog dog", ["dog"]) == pytest.approx(1 / 2)


def test_empty_answers_follow_the_official_formulas():
    # With no tokens on either side the official Counter logic finds num_same = 0 and returns F1 0,
    # while exact match compares the two empty strings and gives 1.
    assert f1("", [""]) == 0.0
    assert exact_match("", [""]) == 1.0
    # "the" and "a" both normalise to the empty string.
    assert f1("the", ["a"]) == 0.0
    assert exact_match("the", ["a"]) == 1.0


def test_gold_answers_must_be_a_non_empty_list():
    with pytest.raises(TypeError, match="not one string"):
        f1("cat", "cat")
    with pytest.raises(ValueError, match="No gold answers"):
        exact_match("cat", [])


def test_squad_scores_average_over_ids():
    predictions = {"q1": "The cat", "q2": "big red dog", "q3": "nothing"}
    references = {"q1": ["cat"], "q2": ["red dog barks", "big dog"], "q3": ["something"]}
    # EM: 1, 0, 0. F1: 1, max(2/3, 4/5) = 4/5, 0.
    assert squad_scores(predictions, references) == {
        "exact_match": pytest.approx(1 / 3),
        "f1": pytest.approx((1 + 4 / 5 + 0) / 3),
        "count": 3,
    }


def test_squad_scores_refuse_missing_or_extra_ids():
    references = {"q1": ["cat"], "q2": ["dog"], "q3": ["cow"]}
    with pytest.raises(ValueError, match=r"1 of 3 references have no prediction \(first: \['q3'\]\)"):
        squad_scores({"q1": "cat", "q2": "dog"}, references)
    with pytest.raises(ValueError, match=r"1 of 4 predictions have no reference \(first: \['q4'\]\)"):
        squad_scores({"q1": "cat", "q2": "dog", "q3": "cow", "q4": "hen"}, references)
    with pytest.raises(ValueError, match="No references"):
        squad_scores({}, {})


def test_extract_generated_answer_keeps_the_first_line():
    assert extract_generated_answer("  Paris \nQuestion: where is Rome?") == "Paris"
    assert extract_generated_answer("Paris") == "Paris"


def test_parse_verbalized():
    assert parse_verbalized("Entailment.\nsome more", NLI) == 0
    assert parse_verbalized("  NEUTRAL ", NLI) == 1
    assert parse_verbalized("contradiction!", NLI) == 2
    assert parse_verbalized("«neutral»", NLI) == 1
    # Verbalizers are compared case-insensitively too.
    assert parse_verbalized("yes", ["Yes", "No"]) == 0


@pytest.mark.parametrize(
    "generation",
    ["entail", "neutral because the premise says so", "", "\nentailment", "not entailment"],
)
def test_parse_verbalized_never_guesses(generation):
    # A prefix, a longer answer, an empty first line or another phrase is unparseable.
    assert parse_verbalized(generation, NLI) is None


def test_parse_verbalized_rejects_ambiguous_verbalizers():
    with pytest.raises(ValueError, match="not distinct"):
        parse_verbalized("yes", ["yes", "Yes."])


def test_scores_by_language_averages_languages_equally():
    languages = ["sw", "de", "en", "sw", "de", "en", "sw", "de"]
    references = [0, 0, 0, 1, 0, 1, 1, 1]
    predictions = [0, 0, 0, None, 1, 1, 1, 1]

    def score(rows: list[int]) -> dict:
        return classification_scores([predictions[i] for i in rows], [references[i] for i in rows], num_labels=2)

    result = scores_by_language(languages, score)
    assert list(result) == ["de", "en", "sw", "average"]
    # de: references [0, 0, 1], predictions [0, 1, 1]: accuracy 2/3;
    #   class 0: TP 1, FP 0, FN 1 -> F1 2/3; class 1: TP 1, FP 1, FN 0 -> F1 2/3; macro 2/3
    # en: references [0, 1], predictions [0, 1]: accuracy 1, macro 1
    # sw: references [0, 1, 1], predictions [0, None, 1]: accuracy 2/3;
    #   class 0: TP 1 -> F1 1; class 1: TP 1, FP 0, FN 1 -> F1 2/3; macro (1 + 2/3)/2 = 5/6
    assert result["de"]["macro_f1"] == pytest.approx(2 / 3)
    assert result["sw"]["macro_f1"] == pytest.approx(5 / 6)
    assert result["average"] == {
        # Unweighted over languages; weighting by rows would give (2 + 2 + 2)/8 = 3/4 instead.
        "accuracy": pytest.approx((2 / 3 + 1 + 2 / 3) / 3),  # = 7/9
        "macro_f1": pytest.approx((2 / 3 + 1 + 5 / 6) / 3),  # = 5/6
        "unparseable": 0 + 0 + 1,
        "count": 3 + 2 + 3,
    }


def test_scores_by_language_skips_non_numeric_entries_and_checks_metric_names():
    def score(rows: list[int]) -> dict:
        return {"accuracy": len(rows) / 4, "model": "xlmr", "truncated": True}

    # a: rows [0, 1, 2] -> 3/4; b: row [3] -> 1/4; mean (3/4 + 1/4)/2 = 1/2
    assert scores_by_language(["a", "a", "a", "b"], score)["average"] == {"accuracy": pytest.approx(1 / 2)}

    def uneven(rows: list[int]) -> dict:
        return {"accuracy": 1.0} if len(rows) > 1 else {"f1": 1.0}

    with pytest.raises(ValueError, match="different metrics"):
        scores_by_language(["a", "a", "b"], uneven)
    with pytest.raises(ValueError, match="reserved"):
        scores_by_language(["average"], score)
    with pytest.raises(ValueError, match="No rows"):
        scores_by_language([], score)
