"""The fusion functions phi(s, t) of FLARE, acting inside the LoRA bottleneck.

s = A·x_s and t = A·x_t are rank-r codes of the source (English) and target tokens, aligned position by position:
both are (B, T, r), where row i of s is the source token paired with target token i. The result, also (B, T, r), goes
through lora_B. Position-wise functions only combine s_i with t_i. Position-mixing functions (matmul*,
cross_attention) let position i read target positions j; `allowed` (B, T, T) says which j, so that decoders can
exclude future and padded tokens. Without a mask they mix every position, exactly as the authors' code does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import FUSION_NAMES
from .config import POSITION_MIXING_FUSIONS as POSITION_MIXING_FUSIONS  # where layer.py and model.py read it

POSITIONWISE_FUSIONS = {
    "add": lambda s, t: s + t,
    "mul": lambda s, t: s * t,
    "add_relu": lambda s, t: F.relu(s) + F.relu(t),
    "mul_relu": lambda s, t: F.relu(s) * F.relu(t),
}


def matmul_fusion(s: torch.Tensor, t: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """S·Tᵀ·T with disallowed (future or padded) target positions removed from the sum."""
    scores = s @ t.transpose(1, 2)  # (B, T, T): query i = source token i, key j = target token j
    if allowed is not None:
        scores = scores * allowed
    return scores @ t  # (B, T, r)


class FusionCrossAttention(nn.Module):
    """Source queries attend over target keys/values inside the r-dim bottleneck.

    As in the paper: Q = W_q s + b, K = W_k t + b, V = W_v t + b, softmax(QKᵀ/√d_head)·V per head, heads
    concatenated, no output projection and no residual.
    """

    def __init__(self, r: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_query = nn.Linear(r, r)
        self.to_key = nn.Linear(r, r)
        self.to_value = nn.Linear(r, r)
        self.dropout = nn.Dropout(dropout)

    def forward(self, s: torch.Tensor, t: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        batch, length, r = s.shape
        head_dim = r // self.heads

        def split_heads(codes: torch.Tensor) -> torch.Tensor:
            return codes.view(batch, -1, self.heads, head_dim).transpose(1, 2)  # (B, h, T, r/h)

        query, key, value = split_heads(self.to_query(s)), split_heads(self.to_key(t)), split_heads(self.to_value(t))
        scores = query @ key.transpose(-1, -2) / math.sqrt(head_dim)  # (B, h, T, T)
        if allowed is not None:
            # A finite fill keeps rows with no allowed key (pads) free of NaN; the layer discards those rows.
            scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        weights = self.dropout(scores.softmax(dim=-1))
        return (weights @ value).transpose(1, 2).reshape(batch, length, r)  # (B, T, r)


def fuse(
    fusion: str,
    s: torch.Tensor,
    t: torch.Tensor,
    allowed: torch.Tensor | None = None,
    cross_attention: FusionCrossAttention | None = None,
) -> torch.Tensor:
    """phi(s, t) for the named fusion; s and t are (B, T, r)."""
    if fusion in POSITIONWISE_FUSIONS:
        return POSITIONWISE_FUSIONS[fusion](s, t)
    if fusion == "matmul":
        return matmul_fusion(s, t, allowed)
    if fusion == "matmul_relu":
        return matmul_fusion(F.relu(s), F.relu(t), allowed)
    if fusion == "cross_attention":
        return cross_attention(s, t, allowed)
    raise ValueError(f"Unknown fusion {fusion!r}; valid choices: {', '.join(FUSION_NAMES)}.")
