"""Token pairing between source and target: padding, unequal lengths and batch sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import DECODERS, PAD, batch_for, build, randomize_lora

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.model import align_tokens


def pad(ids: torch.Tensor, extra: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    padding = torch.full((ids.shape[0], extra), PAD)
    mask = torch.cat([torch.zeros_like(padding), torch.ones_like(ids)], 1)
    if left:
        return torch.cat([padding, ids], 1), mask
    return torch.cat([ids, padding], 1), mask.flip(1)


@pytest.mark.parametrize("kind", ["llama", "xlmr-cls", "mt5"])
@pytest.mark.parametrize("fusion", ["add_relu", "matmul", "cross_attention"])
def test_extra_padding_changes_nothing(kind, fusion):
    """The same pair padded by different amounts, as in batches of different shape, gives the same outputs.

    float64: what remains is RoPE's float32 cos/sin at shifted positions (~3e-8); a change in pairing moves the
    logits by ~1e-2."""
    flare = get_flare_model(build(kind).double(), FlareConfig(fusion=fusion)).eval()
    randomize_lora(flare)
    generator = torch.Generator().manual_seed(11)
    target = torch.randint(3, 90, (1, 5), generator=generator)
    source = torch.randint(3, 90, (1, 4), generator=generator)
    left = kind in DECODERS
    extra = {"decoder_input_ids": torch.tensor([[0, 5, 6]])} if kind == "mt5" else {}
    with torch.no_grad():
        tight = flare(input_ids=target, source_input_ids=source, **extra).logits
        target_padded, target_mask = pad(target, 3, left)
        source_padded, source_mask = pad(source, 2, left)
        loose = flare(
            input_ids=target_padded,
            attention_mask=target_mask,
            source_input_ids=source_padded,
            source_attention_mask=source_mask,
            **extra,
        ).logits
    real = slice(3, None) if left else slice(0, tight.shape[1])
    if kind == "mt5":
        real = slice(None)
    torch.testing.assert_close(loose[:, real], tight, atol=1e-6, rtol=0)


def test_align_tokens_pairs_from_first_real_token():
    source_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    target_mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    alignment = align_tokens(source_mask, target_mask, 6, 0, True, causal=True, need_allowed=True)
    # row 0: target positions 1..3 take source 2..4; 4, 5 lie beyond the 3 source tokens; 0 is a pad
    assert alignment.has_source[0].tolist() == [False, True, True, True, False, False]
    assert alignment.source_position[0, 1:4].tolist() == [2, 3, 4]
    # row 1: target 0, 1 take source 0, 1; target 2 is beyond; 3..5 are pads
    assert alignment.has_source[1].tolist() == [True, True, False, False, False, False]
    assert alignment.source_position[1, :2].tolist() == [0, 1]
    # keys: causal and real target tokens only
    assert alignment.allowed[0, 3].tolist() == [False, True, True, True, False, False]
    assert alignment.allowed[1, 5].tolist() == [True, True, True, False, False, False]
    # the authors' pairing: padded position p with padded source position p, pads included, trimmed to the source
    authors = align_tokens(source_mask, target_mask, 6, 0, False, causal=False, need_allowed=True)
    assert authors.has_source[0].tolist() == [True] * 5 + [False]
    assert authors.source_position[0].tolist() == [0, 1, 2, 3, 4, 4]
    assert authors.allowed.all()


def test_align_tokens_continues_after_a_cache():
    """A generation step sees one new token; its pairing equals that of the same position in the full sequence."""
    source_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    full_target = torch.tensor([[0, 0, 1, 1, 1, 1]])
    full = align_tokens(source_mask, full_target, 6, 0, True, causal=True, need_allowed=False)
    for position in range(2, 6):
        step = align_tokens(source_mask, full_target[:, : position + 1], 1, position, True, True, False)
        assert step.has_source[0, 0] == full.has_source[0, position]
        assert step.source_position[0, 0] == full.source_position[0, position]


def test_source_longer_than_target_is_trimmed():
    flare = get_flare_model(build("xlmr-cls"), FlareConfig()).eval()
    randomize_lora(flare)
    inputs = batch_for("xlmr-cls", target_length=4, source_length=9)
    with torch.no_grad():
        long_source = flare(**inputs).logits
        trimmed = flare(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            source_input_ids=inputs["source_input_ids"][:, :4],
            source_attention_mask=inputs["source_attention_mask"][:, :4],
        ).logits
    # XLM-R's source tokens past the target length cannot reach the fused q/v of target tokens except through
    # the source pass's own attention, which changes the first 4 source states; so compare the layer-0 pairing:
    alignment = flare.flare_state.alignments["input"]
    assert alignment.source_position.max() < 4
    assert not torch.equal(long_source, trimmed)  # longer context does change the source representations


@pytest.mark.parametrize("use_embeds", [False, True], ids=["flare", "flare-mt"])
def test_batch_size_mismatch_names_both_shapes(use_embeds):
    flare = get_flare_model(build("llama"), FlareConfig(mt_source_dim=6 if use_embeds else None))
    inputs = batch_for("llama", batch=3)
    source = (
        {"source_embeds": torch.randn(2, 5, 6)} if use_embeds else {"source_input_ids": inputs["source_input_ids"][:2]}
    )
    with pytest.raises(ValueError, match=r"Source batch size 2 .*target batch size 3 \(target shape \(3, 7\)\)"):
        flare(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **source)


def test_four_dimensional_masks_are_refused():
    flare = get_flare_model(build("llama"), FlareConfig())
    inputs = batch_for("llama")
    inputs["attention_mask"] = torch.ones(2, 1, 7, 7)
    with pytest.raises(ValueError, match="2-D attention_mask"):
        flare(**inputs)
