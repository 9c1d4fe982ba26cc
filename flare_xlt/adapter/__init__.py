"""The FLARE adapter, usable alone like a PEFT tuner: its config, the fused LoRA layer and fusion functions, token
pairing, the source pass and its cache, and FlareModel. It imports nothing from the experiment workflow (tasks, MT,
methods, pipeline, reports, demo), which is built on it."""

from ..lazy import lazy_attributes

__getattr__, __all__ = lazy_attributes(
    __name__,
    {
        ".config": ("FUSION_NAMES", "FlareConfig"),
        ".layer": ("FlareLinear",),
        ".model": ("FlareModel", "get_flare_model", "keep_trainables_in_float32"),
    },
)
