"""What FLARE reads off the wrapped model: which streams are causal, and which state `block_input` records."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import BUILDERS, batch_for, build
from transformers import BertConfig, BertLMHeadModel, BertModel

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.adapter.architecture import input_stream_is_causal

CAUSAL = {"llama": True, "gemma2": True, "qwen2": True, "xglm": True, "bloom": True, "mt5": False}
CAUSAL |= {"xlmr-cls": False, "xlmr-qa": False, "bert-cls": False}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_causality_comes_from_what_the_model_is(kind):
    network = build(kind)
    assert input_stream_is_causal(network) is CAUSAL[kind]
    # Not from flags on attention modules: XGLM and BLOOM carry none, and setting one changes nothing.
    for module in network.modules():
        module.is_causal = not CAUSAL[kind]
    assert input_stream_is_causal(network) is CAUSAL[kind]


def test_a_bert_built_as_a_decoder_is_causal():
    sizes = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    assert input_stream_is_causal(BertLMHeadModel(BertConfig(**sizes, is_decoder=True))) is True
    assert input_stream_is_causal(BertModel(BertConfig(**sizes))) is False


class UnknownConfig:
    model_type = "my-own"
    is_encoder_decoder = False


class UnknownModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = UnknownConfig()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])


def test_a_model_that_cannot_be_placed_is_refused_in_one_line_unless_declared():
    with pytest.raises(ValueError, match=r"cannot tell whether UnknownModel \(model_type 'my-own'\)") as error:
        input_stream_is_causal(UnknownModel())
    assert "\n" not in str(error.value) and "FlareConfig(causal=True)" in str(error.value)
    assert input_stream_is_causal(UnknownModel(), declared=True) is True
    assert input_stream_is_causal(UnknownModel(), declared=False) is False
    with pytest.raises(ValueError, match="encoder-decoder model"):
        input_stream_is_causal(build("mt5"), declared=True)
    with pytest.raises(ValueError, match="causal must be True, False or None"):
        FlareConfig(causal="yes")


def test_the_declared_causality_reaches_the_pairing():
    """An encoder declared causal pairs as a decoder does: changing a later token leaves earlier outputs alone."""
    config = FlareConfig(fusion="matmul", causal=True, modules_to_save=["classifier"])
    flare = get_flare_model(build("xlmr-cls"), config).eval()
    assert flare.aligner.stream_is_causal("input") and flare._mixes_causal_positions


def test_fusion_modules_that_name_no_target_are_refused_in_one_line():
    for fusion_modules in (["q_prj"], r".*\.nothing"):
        with pytest.raises(ValueError, match="matches none of the LoRA targets") as error:
            get_flare_model(build("llama"), FlareConfig(fusion_modules=fusion_modules))
        assert "\n" not in str(error.value)


# Per model: fused modules reading the model width in attention and MLP (a regex), and the final norm HF applies to
# the last block's output, if any.
BLOCK_CASES = {
    "llama": (r".*\.(q_proj|v_proj|up_proj)", "model.norm"),
    "xlmr-cls": (r".*\.(query|value|intermediate\.dense)", None),
    "mt5-encoder": (
        r"encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qv]|DenseReluDense\.wi_0)",
        "encoder.final_layer_norm",
    ),
    "mt5-decoder": (
        r"decoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qv]|EncDecAttention\.q)",
        "decoder.final_layer_norm",
    ),
}


def hidden_states_of_source(network, kind: str, source: dict) -> tuple[torch.Tensor, ...]:
    """HF's hidden states of the source pass's input: embeddings, then each block's output (the last normed)."""
    inputs = {"input_ids": source["source_input_ids"], "attention_mask": source["source_attention_mask"]}
    if kind.startswith("mt5"):
        start = torch.full((inputs["input_ids"].shape[0], 1), network.config.decoder_start_token_id)
        out = network(**inputs, decoder_input_ids=start, output_hidden_states=True)
        return out.encoder_hidden_states if kind == "mt5-encoder" else out.decoder_hidden_states
    return network(**inputs, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("kind", list(BLOCK_CASES))
def test_block_input_records_the_blocks_hidden_state(kind, offset):
    """Block i's fused modules read HF hidden_states[i] (offset 0) or [i + 1] (offset 1), on T5 too, where a block
    holds sub-layers. Offset 1 in the last block reads the block's output before the final norm, on the scale of
    every other block's: the final norm of it is HF's last hidden state."""
    pattern, final_norm = BLOCK_CASES[kind]
    model_kind = "mt5" if kind.startswith("mt5") else kind
    model = build(model_kind)
    config = FlareConfig(
        target_modules=pattern, fusion_modules=pattern, source_site="block_input", source_layer_offset=offset
    )
    flare = get_flare_model(model, config).eval()
    inputs = batch_for(model_kind)
    extra = {"decoder_input_ids": torch.tensor([[0, 5, 6]] * 2)} if kind.startswith("mt5") else {}
    with torch.no_grad():
        flare(**inputs, **extra)
        captured = flare.flare_state.source.inputs  # (read first: a later call outside a binding drops it)
        hidden = hidden_states_of_source(flare.get_base_model(), kind, inputs)  # LoRA B is 0: the base model
    assert captured, "no fused module"
    blocks = len(hidden) - 1
    for name in flare.fused_modules:
        block = int(re.search(r"\.(?:layers|layer|block)\.(\d+)\.", name).group(1))
        index = block + offset
        if index == blocks and final_norm is not None:
            norm = flare.get_base_model().get_submodule(final_norm)
            with torch.no_grad():
                torch.testing.assert_close(norm(captured[name]), hidden[index], atol=1e-6, rtol=0)
            assert not torch.allclose(captured[name], hidden[index], atol=1e-3), "the last state is before the norm"
        else:
            torch.testing.assert_close(captured[name], hidden[index], atol=1e-6, rtol=0, msg=name)


def test_block_input_refuses_a_module_that_reads_another_width_in_one_line():
    config = FlareConfig(target_modules=["down_proj"], fusion_modules=["down_proj"], source_site="block_input")
    flare = get_flare_model(build("llama"), config)
    with pytest.raises(ValueError, match=r"down_proj reads 64-wide inputs, but .* block's 32-wide state") as error:
        flare(**batch_for("llama"))
    assert "\n" not in str(error.value)
