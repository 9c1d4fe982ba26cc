"""Machine translation: NLLB translate-train / translate-test data, QA span projection, FLARE-MT encoder states."""

from .languages import NLLB_CODES, NLLB_FALLBACKS, FallbackLanguageWarning, nllb_code
from .translator import DEFAULT_MT_MODEL, GenerationSettings, TranslationReport, Translator

__all__ = [
    "DEFAULT_MT_MODEL",
    "NLLB_CODES",
    "NLLB_FALLBACKS",
    "FallbackLanguageWarning",
    "GenerationSettings",
    "TranslationReport",
    "Translator",
    "nllb_code",
]
