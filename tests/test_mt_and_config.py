"""FLARE-MT source embeddings, and the errors a wrong configuration raises."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_for, build, randomize_lora

from flare_xlt import FlareConfig, get_flare_model


def test_mt_source_is_the_projection_fed_to_every_fused_module():
    flare = get_flare_model(build("llama"), FlareConfig(mt_source_dim=10)).eval()
    randomize_lora(flare)
    inputs = batch_for("llama")
    embeds = torch.randn(2, 6, 10)
    projection = flare.lora_mt_projection["flare"]
    with torch.no_grad():
        flare(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            source_embeds=embeds,
            source_attention_mask=inputs["source_attention_mask"],
        )
        expected = embeds @ projection.weight.T + projection.bias
    for name in flare.fused_modules:
        torch.testing.assert_close(flare.flare_state.source.inputs[name], expected, atol=1e-6, rtol=0)


def test_mt_errors_name_the_problem():
    flare = get_flare_model(build("llama"), FlareConfig(mt_source_dim=10))
    inputs = batch_for("llama")
    with pytest.raises(ValueError, match=r"\(batch, length, 10\).*\(2, 6, 12\)"):
        flare(input_ids=inputs["input_ids"], source_embeds=torch.randn(2, 6, 12))
    with pytest.raises(ValueError, match="pass source_embeds"):
        flare(**inputs)
    plain = get_flare_model(build("llama"), FlareConfig())
    with pytest.raises(ValueError, match="mt_source_dim"):
        plain(input_ids=inputs["input_ids"], source_embeds=torch.randn(2, 6, 10))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fusion": "concat"}, r"Unknown fusion 'concat'; valid choices: add, mul, add_relu"),
        ({"source_site": "residual"}, r"valid choices: linear_input, block_input"),
        ({"source_layer_offset": 2}, r"must be 0 or 1"),
        ({"source_layer_offset": 1}, r"requires|only defined for source_site='block_input'"),
        ({"cross_attention_heads": 3}, r"must be positive and divide r=8"),
        ({"r": 0}, r"positive"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        FlareConfig(**overrides)


def test_fusion_modules_matching_nothing_lists_the_targets():
    with pytest.raises(
        ValueError, match=r"'gate_proj' matches none of the LoRA targets: \['model.layers.0.self_attn.q_proj'"
    ):
        get_flare_model(build("llama"), FlareConfig(fusion_modules=["q_proj", "gate_proj"]))


def test_unknown_stage1_mode():
    with pytest.raises(ValueError, match="valid choices: merge, frozen"):
        get_flare_model(build("llama"), FlareConfig(), stage1="drop")


def test_target_modules_absent_from_the_model():
    with pytest.raises(ValueError, match="query_key_value"):
        get_flare_model(build("llama"), FlareConfig(target_modules=["query_key_value"]))


def test_fusion_none_is_plain_lora_with_no_fused_modules():
    flare = get_flare_model(build("llama"), FlareConfig(fusion=None))
    assert flare.fused_modules == {}


def test_block_input_refuses_decoder_cross_attention_values_on_mt5():
    with pytest.raises(
        ValueError, match=r"EncDecAttention\.v reads encoder tokens inside decoder block decoder\.block\.0"
    ):
        get_flare_model(build("mt5"), FlareConfig(source_site="block_input"))
    flare = get_flare_model(
        build("mt5"), FlareConfig(source_site="block_input", fusion_modules=r".*SelfAttention\.(q|v)")
    )
    assert {layer.flare_stream for layer in flare.fused_modules.values()} == {"input", "decoder"}
