"""Input-level fusion: translate-train LoRA whose input is the English text and the target text in one sequence."""

from .base import LORA_SETTINGS, Method

INPUT_FUSION = Method(
    name="input-fusion",
    summary="translate-train LoRA reading the English and the target text concatenated",
    view="input_fusion",
    reads_test_translation=True,
    trains=True,
    adapter_settings=LORA_SETTINGS,
)
