"""What the FLARE layers of one model read during a forward: the bound source and the pairing of each stream."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .token_pairing import PositionTracker, TokenAlignment

INPUT_STREAM = "input"  # tokens of input_ids (the encoder for encoder-decoder models)
DECODER_STREAM = "decoder"  # decoder tokens of encoder-decoder models


@dataclass
class BoundSource:
    inputs: dict[str, torch.Tensor]  # fused module name -> (B, S, d); modules that read one tensor share it
    masks: dict[str, torch.Tensor]  # stream -> (B, S) mask of real source tokens

    @property
    def batch_size(self) -> int:
        return next(iter(self.masks.values())).shape[0]

    def repeat_rows(self, times: int) -> BoundSource:
        """Each row repeated `times` times in place, as generate() expands the batch for beams."""
        expanded: dict[int, torch.Tensor] = {}
        for tensor in self.inputs.values():
            expanded.setdefault(id(tensor), tensor.repeat_interleave(times, dim=0))
        return BoundSource(
            {name: expanded[id(tensor)] for name, tensor in self.inputs.items()},
            {stream: mask.repeat_interleave(times, dim=0) for stream, mask in self.masks.items()},
        )


@dataclass
class FlareState:
    """What the FLARE layers of one model read; shared by all of them."""

    capturing: bool = False
    source: BoundSource | None = None
    alignments: dict[str, TokenAlignment] = field(default_factory=dict)
    open_bindings: int = 0
    allow_batch_expansion: bool = False
    positions: PositionTracker = field(default_factory=PositionTracker)

    def source_input(self, module_name: str) -> torch.Tensor | None:
        return None if self.source is None else self.source.inputs[module_name]
