"""Each fusion function, seen through a real fused layer, matches its formula computed independently here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import batch_for, build, randomize_lora

from flare_xlt import FUSION_NAMES, FlareConfig, get_flare_model

MODULE = {"llama": "model.layers.0.self_attn.q_proj", "xlmr-cls": "roberta.encoder.layer.0.attention.self.value"}


def reference_phi(fusion, s, t, allowed, layer):
    """phi on one row: s, t (T, r), allowed (T, T). Written out without the library's code."""
    if fusion == "add":
        return s + t
    if fusion == "mul":
        return s * t
    if fusion == "add_relu":
        return F.relu(s) + F.relu(t)
    if fusion == "mul_relu":
        return F.relu(s) * F.relu(t)
    if fusion in ("matmul", "matmul_relu"):
        if fusion == "matmul_relu":
            s, t = F.relu(s), F.relu(t)
        out = torch.zeros_like(s)
        for i in range(s.shape[0]):
            for j in range(t.shape[0]):
                if allowed[i, j]:
                    out[i] += torch.dot(s[i], t[j]) * t[j]
        return out
    attention = layer.lora_fusion_attention["flare"]
    heads = attention.heads
    d = s.shape[1] // heads
    q, k, v = attention.to_query(s), attention.to_key(t), attention.to_value(t)
    out = torch.zeros_like(s)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        for i in range(s.shape[0]):
            keys = [j for j in range(t.shape[0]) if allowed[i, j]]
            if not keys:
                continue
            scores = torch.stack([torch.dot(q[i, cols], k[j, cols]) / math.sqrt(d) for j in keys])
            weights = scores.softmax(0)
            out[i, cols] = sum(w * v[j, cols] for w, j in zip(weights, keys, strict=True))
    return out


def pairs(source_mask, target_mask, mask_padding):
    """(target position, source position) pairs of one row."""
    if not mask_padding:
        return [(p, p) for p in range(len(target_mask)) if p < len(source_mask)]
    source_tokens = [p for p, real in enumerate(source_mask) if real]
    target_tokens = [p for p, real in enumerate(target_mask) if real]
    return list(zip(target_tokens, source_tokens, strict=False))


@pytest.mark.parametrize("mask_padding", [True, False], ids=["masked", "authors"])
@pytest.mark.parametrize("kind", ["xlmr-cls", "llama"])
@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_fused_layer_matches_formula(fusion, kind, mask_padding):
    config = FlareConfig(fusion=fusion, cross_attention_heads=2, mask_source_padding=mask_padding)
    flare = get_flare_model(build(kind), config)
    randomize_lora(flare)
    inputs = batch_for(kind, target_length=7, source_length=5)
    layer = flare.get_base_model().get_submodule(MODULE[kind])

    # The first block's inputs do not depend on any adapter, so the plain base model gives x_s and x_t.
    seen = []
    handle = layer.base_layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with flare.disable_adapter(), torch.no_grad():
        flare(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
        flare(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    handle.remove()
    x_source, x_target = seen

    outputs = []
    handle = layer.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    with torch.no_grad():
        flare(**inputs)
    handle.remove()
    actual = outputs[-1]  # the last call is the target pass

    A, B = layer.lora_A["flare"].weight, layer.lora_B["flare"].weight
    scaling = config.lora_alpha / config.r
    causal = kind == "llama"
    expected = torch.empty_like(actual)
    with torch.no_grad():
        for row in range(x_target.shape[0]):
            t = x_target[row] @ A.T
            s_full = x_source[row] @ A.T
            target_mask = inputs["attention_mask"][row].tolist()
            paired = dict(pairs(inputs["source_attention_mask"][row].tolist(), target_mask, mask_padding))
            length = len(target_mask)
            s = torch.stack([s_full[paired[p]] if p in paired else torch.zeros_like(t[0]) for p in range(length)])
            key_ok = (
                torch.tensor(target_mask, dtype=torch.bool) if mask_padding else torch.ones(length, dtype=torch.bool)
            )
            allowed = key_ok.expand(length, length).clone()
            if causal:
                allowed &= torch.ones(length, length, dtype=torch.bool).tril()
            fused = reference_phi(fusion, s, t, allowed, layer)
            code = torch.stack([fused[p] if p in paired else t[p] for p in range(length)])
            expected[row] = layer.base_layer(x_target[row]) + scaling * code @ B.T
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    # The fusion changed something: the same layer without a source is plain LoRA.
    plain = layer.base_layer(x_target) + scaling * (x_target @ A.T) @ B.T
    assert not torch.allclose(actual, plain, atol=1e-4)
