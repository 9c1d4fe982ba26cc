"""Machine translation: NLLB translate-train / translate-test data, QA span projection, FLARE-MT encoder states."""

from .cache import TranslationCacheWarning
from .languages import NLLB_CODES, NLLB_FALLBACKS, FallbackLanguageWarning, nllb_code
from .translator import DEFAULT_MT_MODEL, GenerationSettings, TranslationInputWarning, TranslationReport, Translator

__all__ = [
    "DEFAULT_MT_MODEL",
    "NLLB_CODES",
    "NLLB_FALLBACKS",
    "FallbackLanguageWarning",
    "GenerationSettings",
    "TranslationCacheWarning",
    "TranslationInputWarning",
    "TranslationReport",
    "Translator",
    "nllb_code",
]
