"""Task language codes -> NLLB-200 language codes."""

from __future__ import annotations

import warnings

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
