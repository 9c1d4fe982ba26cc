"""Machine translation: NLLB translate-train / translate-test data, QA span projection, FLARE-MT encoder states."""

from ..lazy import lazy_attributes

__getattr__, __all__ = lazy_attributes(
    __name__,
    {
        ".cache": ("TranslationCacheWarning",),
        ".languages": ("DEFAULT_MT_MODEL", "NLLB_CODES", "NLLB_FALLBACKS", "FallbackLanguageWarning", "nllb_code"),
        ".translator": ("GenerationSettings", "TranslationInputWarning", "TranslationReport", "Translator"),
    },
)
