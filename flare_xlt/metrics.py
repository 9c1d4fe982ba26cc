"""Task metrics: accuracy and macro-F1 for classification, exact match and token F1 for extractive QA.

Every metric scores the answer string (or the label parsed from it) only. The authors compared token indices for
encoder QA and whole decoded prompts for decoders; both make scores depend on the tokenizer and the prompt, so
they are not comparable across models. Here encoder QA is scored on the span cut out of the context and decoder
output on its first generated line.

normalize_answer is exactly the official SQuAD v1.1 normalisation. It is English-centric (it removes the articles
a/an/the and only ASCII punctuation, so e.g. "¿" or "«" survive) and is kept unchanged so that scores stay
comparable with published SQuAD/XQuAD/MLQA numbers. All scores are fractions in [0, 1].
"""

from __future__ import annotations

import numbers
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from sklearn.metrics import accuracy_score, f1_score

# Outside every label set, so an unparseable generation is wrong for its gold class without creating a new class.
UNPARSEABLE_ID = -1
_ASCII_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Summed rather than averaged across languages: they are totals, not rates.
_SUMMED_METRICS = ("count", "unparseable")


def _label_ids(predictions: Sequence[int | None], references: Sequence[int], num_labels: int | None) -> list[int]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not references:
        raise ValueError("No references to score.")
    if num_labels is not None:
        outside = sorted({label for label in references if not 0 <= label < num_labels})
        if outside:
            raise ValueError(f"Reference labels {outside} lie outside range({num_labels}).")
    return [UNPARSEABLE_ID if prediction is None else prediction for prediction in predictions]


def accuracy(predictions: Sequence[int | None], references: Sequence[int]) -> float:
    """Fraction of predictions equal to their reference; None (unparseable) counts as wrong."""
    return float(accuracy_score(list(references), _label_ids(predictions, references, None)))


def macro_f1(predictions: Sequence[int | None], references: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of per-class F1 over range(num_labels); None counts as wrong for its gold class."""
    return float(
        f1_score(
            list(references),
            _label_ids(predictions, references, num_labels),
            labels=list(range(num_labels)),
            average="macro",
            # A class absent from both references and predictions scores 0, as scikit-learn's default does, but
            # without the warning.
            zero_division=0.0,
        )
    )


def classification_scores(predictions: Sequence[int | None], references: Sequence[int], num_labels: int) -> dict:
    return {
        "accuracy": accuracy(predictions, references),
        "macro_f1": macro_f1(predictions, references, num_labels),
        "unparseable": sum(prediction is None for prediction in predictions),
        "count": len(references),
    }


def normalize_answer(text: str) -> str:
    """Official SQuAD v1.1: lower case, drop ASCII punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _require_answers(ground_truths: Sequence[str]) -> None:
    # A bare string would be scored character by character against the prediction.
    if isinstance(ground_truths, str):
        raise TypeError("ground_truths must be a sequence of answer strings, not one string.")
    if not ground_truths:
        raise ValueError("No gold answers to compare with.")


def exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    _require_answers(ground_truths)
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(truth) for truth in ground_truths))


def _token_f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    # As in the official script, this also makes an empty prediction against an empty answer score 0.
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, ground_truths: Sequence[str]) -> float:
    _require_answers(ground_truths)
    return max(_token_f1(prediction, truth) for truth in ground_truths)


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """Mean exact match and token F1 over the reference ids; the two id sets must be identical."""
    missing = [key for key in references if key not in predictions]
    extra = [key for key in predictions if key not in references]
    if missing or extra:
        raise ValueError(
            f"Prediction ids do not match reference ids: {len(missing)} of {len(references)} references have no "
            f"prediction (first: {missing[:5]}), {len(extra)} of {len(predictions)} predictions have no reference "
            f"(first: {extra[:5]})."
        )
    if not references:
        raise ValueError("No references to score.")
    count = len(references)
    return {
        "exact_match": sum(exact_match(predictions[key], truths) for key, truths in references.items()) / count,
        "f1": sum(f1(predictions[key], truths) for key, truths in references.items()) / count,
        "count": count,
    }


def extract_generated_answer(generation: str) -> str:
    """The decoder's answer: its first generated line, stripped (later lines are continuation, not answer)."""
    return generation.split("\n", 1)[0].strip()


def _is_edge_noise(ch: str) -> bool:
    # string.punctuation also holds ASCII symbols such as "$" and "|", which are not Unicode category P.
    return ch.isspace() or ch in _ASCII_PUNCTUATION or unicodedata.category(ch).startswith("P")


def _strip_edge_noise(text: str) -> str:
    start, end = 0, len(text)
    while start < end and _is_edge_noise(text[start]):
        start += 1
    while end > start and _is_edge_noise(text[end - 1]):
        end -= 1
    return text[start:end]


def _verbal_key(text: str) -> str:
    return _strip_edge_noise(text).casefold()


def parse_verbalized(generation: str, verbalizers: Sequence[str]) -> int | None:
    """Index of the verbalizer that the first generated line is, up to case and surrounding punctuation; else None.

    Only a whole-word match counts: a prefix ("entail"), a longer answer or another word is unparseable, never
    mapped to the nearest class.
    """
    keys = [_verbal_key(word) for word in verbalizers]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Verbalizers {list(verbalizers)} are not distinct up to case and surrounding punctuation.")
    answer = _verbal_key(extract_generated_answer(generation))
    return keys.index(answer) if answer in keys else None


def scores_by_language(languages: Sequence[str], score: Callable[[list[int]], dict]) -> dict:
    """score(row indices) per language, plus "average": the unweighted mean over languages of each rate.

    Unweighted so that every language counts equally whatever its test-set size; "count" and "unparseable" are
    totals and are summed instead. Non-numeric entries are not averaged.
    """
    if "average" in languages:
        raise ValueError('"average" is reserved for the cross-language mean and cannot be a language.')
    rows: dict[str, list[int]] = {}
    for index, language in enumerate(languages):
        rows.setdefault(language, []).append(index)
    if not rows:
        raise ValueError("No rows to score.")
    results = {language: score(rows[language]) for language in sorted(rows)}
    metric_names = {frozenset(scores) for scores in results.values()}
    if len(metric_names) != 1:
        raise ValueError(f"Languages report different metrics: {[sorted(names) for names in metric_names]}.")
    average: dict[str, float | int] = {}
    for name, value in next(iter(results.values())).items():
        # numbers.Real also admits numpy scalars; a bool is a flag, not a rate.
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            continue
        values = [scores[name] for scores in results.values()]
        average[name] = sum(values) if name in _SUMMED_METRICS else sum(values) / len(values)
    results["average"] = average
    return results


def task_scores(
    task,
    ids: Sequence[str],
    languages: Sequence[str],
    predictions: Sequence,
    references: Sequence,
) -> dict:
    """Scores per language and their average with a task's metrics (any object with `kind` and `label_names`).

    Classification: predictions are class ids or None (unparseable generations); references are class ids.
    Extractive QA: predictions are answer strings; references are lists of gold answer strings.
    """
    lengths = {len(ids), len(languages), len(predictions), len(references)}
    if len(lengths) != 1:
        raise ValueError(
            f"ids, languages, predictions and references must have one length; got {len(ids)}, {len(languages)}, "
            f"{len(predictions)} and {len(references)}."
        )
    if task.kind == "classification":

        def score(rows: list[int]) -> dict:
            return classification_scores(
                [predictions[i] for i in rows], [references[i] for i in rows], len(task.label_names)
            )
    else:

        def score(rows: list[int]) -> dict:
            return squad_scores({ids[i]: predictions[i] for i in rows}, {ids[i]: references[i] for i in rows})

    return scores_by_language(languages, score)
