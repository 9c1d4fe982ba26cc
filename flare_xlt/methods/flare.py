"""FLARE and FLARE-MT: a new LoRA whose bottleneck fuses an English representation of each example.

FLARE reads the English side through the same network (a source pass); FLARE-MT reads an MT encoder's states of
it, projected to the model's width, and so runs no source pass.
"""

from .base import FUSION_SETTINGS, LORA_SETTINGS, SOURCE_PASS_SETTINGS, Method

FLARE = Method(
    name="flare",
    summary="LoRA fusing the English translation's hidden states into its bottleneck (FLARE)",
    view="paired",
    reads_test_translation=True,
    trains=True,
    fuses=True,
    adapter_settings=(*LORA_SETTINGS, *FUSION_SETTINGS, *SOURCE_PASS_SETTINGS),
)

FLARE_MT = Method(
    name="flare-mt",
    summary="FLARE fusing an MT encoder's states of the target text instead of a source pass (FLARE-MT)",
    view="target",
    reads_test_translation=False,
    trains=True,
    fuses=True,
    needs_mt_states=True,
    adapter_settings=(*LORA_SETTINGS, *FUSION_SETTINGS),
)
