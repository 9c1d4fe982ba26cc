"""A synthetic bilingual world: a high-resource "English" and a low-resource invented language ("Tolan") that express
the same meanings with different words, morphology, subword segmentation and word order.

Every sentence is generated from a meaning (a list of clauses), then realised in either language, so the two
realisations of one meaning are exact translations of each other. The sentiment of a review is compositional:

- a clause carries the polarity of its adjective or verb;
- negation flips a positive clause to negative and softens a negative one to neutral ("not bad");
- "A but B" takes the sentiment of B.

The label names (negative, neutral, positive) are ordinary adjectives of this English, as they are of real English:
a decoder can only learn to generate words whose embeddings pretraining has trained.

Tolan differs from English on purpose, in the ways real low-resource languages do:

- its own vocabulary: every English lemma has an invented word built from Tolan syllables;
- agglutinative morphology: negation is a prefix and past tense a suffix glued to the stem, and every intensifier
  ("very", "really", "quite") becomes reduplication ("good-good"), so one Tolan word covers several English ones;
- word order: the determiner follows the noun, the copula and the verb come last (subject-object-verb), and time
  words close the sentence instead of opening it.

MT between the two is a realisation of the meaning in the other language followed by word drops and substitutions at
a configurable rate, which models MT errors (a dropped "not" flips the label, as real MT sometimes does).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

LABELS = ("negative", "neutral", "positive")
NEGATIVE, NEUTRAL, POSITIVE = range(3)

NOUNS = (
    "food service room staff film music hotel meal coffee price view bed driver guide book phone screen battery "
    "game show garden lesson concert trip"
).split()
ADJECTIVES = {
    POSITIVE: "good great lovely excellent pleasant tasty friendly positive".split(),
    NEGATIVE: "bad awful terrible rude dirty boring poor negative".split(),
    NEUTRAL: "new old small large red blue round neutral".split(),
}
# (base form, past form): the base form follows "did not".
VERBS = {
    POSITIVE: [("like", "liked"), ("love", "loved"), ("enjoy", "enjoyed"), ("praise", "praised")],
    NEGATIVE: [("hate", "hated"), ("dislike", "disliked"), ("regret", "regretted"), ("avoid", "avoided")],
    NEUTRAL: [("see", "saw"), ("buy", "bought"), ("order", "ordered"), ("visit", "visited"), ("find", "found")],
}
SUBJECTS = ["i", "we", "they", "my friend", "my sister"]
DETERMINERS = ["the", "this", "our"]
INTENSIFIERS = ["very", "really", "quite"]
TIMES = ["yesterday", "today", "last week", "this morning"]
FUNCTION_WORDS = ["was", "but", "not", "did", "my", "last", "this", "morning", "week"]

TOLAN_ONSETS = "k t p m n s r l h w z q".split()
TOLAN_VOWELS = "a e i o u aa uu".split()
TOLAN_CODAS = ["", "", "", "n", "k", "x"]
TOLAN_NEGATION_PREFIX = "ma"
TOLAN_PAST_SUFFIX = "ta"


def label_of_clause(polarity: int, negated: bool) -> int:
    if not negated:
        return polarity
    return NEGATIVE if polarity == POSITIVE else NEUTRAL


@dataclass(frozen=True)
class Clause:
    kind: str  # "copula" (the noun was [not] [very] adj) or "verb" (subject [did not] verb the noun)
    noun: str
    determiner: str
    polarity: int
    word: str  # the adjective, or the verb's base form
    negated: bool
    intensifier: str | None = None
    subject: str | None = None

    @property
    def label(self) -> int:
        return label_of_clause(self.polarity, self.negated)


@dataclass(frozen=True)
class Meaning:
    clauses: tuple[Clause, ...]  # one clause, or two joined by "but"
    time: str | None = None

    @property
    def label(self) -> int:
        return self.clauses[-1].label  # "A but B" means B


@dataclass
class Lexicon:
    """English lemma -> Tolan word; built from a seed, each Tolan word distinct."""

    tolan: dict[str, str] = field(default_factory=dict)

    @classmethod
    def invent(cls, seed: int) -> Lexicon:
        rng = random.Random(seed)
        lemmas = [
            *NOUNS,
            *(word for words in ADJECTIVES.values() for word in words),
            *(base for verbs in VERBS.values() for base, _ in verbs),
            *(word for phrase in SUBJECTS + DETERMINERS + TIMES for word in phrase.split()),
            *FUNCTION_WORDS,
            "very",
        ]
        lexicon, used = cls(), set()
        for lemma in dict.fromkeys(lemmas):
            word = ""
            while not word or word in used:
                syllables = rng.choice((2, 2, 3, 3, 4))
                word = "".join(
                    rng.choice(TOLAN_ONSETS) + rng.choice(TOLAN_VOWELS) + rng.choice(TOLAN_CODAS)
                    for _ in range(syllables)
                )
            used.add(word)
            lexicon.tolan[lemma] = word
        return lexicon

    def __getitem__(self, lemma: str) -> str:
        return self.tolan[lemma]


def _past(base: str) -> str:
    return next(past for verbs in VERBS.values() for verb, past in verbs if verb == base)


def realise_english(meaning: Meaning) -> str:
    clauses = []
    for clause in meaning.clauses:
        if clause.kind == "copula":
            words = [clause.determiner, clause.noun, "was"]
            words += ["not"] if clause.negated else []
            words += [clause.intensifier] if clause.intensifier else []
            words.append(clause.word)
        else:
            verb = ["did", "not", clause.word] if clause.negated else [_past(clause.word)]
            words = [clause.subject, *verb, clause.determiner, clause.noun]
        clauses.append(" ".join(words))
    sentence = " but ".join(clauses)
    return f"{meaning.time} {sentence}" if meaning.time else sentence


def realise_tolan(meaning: Meaning, lexicon: Lexicon) -> str:
    clauses = []
    for clause in meaning.clauses:
        stem = lexicon[clause.word]
        if clause.intensifier:
            stem = f"{stem}-{stem}"
        if clause.negated:
            stem = TOLAN_NEGATION_PREFIX + stem
        noun_phrase = [lexicon[clause.noun], lexicon[clause.determiner]]
        if clause.kind == "copula":
            words = [*noun_phrase, stem, lexicon["was"]]
        else:
            subject = [lexicon[word] for word in clause.subject.split()]
            words = [*subject, *noun_phrase, stem + TOLAN_PAST_SUFFIX]
        clauses.append(" ".join(words))
    sentence = f" {lexicon['but']} ".join(clauses)
    if meaning.time:
        sentence += " " + " ".join(lexicon[word] for word in meaning.time.split())
    return sentence


def sample_clause(rng: random.Random, polarity: int | None = None) -> Clause:
    polarity = rng.choice((NEGATIVE, NEUTRAL, POSITIVE)) if polarity is None else polarity
    negated = rng.random() < 0.35
    common = dict(noun=rng.choice(NOUNS), determiner=rng.choice(DETERMINERS), polarity=polarity, negated=negated)
    if rng.random() < 0.6:
        intensifier = rng.choice(INTENSIFIERS) if rng.random() < 0.3 else None
        return Clause("copula", word=rng.choice(ADJECTIVES[polarity]), intensifier=intensifier, **common)
    base = rng.choice(VERBS[polarity])[0]
    return Clause("verb", word=base, subject=rng.choice(SUBJECTS), **common)


def sample_meaning(rng: random.Random) -> Meaning:
    clauses = [sample_clause(rng)]
    if rng.random() < 0.4:  # a contrast whose first clause is a distractor
        clauses.insert(0, sample_clause(rng))
    time = rng.choice(TIMES) if rng.random() < 0.3 else None
    return Meaning(tuple(clauses), time)


def vocabulary(language: str, lexicon: Lexicon) -> list[str]:
    """Every word form of a language, for MT substitutions."""
    words = [
        *NOUNS,
        *(word for words in ADJECTIVES.values() for word in words),
        *(form for verbs in VERBS.values() for verb in verbs for form in verb),
        *(word for phrase in SUBJECTS + DETERMINERS + TIMES for word in phrase.split()),
        *FUNCTION_WORDS,
        *INTENSIFIERS,
    ]
    if language == "en":
        return sorted(set(words))
    return sorted({lexicon[lemma] for lemma in lexicon.tolan})


@dataclass(frozen=True)
class NoisyMT:
    """Translation as the exact realisation in the other language, then each word dropped with probability
    error_rate / 2 and replaced by a random word of the language with probability error_rate / 2."""

    lexicon: Lexicon
    error_rate: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"mt_error_rate must be in [0, 1], got {self.error_rate}.")

    def translate(self, meaning: Meaning, into: str, key: str) -> str:
        """`key` (e.g. the example id and direction) seeds the errors, so a translation is the same on every run."""
        exact = realise_english(meaning) if into == "en" else realise_tolan(meaning, self.lexicon)
        return add_word_errors(
            exact, vocabulary(into, self.lexicon), self.error_rate, random.Random(f"{self.seed}/{key}")
        )


def add_word_errors(text: str, substitutes: list[str], error_rate: float, rng: random.Random) -> str:
    """Each word dropped with probability error_rate / 2 and replaced by a random word of `substitutes` with
    probability error_rate / 2; never empty (the first word is kept when every word was dropped). Also the degraded
    MT of the real-text benchmark (benchmarks/real)."""
    words = []
    for word in text.split():
        draw = rng.random()
        if draw < error_rate / 2:
            continue
        words.append(rng.choice(substitutes) if draw < error_rate else word)
    return " ".join(words) or text.split()[0]
