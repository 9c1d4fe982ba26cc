"""Task language codes -> NLLB-200 language codes and MADLAD-400 target tokens."""

from __future__ import annotations

import warnings

# The MT model of translate, mt-states and recipes unless another is named (NLLB-200, 600M parameters).
DEFAULT_MT_MODEL = "facebook/nllb-200-distilled-600M"
NLLB_CODES = {
    "en": "eng_Latn",
    # XNLI
    "ar": "arb_Arab",
    "bg": "bul_Cyrl",
    "de": "deu_Latn",
    "el": "ell_Grek",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "hi": "hin_Deva",
    "ru": "rus_Cyrl",
    "sw": "swh_Latn",
    "th": "tha_Thai",
    "tr": "tur_Latn",
    "ur": "urd_Arab",
    "vi": "vie_Latn",
    "zh": "zho_Hans",
    # TyDiQA
    "bn": "ben_Beng",
    "fi": "fin_Latn",
    "id": "ind_Latn",
    "ko": "kor_Hang",
    "te": "tel_Telu",
    # NusaX
    "ace": "ace_Latn",
    "ban": "ban_Latn",
    "bjn": "bjn_Latn",
    "bug": "bug_Latn",
    "jav": "jav_Latn",
    "min": "min_Latn",
    "sun": "sun_Latn",
}
# NusaX languages NLLB-200 does not cover: Indonesian stands in for them, as in the authors' code. Translations into
# these "languages" are Indonesian text, which a user must know when reading their results.
NLLB_FALLBACKS = {"bbc": "ind_Latn", "mad": "ind_Latn", "nij": "ind_Latn"}
LANGUAGE_NAMES = {"bbc": "Toba Batak", "mad": "Madurese", "nij": "Ngaju"}


class FallbackLanguageWarning(UserWarning):
    """A language without NLLB support is translated through a proxy language."""


def nllb_code(language: str) -> str:
    """The NLLB code of a task language code; an NLLB code itself (e.g. 'swh_Latn') passes through."""
    if language in NLLB_CODES:
        return NLLB_CODES[language]
    if language in NLLB_FALLBACKS:
        proxy = NLLB_FALLBACKS[language]
        warnings.warn(
            f"NLLB-200 does not cover {LANGUAGE_NAMES[language]} ({language}); using {proxy} (Indonesian) in its "
            "place, as the authors do: these 'translations' are Indonesian text.",
            FallbackLanguageWarning,
            stacklevel=2,
        )
        return proxy
    if "_" in language and len(language) == 8:
        return language
    valid = sorted([*NLLB_CODES, *NLLB_FALLBACKS])
    raise ValueError(f"Unknown language code {language!r}; valid choices: {', '.join(valid)} (or an NLLB code).")


# MADLAD-400 (google/madlad400-*-mt, a T5 model) is told the target language by a `<2xx>` token in front of the
# source text, xx an ISO 639-1 code where one exists, else ISO 639-3; it reads the source language itself. Task codes
# map to themselves except where MADLAD uses the 2-letter code. Whether a given checkpoint knows a code is checked
# against its tokenizer before any text is translated.
MADLAD_CODES = {code: code for code in [*NLLB_CODES, *NLLB_FALLBACKS]} | {"jav": "jv", "sun": "su"}
LANGUAGE_SCHEMES = ("nllb", "madlad")


def madlad_code(language: str) -> str:
    """The MADLAD-400 target token of a task language code (`sw` -> `<2sw>`); a `<2xx>` token itself passes through."""
    if language.startswith("<2") and language.endswith(">"):
        return language
    if language in MADLAD_CODES:
        return f"<2{MADLAD_CODES[language]}>"
    raise ValueError(
        f"Unknown language code {language!r}; valid choices: {', '.join(sorted(MADLAD_CODES))} (or a MADLAD token "
        "such as '<2yo>')."
    )


def language_code(scheme: str, language: str) -> str:
    """The code `scheme` (nllb or madlad) gives a task language code."""
    if scheme == "nllb":
        return nllb_code(language)
    if scheme == "madlad":
        return madlad_code(language)
    raise ValueError(f"Unknown language scheme {scheme!r}; valid choices: {', '.join(LANGUAGE_SCHEMES)}.")
