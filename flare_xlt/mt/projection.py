"""QA label projection for translate-train data: mark the answer, translate, recover the span, count every outcome.

Why not the authors' way: their `process_qa` wraps the answer in `"` markers after stripping every `"` from the
context, then shifts `answer_start` by the total number of removed quotes, which is wrong whenever quotes follow the
answer. Their `postprocess_qa` takes the first and last `"` of the translation as the span, so any quote the MT adds
widens it, and examples whose markers were lost vanish in a later filter without being counted.

Here, as in EasyProject (Chen et al., 2023), the answer is wrapped in square brackets, which NLLB tends to carry
through; a context that already contains brackets gets the next pair of `MARKER_PAIRS` none of whose characters occur
in it, so a marker found in the translation is always ours and nothing in the context is stripped or shifted. When
the markers do not survive exactly once each and in order, the markers are removed and the separately translated
answer is searched in the translation (exact, then case-insensitive, then fuzzy). Every record ends in exactly one
`ProjectionStats` count, failures are returned by id, and every projected record satisfies
`context[answer_start:answer_start + len(text)] == text` (asserted).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from difflib import SequenceMatcher

Translate = Callable[[list[str]], list[str]]

# EasyProject's square brackets first; the others are for contexts that already contain brackets.
MARKER_PAIRS = (("[", "]"), ("{", "}"), ("<<", ">>"), ("«", "»"))

# Fuzzy candidates are trimmed of these at their edges so that "Nairobi." is not preferred to "Nairobi" only because
# of the punctuation the token happens to carry.
_EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")


@dataclass
class ProjectionStats:
    language: str
    total: int = 0
    markers: int = 0  # projected via the markers
    exact_fallback: int = 0  # markers lost; the separately translated answer found verbatim (or up to case)
    fuzzy_fallback: int = 0  # found by fuzzy matching (difflib) above the threshold
    failed: int = 0  # not projectable: dropped from training, counted

    def as_dict(self) -> dict:
        success_rate = (self.total - self.failed) / self.total if self.total else 0.0
        return {**asdict(self), "success_rate": success_rate}


def _free_marker_pair(context: str) -> tuple[str, str] | None:
    for pair in MARKER_PAIRS:
        if not any(char in context for char in "".join(pair)):
            return pair
    return None


def mark_answer(context: str, answer_start: int, answer_text: str) -> tuple[str, tuple[str, str]]:
    """The context with the answer wrapped as `<open>answer<close>`, and the marker pair used."""
    if not answer_text or context[answer_start : answer_start + len(answer_text)] != answer_text:
        raise ValueError(
            f"Answer {answer_text!r} is not at answer_start {answer_start} of its context "
            f"(found {context[answer_start : answer_start + len(answer_text)]!r})."
        )
    pair = _free_marker_pair(context)
    if pair is None:
        raise ValueError(
            "The context contains characters of every marker pair "
            f"({', '.join(' '.join(pair) for pair in MARKER_PAIRS)}), so no marker would be unambiguous."
        )
    opening, closing = pair
    end = answer_start + len(answer_text)
    return f"{context[:answer_start]}{opening}{answer_text}{closing}{context[end:]}", pair


def _separator(whitespace: str) -> str:
    # Whitespace that touched a marker becomes one separator: removal must neither merge two words nor leave a
    # double space. A line break wins over spaces so paragraph structure survives.
    if not whitespace:
        return ""
    return "\n" if "\n" in whitespace else " "


def recover_marked_span(translation: str, markers: tuple[str, str]) -> tuple[str, str, int] | None:
    """(clean_context, answer_text, answer_start) from a translated marked context, or None if the markers did not
    survive exactly once each, in order, around a non-empty answer."""
    opening, closing = markers
    # The pair was chosen absent from the source, so any marker character beyond one opening and one closing marker is
    # a duplicate or a fragment the MT produced: the span would be ambiguous.
    for char in set(opening + closing):
        if translation.count(char) != (opening + closing).count(char):
            return None
    start, end = translation.find(opening), translation.find(closing)
    if start < 0 or end < 0 or end < start + len(opening):
        return None
    before = translation[:start]
    inner = translation[start + len(opening) : end]
    after = translation[end + len(closing) :]
    answer = inner.strip()
    if not answer:
        return None
    left, right = before.rstrip(), after.lstrip()
    # Spaces inside the markers ("[ Nairobi ]") are the MT's padding; they count only as a word boundary. No
    # separator at the text's edges.
    left_gap = _separator(before[len(left) :] + inner[: len(inner) - len(inner.lstrip())]) if left else ""
    right_gap = _separator(inner[len(inner.rstrip()) :] + after[: len(after) - len(right)]) if right else ""
    prefix = left + left_gap
    return prefix + answer + right_gap + right, answer, len(prefix)


def strip_markers(translation: str, markers: tuple[str, str]) -> str:
    """The translation without any marker character, with the same whitespace rule as `recover_marked_span`."""
    chars = re.escape("".join(sorted(set("".join(markers)))))
    pattern = re.compile(rf"\s*[{chars}]+\s*")

    def replace(match: re.Match) -> str:
        at_edge = match.start() == 0 or match.end() == len(translation)
        whitespace = "".join(char for char in match.group() if char.isspace())
        return "" if at_edge else _separator(whitespace)

    return pattern.sub(replace, translation)


def find_answer(context: str, answer: str, threshold: float = 0.8) -> tuple[str, int, str] | None:
    """(answer as it appears in context, start, "exact" | "fuzzy"), or None.

    Exact substring first (first occurrence), then case-insensitive (reported as "exact": same words, and the text
    returned is the context's), then the best fuzzy candidate over token windows near the answer's length."""
    answer = answer.strip()
    if not answer:
        return None
    start = context.find(answer)
    if start >= 0:
        return answer, start, "exact"
    # re's IGNORECASE folds character by character, so offsets stay those of `context` (str.lower() can change the
    # length, e.g. "İ").
    match = re.search(re.escape(answer), context, re.IGNORECASE)
    if match:
        return match.group(), match.start(), "exact"
    tokens = [(token.start(), token.end()) for token in re.finditer(r"\S+", context)]
    size = len(answer.split())
    target = answer.casefold()
    best: tuple[float, int, int] | None = None
    for first in range(len(tokens)):
        for length in range(max(1, size - 1), size + 2):
            if first + length > len(tokens):
                break
            window_start, window_end = tokens[first][0], tokens[first + length - 1][1]
            window = context[window_start:window_end]
            trimmed = _EDGE_PUNCTUATION.sub("", window)
            candidates = {(window_start, window_end)}
            if trimmed:
                offset = window_start + window.index(trimmed)
                candidates.add((offset, offset + len(trimmed)))
            for begin, finish in sorted(candidates):
                matcher = SequenceMatcher(None, context[begin:finish].casefold(), target, autojunk=False)
                floor = max(threshold, best[0]) if best else threshold
                # quick_ratio bounds ratio from above: skip the full comparison when it cannot win.
                if matcher.quick_ratio() < floor:
                    continue
                ratio = matcher.ratio()
                if ratio >= threshold and (best is None or ratio > best[0]):
                    best = (ratio, begin, finish)
    if best is None:
        return None
    _, begin, finish = best
    return context[begin:finish], begin, "fuzzy"


def _translate(translate: Translate, texts: list[str], kind: str) -> list[str]:
    if not texts:
        return []
    translations = list(translate(texts))
    if len(translations) != len(texts):
        raise ValueError(f"The translator returned {len(translations)} {kind} for {len(texts)} inputs.")
    return translations


def project_qa_records(
    records: list[dict], translate: Translate, language: str, threshold: float = 0.8
) -> tuple[list[dict], list[str], ProjectionStats]:
    """Translate QA records and project their first answer (TyDiQA train has one) onto the translation.

    Returns (projected records, ids that failed, stats), projected records in input order. Translation calls: one
    batch of marked contexts, one of answers (only those whose markers were lost) and one of questions (only the
    projected records). A record whose answer does not sit at its answer_start raises: that is bad input, not a
    projection failure."""
    stats = ProjectionStats(language=language, total=len(records))
    # (position, marked context, marker pair) for every record that can be marked; positions, not ids, key the
    # bookkeeping so that repeated ids cannot mix records up.
    marked: list[tuple[int, str, tuple[str, str]]] = []
    for position, record in enumerate(records):
        answers = record.get("answers") or {}
        texts, starts = answers.get("text") or [], answers.get("answer_start") or []
        if not texts or not texts[0].strip() or _free_marker_pair(record["context"]) is None:
            continue
        try:
            marked_context, pair = mark_answer(record["context"], int(starts[0]), texts[0])
        except ValueError as error:
            raise ValueError(f"Record {record['id']}: {error}") from error
        marked.append((position, marked_context, pair))

    contexts = _translate(translate, [marked_context for _, marked_context, _ in marked], "contexts")
    # position -> (clean context, answer, start); a record absent here after the fallback has failed.
    spans: dict[int, tuple[str, str, int]] = {}
    lost: list[tuple[int, str]] = []
    for (position, _, pair), translation in zip(marked, contexts, strict=True):
        recovered = recover_marked_span(translation, pair)
        if recovered is None:
            lost.append((position, strip_markers(translation, pair)))
        else:
            spans[position] = recovered
            stats.markers += 1

    answers = _translate(translate, [records[position]["answers"]["text"][0] for position, _ in lost], "answers")
    for (position, clean_context), answer in zip(lost, answers, strict=True):
        found = find_answer(clean_context, answer, threshold)
        if found is None:
            continue
        text, start, method = found
        spans[position] = (clean_context, text, start)
        if method == "exact":
            stats.exact_fallback += 1
        else:
            stats.fuzzy_fallback += 1

    failed = [record["id"] for position, record in enumerate(records) if position not in spans]
    stats.failed = len(failed)
    kept = sorted(spans)
    questions = _translate(translate, [records[position]["question"] for position in kept], "questions")
    projected = []
    for position, question in zip(kept, questions, strict=True):
        record_id = records[position]["id"]
        context, text, start = spans[position]
        assert context[start : start + len(text)] == text, f"Record {record_id}: projected offset is wrong."
        projected.append(
            {
                "id": record_id,
                "language": language,
                "question": question,
                "context": context,
                "answers": {"text": [text], "answer_start": [start]},
            }
        )
    assert stats.markers + stats.exact_fallback + stats.fuzzy_fallback + stats.failed == stats.total
    return projected, failed, stats
