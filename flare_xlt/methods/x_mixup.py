"""X-Mixup: a new LoRA trained with gates that mix the English side's hidden states into the target side's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import LORA_SETTINGS, Method


@dataclass(frozen=True)
class XMixup(Method):
    def wrap(self, flare):
        from ..xmixup import XMixupConfig, XMixupModel

        return XMixupModel(flare, XMixupConfig())

    def restore(self, flare, adapter: Path):
        from ..xmixup import XMixupModel

        return XMixupModel.from_pretrained(flare, adapter, adapter_loaded=True)


X_MIXUP = XMixup(
    name="x-mixup",
    summary="translate-train LoRA with X-Mixup's gated mixing of English hidden states",
    view="paired",
    reads_test_translation=True,
    trains=True,
    adapter_settings=LORA_SETTINGS,
    architectures=("encoder",),
    unfit_reason="x-mixup mixes encoder hidden states; it runs on encoder models only.",
)
