"""flare-xlt: FLARE language fusion for parameter-efficient cross-lingual transfer, on PEFT LoRA."""

from .lazy import lazy_attributes

__version__ = "0.1.0"
__getattr__, __all__ = lazy_attributes(
    __name__,
    {
        ".adapter.config": ("FUSION_NAMES", "FlareConfig"),
        ".adapter.layer": ("FlareLinear",),
        ".adapter.model": ("FlareModel", "get_flare_model", "keep_trainables_in_float32"),
        ".predictor": ("FlarePredictor",),
    },
)
