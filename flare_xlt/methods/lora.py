"""Translate-train LoRA: a new LoRA on the stage-1 model, trained on the English training set's translation."""

from .base import LORA_SETTINGS, Method

LORA = Method(
    name="lora",
    summary="a new LoRA trained on the translated training set (translate-train)",
    view="target",
    reads_test_translation=False,
    trains=True,
    adapter_settings=LORA_SETTINGS,
)
