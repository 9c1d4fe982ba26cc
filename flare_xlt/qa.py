"""Extractive question answering for encoder models with a start/end span head (XLM-R style).

Why this exists: the authors' code truncates question + context to 128 tokens, so every answer beyond that point is
lost: it can be neither learned in training nor predicted at evaluation. Here the context is split into overlapping
windows by the fast tokenizer's own overflow mechanism (`stride` tokens shared between neighbouring windows), so an
answer of at most `stride + 1` tokens always lies wholly inside some window, and an answer that still fits nowhere is
counted (`QAFeatures.answers_outside_all_windows`) rather than silently dropped. Post-processing picks the best span
over all windows of an example and cuts it out of the original context by character offsets, so predictions keep the
context's exact spelling, casing, accents and spacing and can be scored with the SQuAD string metrics (exact match,
token F1) against the gold answer text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import numpy as np
    from transformers import PreTrainedTokenizerBase

CLS_INDEX = 0  # [CLS] / <s> opens every window of a right-padded encoder; it is the "no answer here" label


@dataclass
class QAFeatures:
    """Tokenised windows ("features"), several per example when the context is longer than one window."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    offset_mapping: list[list[tuple[int, int] | None]]  # character span in the CONTEXT; None for non-context tokens
    example_index: list[int]  # which input example each window comes from
    window_index: list[int]  # 0, 1, 2, ... within its example
    start_positions: list[int]  # answer start token in this window; CLS_INDEX when the answer is not fully inside
    end_positions: list[int]
    answers_outside_all_windows: int  # examples with an answer that no window fully contains (counted, never hidden)


def prepare_qa_features(
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    contexts: Sequence[str],
    answers: Sequence[dict | None] | None = None,
    max_length: int = 384,
    stride: int = 128,
) -> QAFeatures:
    """Tokenise (question, context) pairs into overlapping windows and label each window's answer span.

    answers[i] is {"text": str, "answer_start": int} with answer_start a character offset into contexts[i], or None
    (no gold answer, e.g. at test time); answers=None means None for every example. A window whose context does not
    wholly contain the answer, and every window of an example without an answer, is labelled CLS_INDEX for both
    start and end, as in the standard SQuAD recipe.

    The question comes first and the context second, as right-padding encoders expect; only the context is
    truncated and windowed (truncation="only_second"). Context tokens are found with the encoding's sequence ids.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a fast (Rust tokenizers) tokenizer: extractive QA needs the character "
            "offsets and overflowing windows only fast tokenizers provide"
        )
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    if answers is None:
        answers = [None] * len(contexts)
    elif len(answers) != len(contexts):
        raise ValueError(f"{len(answers)} answers but {len(contexts)} contexts")
    if stride < 0:
        raise ValueError(f"stride must be >= 0, got {stride}")
    features = QAFeatures([], [], [], [], [], [], [], 0)
    if not contexts:
        return features  # transformers' batch encoding fails on an empty batch
    answer_spans = [
        _answer_span(i, context, answer) for i, (context, answer) in enumerate(zip(contexts, answers, strict=True))
    ]
    _check_room_for_context(tokenizer, questions, max_length, stride)

    encoding = tokenizer(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    contained = [False] * len(contexts)
    windows_so_far = [0] * len(contexts)
    for feature, example in enumerate(encoding["overflow_to_sample_mapping"]):
        window = windows_so_far[example]  # overflow yields an example's windows in context order
        windows_so_far[example] += 1
        offsets = [
            tuple(offset) if sequence == 1 else None
            for offset, sequence in zip(
                encoding["offset_mapping"][feature], encoding.sequence_ids(feature), strict=True
            )
        ]
        start, end = _label_window(offsets, answer_spans[example])
        contained[example] |= start != CLS_INDEX

        features.input_ids.append(encoding["input_ids"][feature])
        features.attention_mask.append(encoding["attention_mask"][feature])
        features.offset_mapping.append(offsets)
        features.example_index.append(example)
        features.window_index.append(window)
        features.start_positions.append(start)
        features.end_positions.append(end)
    features.answers_outside_all_windows = sum(
        span is not None and not inside for span, inside in zip(answer_spans, contained, strict=True)
    )
    return features


def _answer_span(index: int, context: str, answer: dict | None) -> tuple[int, int] | None:
    """The answer's character span in the context, without surrounding whitespace, which no token covers."""
    if answer is None:
        return None
    text, start = answer.get("text"), answer.get("answer_start")
    if not isinstance(text, str) or not isinstance(start, int):
        raise ValueError(
            f"answer of example {index} must be {{'text': str, 'answer_start': int}}, got {answer!r} "
            "(for SQuAD-style lists of gold answers, pass one of them)"
        )
    if not text.strip():
        raise ValueError(f"answer of example {index} is empty; pass None for an example without an answer")
    found = context[start : start + len(text)]
    if found != text:
        raise ValueError(
            f"answer of example {index} does not match its context: answer_start={start} and text {text!r}, "
            f"but the context there reads {found!r}"
        )
    leading = len(text) - len(text.lstrip())
    trailing = len(text) - len(text.rstrip())
    return start + leading, start + len(text) - trailing


def _check_room_for_context(
    tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], max_length: int, stride: int
) -> None:
    """Fail with a clear message where the tokenizer would fail obscurely.

    A window holds max_length minus the question and the special tokens; it must exceed the stride, or the windows
    could not advance: Rust tokenizers then raise a truncation error or panic (PanicException, not an Exception).
    """
    special = tokenizer.num_special_tokens_to_add(pair=True)
    question_ids = tokenizer(list(questions), add_special_tokens=False)["input_ids"]
    for index, ids in enumerate(question_ids):
        room = max_length - special - len(ids)
        if room <= stride:
            raise ValueError(
                f"question {index} has {len(ids)} tokens: with {special} special tokens and max_length={max_length} "
                f"that leaves {room} tokens of context per window, which must exceed stride={stride}; "
                "raise max_length, lower stride or shorten the question"
            )


def _label_window(offsets: list[tuple[int, int] | None], span: tuple[int, int] | None) -> tuple[int, int]:
    """Token indices of the answer's first and last token in this window, or CLS_INDEX twice if not wholly inside."""
    context_tokens = [i for i, offset in enumerate(offsets) if offset is not None]
    if span is None or not context_tokens:
        return CLS_INDEX, CLS_INDEX
    span_start, span_end = span
    if offsets[context_tokens[0]][0] > span_start or offsets[context_tokens[-1]][1] < span_end:
        return CLS_INDEX, CLS_INDEX
    overlapping = [i for i in context_tokens if offsets[i][0] < span_end and offsets[i][1] > span_start]
    return overlapping[0], overlapping[-1]


@dataclass(frozen=True)
class AnswerSpan:
    """An example's best answer: its characters [start, end) in the context, and start_logit + end_logit."""

    text: str
    start: int
    end: int
    score: float


def postprocess_qa_predictions(*arguments, **limits) -> list[str]:
    """The best answer text of each example, cut from its original context by character offsets: the texts of
    `best_answer_spans` (same arguments: contexts, features, start_logits, end_logits, n_best, max_answer_length),
    "" for an example without a valid span."""
    return [span.text if span is not None else "" for span in best_answer_spans(*arguments, **limits)]


def best_answer_spans(
    contexts: Sequence[str],
    features: QAFeatures,
    start_logits: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    end_logits: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[AnswerSpan | None]:
    """The best answer span of each example, cut from its original context by character offsets.

    start_logits/end_logits have one row per feature; rows may be longer than their feature (batch padding), and
    positions past the feature's tokens or outside the context (question, special tokens) are never chosen. For each
    window, the n_best start and n_best end positions among its context tokens are paired; a pair is kept if
    start <= end and it spans at most max_answer_length tokens, and scored start_logit + end_logit. The best pair over
    all windows of an example wins (the earlier one on ties). An example with no valid pair gets None, which
    `postprocess_qa_predictions` scores as "": nothing is dropped from the evaluation.
    """
    if n_best < 1 or max_answer_length < 1:
        raise ValueError(f"n_best and max_answer_length must be >= 1, got {n_best} and {max_answer_length}")
    num_features = len(features.input_ids)
    if len(start_logits) != num_features or len(end_logits) != num_features:
        raise ValueError(
            f"{num_features} features but {len(start_logits)} rows of start logits and {len(end_logits)} of end logits"
        )
    if features.example_index and max(features.example_index) >= len(contexts):
        raise ValueError(
            f"features refer to example {max(features.example_index)} but only {len(contexts)} contexts were given"
        )

    best: list[AnswerSpan | None] = [None] * len(contexts)
    for feature, (example, offsets) in enumerate(zip(features.example_index, features.offset_mapping, strict=True)):
        context_tokens = torch.tensor([i for i, offset in enumerate(offsets) if offset is not None], dtype=torch.long)
        if len(context_tokens) == 0:
            continue
        starts, start_scores = _top_positions(start_logits, feature, len(offsets), context_tokens, n_best)
        ends, end_scores = _top_positions(end_logits, feature, len(offsets), context_tokens, n_best)
        lengths = ends[None, :] - starts[:, None] + 1
        scores = start_scores[:, None] + end_scores[None, :]
        scores[(lengths < 1) | (lengths > max_answer_length)] = -torch.inf
        pair = int(scores.argmax())
        score = float(scores.flatten()[pair])
        if score == -torch.inf:
            continue
        if best[example] is None or score > best[example].score:
            start, end = int(starts[pair // len(ends)]), int(ends[pair % len(ends)])
            first, last = offsets[start][0], offsets[end][1]
            best[example] = AnswerSpan(contexts[example][first:last], first, last, score)
    return best


def _top_positions(
    logits: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
    feature: int,
    length: int,
    context_tokens: torch.Tensor,
    n_best: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (at most) n_best context positions of one feature with the highest logits, and those logits."""
    row = torch.as_tensor(logits[feature]).detach().to(device="cpu", dtype=torch.float64)
    if row.dim() != 1 or row.shape[0] < length:
        raise ValueError(f"logits of feature {feature} have shape {tuple(row.shape)}; expected at least ({length},)")
    if row[:length].isnan().any():
        raise ValueError(f"logits of feature {feature} contain NaN")
    values, picked = row[context_tokens].topk(min(n_best, len(context_tokens)))
    return context_tokens[picked], values
