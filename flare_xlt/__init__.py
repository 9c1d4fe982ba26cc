"""flare-xlt: FLARE language fusion for parameter-efficient cross-lingual transfer, on PEFT LoRA."""

from .config import FlareConfig
from .fusion import FUSION_NAMES
from .layer import FlareLinear
from .model import FlareModel, get_flare_model, keep_trainables_in_float32

__all__ = [
    "FUSION_NAMES",
    "FlareConfig",
    "FlareLinear",
    "FlareModel",
    "get_flare_model",
    "keep_trainables_in_float32",
]
__version__ = "0.1.0"
