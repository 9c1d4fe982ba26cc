"""QA label projection with deterministic fake translators: markers, fallbacks, counting and exact offsets."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from flare_xlt.mt.projection import (
    MARKER_PAIRS,
    ProjectionStats,
    find_answer,
    mark_answer,
    project_qa_records,
    recover_marked_span,
    strip_markers,
)

# A word-by-word "translation" into a made-up language: known words are replaced, names and everything that is not a
# word (spaces, punctuation, quotes, brackets) are kept as they are.
WORDS = {
    "the": "le",
    "capital": "mji",
    "of": "wa",
    "is": "ni",
    "what": "nini",
    "he": "yeye",
    "said": "alisema",
    "and": "na",
    "it": "hiyo",
    "large": "kubwa",
    "river": "mto",
    "longest": "mrefu",
    "in": "katika",
    "which": "ipi",
    "where": "wapi",
}
MARKER_CHARS = "[]{}<>«»"

Damage = Callable[[str], str]


def word_mt(text: str) -> str:
    def word(match: re.Match) -> str:
        translated = WORDS.get(match.group().lower(), match.group())
        return translated.capitalize() if match.group()[0].isupper() else translated

    return re.sub(r"\w+", word, text)


class FakeMT:
    """Translates word by word; `damages` maps a word of a marked source context to what the MT does wrong there."""

    def __init__(self, damages: dict[str, Damage] | None = None):
        self.damages = damages or {}
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> str:
        translation = word_mt(text)
        if not any(char in text for char in MARKER_CHARS):
            return translation  # questions and answers come through intact
        for trigger, damage in self.damages.items():
            if trigger in text:
                return damage(translation)
        return translation


def drop_markers(text: str) -> str:
    return re.sub(f"[{re.escape(MARKER_CHARS)}]", "", text)


def duplicate_close(text: str) -> str:
    return text.replace("]", "]]")


def pad_inside(text: str) -> str:
    return text.replace("[", "[ ").replace("]", " ]")


def lowercase_without_markers(text: str) -> str:
    return drop_markers(text).lower()


def misspell(text: str) -> str:
    return drop_markers(text).replace("Ababa", "Abeba")


def rename(text: str) -> str:
    return drop_markers(text).replace("Mogadishu", "Xamar")


def qa(record_id: str, context: str, answer: str, question: str = "What is the capital?") -> dict:
    start = context.index(answer)
    return {
        "id": record_id,
        "language": "en",
        "question": question,
        "context": context,
        "answers": {"text": [answer], "answer_start": [start]},
    }


def check_offsets(records: list[dict]) -> None:
    for record in records:
        (text,), (start,) = record["answers"]["text"], record["answers"]["answer_start"]
        assert record["context"][start : start + len(text)] == text


# --- mark_answer ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "pair"),
    [
        ("The capital of Kenya is Nairobi.", ("[", "]")),
        ("The river [Nile] flows to Nairobi.", ("{", "}")),
        ("A closing ] alone blocks brackets: Nairobi.", ("{", "}")),
        ("Array a[0] = {1} in Nairobi.", ("<<", ">>")),
        ("One < alone blocks << >>, as do [ and }: Nairobi.", ("«", "»")),
    ],
)
def test_mark_answer_takes_the_first_free_pair(context, pair):
    start = context.index("Nairobi")
    marked, used = mark_answer(context, start, "Nairobi")
    assert used == pair
    assert marked == context[:start] + pair[0] + "Nairobi" + pair[1] + context[start + len("Nairobi") :]


def test_mark_answer_keeps_quotes_in_place():
    context = 'He said "the capital is Nairobi" and "it is large".'
    marked, pair = mark_answer(context, context.index("Nairobi"), "Nairobi")
    assert pair == ("[", "]")
    assert marked == 'He said "the capital is [Nairobi]" and "it is large".'


def test_mark_answer_rejects_a_wrong_offset_or_empty_answer():
    with pytest.raises(ValueError, match="not at answer_start 3"):
        mark_answer("The capital of Kenya is Nairobi.", 3, "Nairobi")
    with pytest.raises(ValueError, match="not at answer_start"):
        mark_answer("The capital of Kenya is Nairobi.", 0, "")


def test_mark_answer_rejects_a_context_holding_every_marker_pair():
    context = " ".join(f"{opening}x{closing}" for opening, closing in MARKER_PAIRS) + " in Nairobi."
    with pytest.raises(ValueError, match="every marker pair"):
        mark_answer(context, context.index("Nairobi"), "Nairobi")


# --- recover_marked_span -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("translation", "markers", "expected"),
    [
        ("Mji ni [Nairobi].", ("[", "]"), ("Mji ni Nairobi.", "Nairobi", 7)),
        ("Mji ni [ Nairobi ] .", ("[", "]"), ("Mji ni Nairobi .", "Nairobi", 7)),
        ("Mji ni [ Nairobi ].", ("[", "]"), ("Mji ni Nairobi .", "Nairobi", 7)),  # inner space: a word boundary
        ("Mji ni  [Nairobi]  sasa.", ("[", "]"), ("Mji ni Nairobi sasa.", "Nairobi", 7)),
        ("[ Nairobi ] ni mji.", ("[", "]"), ("Nairobi ni mji.", "Nairobi", 0)),
        ("Mji ni [Nairobi]", ("[", "]"), ("Mji ni Nairobi", "Nairobi", 7)),
        ("Mji ni[Nairobi]sasa", ("[", "]"), ("Mji niNairobisasa", "Nairobi", 6)),  # no space: none invented
        ("首都是[内罗毕]。", ("[", "]"), ("首都是内罗毕。", "内罗毕", 3)),
        ("Ni {mji  mkuu wa} Kenya.", ("{", "}"), ("Ni mji  mkuu wa Kenya.", "mji  mkuu wa", 3)),
        ("a[0] ni <<Nairobi>>.", ("<<", ">>"), ("a[0] ni Nairobi.", "Nairobi", 8)),
        ("Mji ni\n[Nairobi] sasa.", ("[", "]"), ("Mji ni\nNairobi sasa.", "Nairobi", 7)),
        ("Mji ni « Nairobi »", ("«", "»"), ("Mji ni Nairobi", "Nairobi", 7)),
    ],
)
def test_recover_marked_span_is_exact(translation, markers, expected):
    recovered = recover_marked_span(translation, markers)
    assert recovered == expected
    context, answer, start = recovered
    assert context[start : start + len(answer)] == answer


@pytest.mark.parametrize(
    ("translation", "markers"),
    [
        ("Mji ni Nairobi.", ("[", "]")),  # both lost
        ("Mji ni Nairobi].", ("[", "]")),  # open lost
        ("Mji ni [Nairobi.", ("[", "]")),  # close lost
        ("Mji [ni] [Nairobi].", ("[", "]")),  # duplicated pair
        ("Mji ni [Nairobi]].", ("[", "]")),  # duplicated close
        ("Mji ni [[Nairobi].", ("[", "]")),  # duplicated open
        ("Mji ni ]Nairobi[.", ("[", "]")),  # misordered
        ("Mji ni [ ].", ("[", "]")),  # empty answer
        ("Mji ni [].", ("[", "]")),
        ("Mji ni <<Nairobi> >.", ("<<", ">>")),  # broken close marker
        ("Mji ni <<Nairobi>> < sasa.", ("<<", ">>")),  # stray marker fragment
        ("Mji ni <<Nairobi>>.", ("[", "]")),  # another pair than the one used
    ],
)
def test_recover_marked_span_rejects_broken_markers(translation, markers):
    assert recover_marked_span(translation, markers) is None


@pytest.mark.parametrize(
    ("translation", "markers", "expected"),
    [
        ("Mji ni [ Nairobi ] .", ("[", "]"), "Mji ni Nairobi ."),
        ("Mji ni [Nairobi]].", ("[", "]"), "Mji ni Nairobi."),
        ("[Nairobi] ni mji", ("[", "]"), "Nairobi ni mji"),
        ("Mji ni ]Nairobi[", ("[", "]"), "Mji ni Nairobi"),
        ("a<<b>>c", ("<<", ">>"), "abc"),
        ("a << b > c", ("<<", ">>"), "a b c"),
    ],
)
def test_strip_markers_leaves_single_spaces(translation, markers, expected):
    assert strip_markers(translation, markers) == expected


# --- find_answer ---------------------------------------------------------------------------------------------------


def test_find_answer_exact_takes_the_first_occurrence():
    assert find_answer("Nairobi ni Nairobi.", "Nairobi") == ("Nairobi", 0, "exact")
    assert find_answer("Mji ni Nairobi.", " Nairobi ") == ("Nairobi", 7, "exact")


def test_find_answer_case_insensitive_returns_the_context_text():
    assert find_answer("le mji ni nairobi.", "Nairobi") == ("nairobi", 10, "exact")
    # str.lower() turns "İ" into two characters; the offset must still be that of the original context.
    context = "İzmir na ISTANBUL"
    text, start, method = find_answer(context, "Istanbul")
    assert (text, start, method) == ("ISTANBUL", 9, "exact")
    assert context[start : start + len(text)] == text


def test_find_answer_fuzzy_trims_punctuation_and_respects_the_threshold():
    # ratio("nairobbi", "nairobi") = 14 / 15
    assert find_answer("Mji ni Nairobbi.", "Nairobi") == ("Nairobbi", 7, "fuzzy")
    assert find_answer("Mji ni Nairobbi.", "Nairobi", threshold=0.95) is None
    assert find_answer("Le mji ni Addis Abeba, sasa.", "Addis Ababa") == ("Addis Abeba", 10, "fuzzy")


def test_find_answer_gives_none_when_nothing_is_close():
    assert find_answer("Mji ni Xamar.", "Mogadishu") is None
    assert find_answer("Mji ni Nairobi.", "  ") is None
    assert find_answer("", "Nairobi") is None


# --- project_qa_records --------------------------------------------------------------------------------------------


def test_projection_through_markers_translates_every_field():
    record = qa("k1", "The capital of Kenya is Nairobi.", "Nairobi", "What is the capital of Kenya?")
    mt = FakeMT()
    projected, failed, stats = project_qa_records([record], mt, "sw")
    assert failed == []
    assert projected == [
        {
            "id": "k1",
            "language": "sw",
            "question": "Nini ni le mji wa Kenya?",
            "context": "Le mji wa Kenya ni Nairobi.",
            "answers": {"text": ["Nairobi"], "answer_start": [19]},
        }
    ]
    # One batch of marked contexts and one of questions; no answer batch when no marker was lost.
    assert mt.calls == [["The capital of Kenya is [Nairobi]."], ["What is the capital of Kenya?"]]
    assert stats.as_dict() == {
        "language": "sw",
        "total": 1,
        "markers": 1,
        "exact_fallback": 0,
        "fuzzy_fallback": 0,
        "failed": 0,
        "success_rate": 1.0,
    }


def authors_offset(context: str, answer_start: int) -> tuple[str, int]:
    """The authors' process_qa: strip every quote and shift by the total number removed (their bug, for contrast)."""
    return context.replace('"', ""), answer_start - context.count('"')


def test_quotes_after_the_answer_keep_the_offset_exact():
    context = 'He said "the capital of Kenya is Nairobi" and "it is large".'
    record = qa("q1", context, "Nairobi")
    clean, shifted = authors_offset(context, record["answers"]["answer_start"][0])
    assert clean[shifted : shifted + len("Nairobi")] != "Nairobi"  # three quotes follow the answer

    projected, failed, stats = project_qa_records([record], FakeMT(), "sw")
    assert failed == [] and stats.markers == 1
    (result,) = projected
    assert result["context"] == 'Yeye alisema "le mji wa Kenya ni Nairobi" na "hiyo ni kubwa".'
    assert result["answers"] == {"text": ["Nairobi"], "answer_start": [33]}
    check_offsets(projected)


def test_quotes_added_by_the_mt_do_not_widen_the_span():
    record = qa("q2", "The capital of Kenya is Nairobi.", "Nairobi")
    projected, _, stats = project_qa_records([record], FakeMT({"Kenya": lambda text: f'"{text}"'}), "sw")
    assert stats.markers == 1
    assert projected[0]["context"] == '"Le mji wa Kenya ni Nairobi."'
    assert projected[0]["answers"] == {"text": ["Nairobi"], "answer_start": [20]}


def test_contexts_with_brackets_switch_to_braces_and_keep_their_brackets():
    record = qa("b1", "The river [Nile] is the longest river in Africa.", "Africa")
    mt = FakeMT()
    projected, failed, stats = project_qa_records([record], mt, "sw")
    assert mt.calls[0] == ["The river [Nile] is the longest river in {Africa}."]
    assert failed == [] and stats.markers == 1
    assert projected[0]["context"] == "Le mto [Nile] ni le mrefu mto katika Africa."
    assert projected[0]["answers"] == {"text": ["Africa"], "answer_start": [37]}
    check_offsets(projected)


def test_mixed_batch_counts_every_path():
    records = [
        qa("markers", "The capital of Kenya is Nairobi.", "Nairobi"),
        qa("padded", "The capital of Uganda is Kampala.", "Kampala"),
        qa("exact", "The capital of Tanzania is Dodoma.", "Dodoma"),
        qa("case", "The capital of Rwanda is Kigali.", "Kigali"),
        qa("fuzzy", "The capital of Ethiopia is Addis Ababa.", "Addis Ababa"),
        qa("duplicate", "The capital of Ghana is Accra.", "Accra"),
        qa("lost", "The capital of Somalia is Mogadishu.", "Mogadishu"),
        qa("unmarkable", "Set [a], {b}, <c> and «d» in Cairo.", "Cairo"),
    ]
    mt = FakeMT(
        {
            "Kampala": pad_inside,
            "Dodoma": drop_markers,
            "Kigali": lowercase_without_markers,
            "Ababa": misspell,
            "Accra": duplicate_close,
            "Mogadishu": rename,
        }
    )
    projected, failed, stats = project_qa_records(records, mt, "sw")

    assert failed == ["lost", "unmarkable"]
    assert [record["id"] for record in projected] == ["markers", "padded", "exact", "case", "fuzzy", "duplicate"]
    answers = {record["id"]: record["answers"]["text"][0] for record in projected}
    assert answers == {
        "markers": "Nairobi",
        "padded": "Kampala",
        "exact": "Dodoma",
        "case": "kigali",
        "fuzzy": "Addis Abeba",
        "duplicate": "Accra",
    }
    contexts = {record["id"]: record["context"] for record in projected}
    assert contexts["padded"] == "Le mji wa Uganda ni Kampala ."
    assert contexts["duplicate"] == "Le mji wa Ghana ni Accra."
    assert all(record["language"] == "sw" and record["question"] == "Nini ni le mji?" for record in projected)
    check_offsets(projected)

    assert (stats.total, stats.markers, stats.exact_fallback, stats.fuzzy_fallback, stats.failed) == (8, 2, 3, 1, 2)
    assert stats.as_dict()["success_rate"] == pytest.approx((8 - 2) / 8)

    # The unmarkable record is never translated; answers only for lost markers; questions only for projected ones.
    contexts_call, answers_call, questions_call = mt.calls
    assert len(contexts_call) == 7 and not any("Cairo" in text for text in contexts_call)
    assert answers_call == ["Dodoma", "Kigali", "Addis Ababa", "Accra", "Mogadishu"]
    assert questions_call == ["What is the capital?"] * 6


def test_records_without_an_answer_are_counted_as_failed():
    record = qa("k1", "The capital of Kenya is Nairobi.", "Nairobi")
    empty = {**record, "id": "none", "answers": {"text": [], "answer_start": []}}
    projected, failed, stats = project_qa_records([empty, record], FakeMT(), "sw")
    assert failed == ["none"] and [r["id"] for r in projected] == ["k1"]
    assert stats.as_dict()["success_rate"] == 0.5


def test_a_wrong_source_offset_raises_with_the_record_id():
    record = qa("bad", "The capital of Kenya is Nairobi.", "Nairobi")
    record["answers"]["answer_start"] = [2]
    with pytest.raises(ValueError, match="Record bad"):
        project_qa_records([record], FakeMT(), "sw")


def test_a_translator_returning_the_wrong_count_raises():
    record = qa("k1", "The capital of Kenya is Nairobi.", "Nairobi")
    with pytest.raises(ValueError, match="returned 0 contexts for 1"):
        project_qa_records([record], lambda texts: [], "sw")


def test_empty_input_and_stats_without_records():
    projected, failed, stats = project_qa_records([], FakeMT(), "sw")
    assert projected == [] and failed == []
    assert stats.as_dict()["success_rate"] == 0.0
    assert ProjectionStats("sw").as_dict() == {
        "language": "sw",
        "total": 0,
        "markers": 0,
        "exact_fallback": 0,
        "fuzzy_fallback": 0,
        "failed": 0,
        "success_rate": 0.0,
    }
