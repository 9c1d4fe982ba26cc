"""Transfer methods, one module per method (or family), registered here by name in report order.

To add a method: write its module (a `Method`, see base.py; a subclass where it builds its model differently) and
add it to `REGISTRY`. The workflow (transfer, evaluate, recipes, reports, the demo) reads everything else from it.
"""

from __future__ import annotations

from .base import LORA_SETTINGS, Method
from .ensemble import ENSEMBLE
from .flare import FLARE, FLARE_MT
from .input_fusion import INPUT_FUSION
from .linear_probe import LINEAR_PROBE
from .lora import LORA
from .translate_test import TRANSLATE_TEST
from .x_mixup import X_MIXUP
from .zero_shot import ZERO_SHOT

REGISTRY: dict[str, Method] = {
    method.name: method
    for method in (LINEAR_PROBE, ZERO_SHOT, TRANSLATE_TEST, LORA, INPUT_FUSION, X_MIXUP, ENSEMBLE, FLARE, FLARE_MT)
}
METHODS = tuple(REGISTRY)
TRAINING_METHODS = tuple(name for name, method in REGISTRY.items() if method.trains)
# The stage-1 run trains a LoRA (and the task head) on English: it reads the LoRA settings only.
STAGE1_ADAPTER_SETTINGS = LORA_SETTINGS


def fuses(name: str, variants: dict[str, dict] | None = None) -> bool:
    """Whether the method `name` (or a recipe variant of one, from `variants`) trains a fusing adapter (FLARE,
    FLARE-MT), which reports highlight. Names neither registered nor a variant are not."""
    registered = (variants or {}).get(name, {}).get("method", name)
    return registered in REGISTRY and REGISTRY[registered].fuses


def get_method(name: str) -> Method:
    """The registered method called `name`; an unknown name is refused with the valid choices."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown method {name!r}; valid choices: {', '.join(METHODS)}.")
    return REGISTRY[name]


__all__ = ["METHODS", "REGISTRY", "STAGE1_ADAPTER_SETTINGS", "TRAINING_METHODS", "Method", "fuses", "get_method"]
