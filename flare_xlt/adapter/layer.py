"""FlareLinear: PEFT's LoRA Linear with the source fused inside the rank-r bottleneck.

    y = W0·x_t + Σ_other adapters + (α/r)·B·φ(A·x_s, A·x_t)

PEFT builds this class for every targeted nn.Linear (also bitsandbytes Linear4bit, a subclass) through
`LoraConfig._register_custom_module`. Everything PEFT does for a LoRA layer still holds: other adapters such as a
frozen stage-1 task LoRA, merging, dtype casting of the input, dropout and scaling. What is added:

- `fusion_by_adapter[name]`: for the FLARE adapter(s) of this layer, the fusion function, or None where the layer
  is a LoRA target that does not receive the source.
- `flare_state`: shared with every FLARE layer of the model; it holds the bound source and the token alignment of
  the current forward (see model.py).

In the source pass (`flare_state.capturing`) the FLARE adapters are off and every other adapter runs as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from .fusion import POSITION_MIXING_FUSIONS, FusionCrossAttention, fuse
from .precision import autocast_dtype


class FlareLinear(LoraLinear):
    adapter_layer_names = (*LoraLinear.adapter_layer_names, "lora_fusion_attention")

    flare_state = None
    flare_module_name: str = ""
    flare_stream: str = "input"
    flare_unpaired: str = "lora"
    _hide_flare_adapters = False

    def update_layer(self, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # PEFT calls update_layer from Linear.__init__, after nn.Module.__init__ and before anything reads
        # adapter_layer_names, which makes it the one place to create the extra per-adapter containers.
        if "lora_fusion_attention" not in self._modules:
            self.lora_fusion_attention = nn.ModuleDict()
            self.fusion_by_adapter: dict[str, str | None] = {}
        super().update_layer(adapter_name, *args, **kwargs)

    def configure_flare(self, adapter_name: str, fusion: str | None, heads: int = 1, dropout: float = 0.0) -> None:
        """Mark `adapter_name` as a FLARE adapter here; `fusion` None means plain LoRA that the source pass skips."""
        self.fusion_by_adapter[adapter_name] = fusion
        if fusion == "cross_attention":
            reference = self.lora_A[adapter_name].weight
            attention = FusionCrossAttention(self.r[adapter_name], heads, dropout)
            self.lora_fusion_attention[adapter_name] = attention.to(device=reference.device, dtype=reference.dtype)

    @property
    def active_adapters(self) -> list[str]:
        adapters = super().active_adapters
        if self._hide_flare_adapters:
            return [name for name in adapters if name not in self.fusion_by_adapter]
        return adapters

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        flare_adapters = [
            name for name in self.active_adapters if name in self.fusion_by_adapter and name in self.lora_A
        ]
        if (
            self.flare_state is None
            or not flare_adapters
            or self.disable_adapters
            or self.merged
            or kwargs.get("adapter_names") is not None
        ):
            return super().forward(x, *args, **kwargs)

        self._hide_flare_adapters = True
        try:
            result = super().forward(x, *args, **kwargs)  # W0·x_t plus every non-FLARE adapter
        finally:
            self._hide_flare_adapters = False
        if self.flare_state.capturing:
            return result
        for adapter_name in flare_adapters:
            result = result + self._flare_update(adapter_name, x).to(result.dtype)
        return result

    def _flare_update(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        lora_A = self.lora_A[adapter_name]
        lora_B = self.lora_B[adapter_name]
        dropout = self.lora_dropout[adapter_name]
        scaling = self.scaling[adapter_name]
        target_codes = lora_A(dropout(self._cast_input_dtype(x, lora_A.weight.dtype)))  # (B, T, r)

        fusion = self.fusion_by_adapter[adapter_name]
        source_input = self.flare_state.source_input(self.flare_module_name) if fusion else None
        if source_input is None:  # the documented fallback: plain LoRA
            return lora_B(target_codes) * scaling

        alignment = self.flare_state.alignments[self.flare_stream]
        if source_input.dtype != autocast_dtype(source_input.device):
            # Under autocast the source is already in the compute dtype: every module reads (and autograd saves) the
            # one shared tensor instead of a cast of its own.
            source_input = self._cast_input_dtype(source_input, lora_A.weight.dtype)
        source_codes = lora_A(dropout(source_input))  # (B, S, r)
        aligned_source = alignment.gather(source_codes)  # (B, T, r): row i is the source token paired with token i
        has_source = alignment.has_source.unsqueeze(-1)  # (B, T, 1)
        if self.flare_unpaired == "zero_source":  # tokens without a partner compute phi(0, t)
            aligned_source = aligned_source * has_source
        fused = fuse(
            fusion,
            aligned_source,
            target_codes,
            allowed=alignment.allowed if fusion in POSITION_MIXING_FUSIONS else None,
            cross_attention=self.lora_fusion_attention[adapter_name] if fusion == "cross_attention" else None,
        )
        if self.flare_unpaired == "lora":  # tokens without a partner (pads, answers) compute plain LoRA
            fused = torch.where(has_source, fused, target_codes)
        return lora_B(fused) * scaling

    def __repr__(self) -> str:
        return "flare." + super().__repr__()
