"""Extractive QA: sliding-window features with answer labels, and span post-processing back to the original text.

A real fast tokenizer is trained in-process (WordPiece, lowercasing and accent-stripping normaliser, BERT pair
template), so character offsets, subword splits and overflowing windows come from the Rust tokenizers library itself.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from flare_xlt.qa import QAFeatures, postprocess_qa_predictions, prepare_qa_features

PLACES = ["Zürich", "São", "Paulo", "Kraków", "Genève", "Ålesund", "Málaga", "Øresund", "Reykjavík", "Köln", "Straße"]
PLAIN = (
    "the city river bridge market station people walked along old new north south harbour museum opened "
    "closed during winter summer because council built library school hospital tower square a of in to and "
    "was is by its with from where when which who what year century railway"
).split()
WORDS = PLACES + [word.capitalize() for word in PLAIN[:10]] + PLAIN
MAX_LENGTH, STRIDE = 32, 8


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    generator = random.Random(0)
    text = [" ".join(generator.choice(WORDS) for _ in range(12)) for _ in range(300)]
    model = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    # Lowercasing and accent stripping make the tokens differ from the text: offsets must still point into the
    # original string, which is what lets post-processing return "São" and not "sao".
    model.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    model.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    model.train_from_iterator(
        text, trainers.WordPieceTrainer(vocab_size=250, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    model.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", model.token_to_id("[CLS]")), ("[SEP]", model.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        padding_side="right",
    )


def filler(seed: int, words: int) -> str:
    generator = random.Random(seed)
    return " ".join(generator.choice(PLAIN) for _ in range(words))


QUESTION = "Where did the Museum move?"
# Casing, accents and a double space that the normaliser and pre-tokeniser do not keep: the answer must come back
# exactly as the context spells it.
ANSWER = "São  Paulo in Zürich"
CONTEXT = f"{filler(1, 40)} In 1912 the museum moved to {ANSWER}, by railway. {filler(2, 30)}"
ANSWER_START = CONTEXT.index(ANSWER)


def direct_windows(tokenizer, questions, contexts):
    """The tokenizer's own overflowing windows, to compare the features against."""
    return tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=MAX_LENGTH,
        stride=STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def window_covers(offsets: list[tuple[int, int] | None], start: int, end: int) -> bool:
    spans = [offset for offset in offsets if offset is not None]
    return spans[0][0] <= start and spans[-1][1] >= end


def answer_features(tokenizer) -> QAFeatures:
    answer = {"text": ANSWER, "answer_start": ANSWER_START}
    return prepare_qa_features(tokenizer, [QUESTION], [CONTEXT], [answer], max_length=MAX_LENGTH, stride=STRIDE)


def holding_windows(features: QAFeatures) -> list[int]:
    return [feature for feature, start in enumerate(features.start_positions) if start != 0]


def test_answer_in_a_later_window_is_labelled_and_earlier_windows_point_to_cls(tokenizer):
    features = answer_features(tokenizer)
    direct = direct_windows(tokenizer, [QUESTION], [CONTEXT])

    assert len(features.input_ids) == len(direct["input_ids"]) >= 4
    assert features.input_ids == direct["input_ids"]
    assert features.attention_mask == direct["attention_mask"]
    assert features.example_index == [0] * len(direct["input_ids"])
    assert features.window_index == list(range(len(direct["input_ids"])))
    for feature, offsets in enumerate(features.offset_mapping):
        sequence_ids = direct.sequence_ids(feature)
        assert [offset is None for offset in offsets] == [sequence != 1 for sequence in sequence_ids]

    holding = holding_windows(features)
    assert holding and holding[0] > 0, "the answer lies after the first window"
    answer_end = ANSWER_START + len(ANSWER)
    for feature, offsets in enumerate(features.offset_mapping):
        start, end = features.start_positions[feature], features.end_positions[feature]
        if window_covers(offsets, ANSWER_START, answer_end):
            assert feature in holding
            assert 0 < start <= end
            assert CONTEXT[offsets[start][0] : offsets[end][1]] == ANSWER
        else:
            assert (start, end) == (0, 0)
    assert features.answers_outside_all_windows == 0


def test_without_answers_every_window_points_to_cls(tokenizer):
    features = prepare_qa_features(tokenizer, [QUESTION], [CONTEXT], max_length=MAX_LENGTH, stride=STRIDE)
    assert features.input_ids == answer_features(tokenizer).input_ids
    assert set(features.start_positions) == set(features.end_positions) == {0}
    assert features.answers_outside_all_windows == 0


def test_answer_longer_than_a_window_is_counted(tokenizer):
    long_answer = filler(3, 40)
    contexts = [f"Before it: {long_answer}. After it.", CONTEXT, CONTEXT]
    answers = [
        {"text": long_answer, "answer_start": contexts[0].index(long_answer)},
        {"text": ANSWER, "answer_start": ANSWER_START},
        None,
    ]
    features = prepare_qa_features(tokenizer, [QUESTION] * 3, contexts, answers, max_length=MAX_LENGTH, stride=STRIDE)

    assert features.answers_outside_all_windows == 1
    first_example = [feature for feature, example in enumerate(features.example_index) if example == 0]
    assert len(first_example) > 1
    assert all(features.start_positions[f] == features.end_positions[f] == 0 for f in first_example)
    assert any(features.start_positions[f] for f, example in enumerate(features.example_index) if example == 1)


def test_mismatched_answer_start_names_the_example_and_both_strings(tokenizer):
    answers = [{"text": ANSWER, "answer_start": ANSWER_START}, {"text": ANSWER, "answer_start": ANSWER_START + 1}]
    found = CONTEXT[ANSWER_START + 1 : ANSWER_START + 1 + len(ANSWER)]
    with pytest.raises(ValueError, match="example 1") as raised:
        prepare_qa_features(tokenizer, [QUESTION] * 2, [CONTEXT] * 2, answers, max_length=MAX_LENGTH, stride=STRIDE)
    assert repr(ANSWER) in str(raised.value) and repr(found) in str(raised.value)


def test_whitespace_around_the_answer_labels_the_same_tokens(tokenizer):
    # Annotators' spans sometimes include the space before the answer; no token covers it.
    padded = {"text": " " + ANSWER, "answer_start": ANSWER_START - 1}
    features = prepare_qa_features(tokenizer, [QUESTION], [CONTEXT], [padded], max_length=MAX_LENGTH, stride=STRIDE)
    reference = answer_features(tokenizer)
    assert features.start_positions == reference.start_positions
    assert features.end_positions == reference.end_positions


@pytest.mark.parametrize(
    "answer",
    [{"text": [ANSWER], "answer_start": [ANSWER_START]}, {"text": "  ", "answer_start": 0}],
    ids=["squad-lists", "blank"],
)
def test_malformed_answer_is_refused(tokenizer, answer):
    with pytest.raises(ValueError, match="example 0"):
        prepare_qa_features(tokenizer, [QUESTION], [CONTEXT], [answer], max_length=MAX_LENGTH, stride=STRIDE)


def test_no_examples_give_no_features_and_no_predictions(tokenizer):
    features = prepare_qa_features(tokenizer, [], [], [])
    assert features == QAFeatures([], [], [], [], [], [], [], 0)
    assert postprocess_qa_predictions([], features, np.zeros((0, 8)), np.zeros((0, 8))) == []


def test_question_too_long_for_any_context_is_refused(tokenizer):
    # The Rust tokenizer would panic here (a PanicException, which `except Exception` does not catch).
    questions = [QUESTION, filler(4, 25)]
    with pytest.raises(ValueError, match=r"question 1 has \d+ tokens"):
        prepare_qa_features(tokenizer, questions, [CONTEXT] * 2, max_length=MAX_LENGTH, stride=STRIDE)


def test_slow_tokenizer_is_refused():
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(ValueError, match="not a fast"):
        prepare_qa_features(SlowTokenizer(), [QUESTION], [CONTEXT])


def logits_for(features: QAFeatures, padded_length: int, background: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`background` on every context position; padding, question and special tokens get huge logits to be ignored."""
    start = np.full((len(features.input_ids), padded_length), background)
    end = np.full_like(start, background)
    for feature, offsets in enumerate(features.offset_mapping):
        for position in range(padded_length):
            if position >= len(offsets) or offsets[position] is None:
                start[feature, position] = end[feature, position] = 100.0
    return start, end


def test_postprocess_returns_the_context_spelling_and_rejects_invalid_higher_spans(tokenizer):
    features = answer_features(tokenizer)
    start_logits, end_logits = logits_for(features, MAX_LENGTH + 5)
    feature = next(
        f
        for f in holding_windows(features)
        if features.offset_mapping[f][features.start_positions[f] - 1] is not None
        and features.end_positions[f] + 2 < len(features.offset_mapping[f])
        and features.offset_mapping[f][features.end_positions[f] + 2] is not None
    )
    gold_start, gold_end = features.start_positions[feature], features.end_positions[feature]
    start_logits[feature, gold_start] = end_logits[feature, gold_end] = 10.0
    # Scores 28, 24 and 24, all higher than the gold 20, but each one ends before it starts.
    start_logits[feature, gold_end + 2] = 14.0
    end_logits[feature, gold_start - 1] = 14.0

    predictions = postprocess_qa_predictions(
        [CONTEXT], features, torch.tensor(start_logits, dtype=torch.float32), torch.tensor(end_logits)
    )
    assert predictions == [ANSWER]


def test_postprocess_respects_max_answer_length(tokenizer):
    features = answer_features(tokenizer)
    start_logits, end_logits = logits_for(features, MAX_LENGTH, background=-100.0)
    holding = holding_windows(features)[0]
    gold_start, gold_end = features.start_positions[holding], features.end_positions[holding]
    start_logits[holding, gold_start] = end_logits[holding, gold_end] = 10.0
    # A higher-scoring span in window 0, from its first to its last context token.
    offsets = features.offset_mapping[0]
    context_tokens = [i for i, offset in enumerate(offsets) if offset is not None]
    first, last = context_tokens[0], context_tokens[-1]
    start_logits[0, first] = end_logits[0, last] = 30.0
    span_tokens = last - first + 1
    assert gold_end - gold_start + 1 < span_tokens

    too_short = postprocess_qa_predictions(
        [CONTEXT], features, start_logits, end_logits, max_answer_length=span_tokens - 1
    )
    long_enough = postprocess_qa_predictions(
        [CONTEXT], features, start_logits, end_logits, max_answer_length=span_tokens
    )
    assert too_short == [ANSWER]
    assert long_enough == [CONTEXT[offsets[first][0] : offsets[last][1]]]


@pytest.mark.parametrize("winning_window", [0, 1])
def test_postprocess_chooses_across_windows_by_score(tokenizer, winning_window):
    features = answer_features(tokenizer)
    start_logits, end_logits = logits_for(features, MAX_LENGTH)
    spans = {}
    for feature in (0, 1):
        offsets = features.offset_mapping[feature]
        # A one-token span only this window has: the first context token of window 0, the last of window 1.
        context_tokens = [i for i, offset in enumerate(offsets) if offset is not None]
        position = context_tokens[0] if feature == 0 else context_tokens[-1]
        score = 5.0 if feature == winning_window else 4.0
        start_logits[feature, position] = end_logits[feature, position] = score
        spans[feature] = CONTEXT[offsets[position][0] : offsets[position][1]]
    assert spans[0] != spans[1]

    predictions = postprocess_qa_predictions([CONTEXT], features, list(start_logits), list(end_logits))
    assert predictions == [spans[winning_window]]


def test_example_without_any_valid_span_gets_empty_string(tokenizer):
    features = answer_features(tokenizer)
    start_logits, end_logits = logits_for(features, MAX_LENGTH)
    for feature, offsets in enumerate(features.offset_mapping):
        context_tokens = [i for i, offset in enumerate(offsets) if offset is not None]
        # With n_best=1 the only candidate pair of every window ends before it starts.
        start_logits[feature, context_tokens[-1]] = end_logits[feature, context_tokens[0]] = 1.0
    assert postprocess_qa_predictions([CONTEXT], features, start_logits, end_logits, n_best=1) == [""]
    assert postprocess_qa_predictions([CONTEXT], features, start_logits, end_logits, n_best=2) != [""]


def test_round_trip_of_one_hot_gold_logits(tokenizer):
    generator = random.Random(5)
    questions, contexts, answers, golds = [], [], [], []
    for _ in range(40):
        words = [generator.choice(WORDS) for _ in range(generator.randint(20, 120))]
        separators = [generator.choice([" ", " ", " ", "  ", ", "]) for _ in words[1:]]
        first = generator.randrange(len(words) - 3)
        last = first + generator.randint(0, 2)
        pieces, answer_start, answer_end = [], 0, 0
        for index, word in enumerate(words):
            if index:
                pieces.append(separators[index - 1])
            if index == first:
                answer_start = sum(map(len, pieces))
            pieces.append(word)
            if index == last:
                answer_end = sum(map(len, pieces))
        context = "".join(pieces)
        gold = context[answer_start:answer_end]
        questions.append(" ".join(generator.choice(WORDS) for _ in range(generator.randint(2, 6))) + "?")
        contexts.append(context)
        answers.append({"text": gold, "answer_start": answer_start})
        golds.append(gold)

    max_length, stride = 64, 16
    features = prepare_qa_features(tokenizer, questions, contexts, answers, max_length=max_length, stride=stride)
    assert max(features.window_index) > 0
    # Overlapping windows give every answer of at most stride + 1 tokens a window that holds it whole.
    assert all(len(tokenizer(gold, add_special_tokens=False)["input_ids"]) <= stride + 1 for gold in golds)
    assert features.answers_outside_all_windows == 0

    start_logits, end_logits = np.zeros((2, len(features.input_ids), max_length))
    for feature, (start, end) in enumerate(zip(features.start_positions, features.end_positions, strict=True)):
        if start:
            start_logits[feature, start] = end_logits[feature, end] = 1.0
    assert postprocess_qa_predictions(contexts, features, start_logits, end_logits) == golds
