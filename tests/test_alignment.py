"""Token pairing between source and target: padding, unequal lengths and batch sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import ADAPTER_SETTINGS, DECODERS, PAD, batch_for, build, randomize_lora

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.adapter.token_pairing import align_tokens


def pad(ids: torch.Tensor, extra: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    padding = torch.full((ids.shape[0], extra), PAD)
    mask = torch.cat([torch.zeros_like(padding), torch.ones_like(ids)], 1)
    if left:
        return torch.cat([padding, ids], 1), mask
    return torch.cat([ids, padding], 1), mask.flip(1)


PAIRINGS = [("start", "lora"), ("end", "lora"), ("proportional", "zero_source"), ("end", "zero_source")]


# XGLM is left out: its own positions move with left padding unless position_ids are passed.
@pytest.mark.parametrize("kind", ["llama", "bloom", "xlmr-cls", "mt5"])
@pytest.mark.parametrize("fusion", ["add_relu", "matmul", "cross_attention"])
@pytest.mark.parametrize(("pairing", "unpaired"), PAIRINGS)
def test_extra_padding_changes_nothing(kind, fusion, pairing, unpaired):
    """The same pair padded by different amounts, as in batches of different shape, gives the same outputs.

    float64: what remains is RoPE's float32 cos/sin at shifted positions (~3e-8); a change in pairing moves the
    logits by ~1e-2. BLOOM runs in float32: it has no RoPE, and its own padded attention gives NaN in float64."""
    config = FlareConfig(fusion=fusion, pairing=pairing, unpaired=unpaired, **ADAPTER_SETTINGS.get(kind, {}))
    dtype = torch.float32 if kind == "bloom" else torch.float64
    flare = get_flare_model(build(kind).to(dtype), config).eval()
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
    alignment = align_tokens(source_mask, target_mask, target_mask, 6, causal=True, need_allowed=True)
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
    authors = align_tokens(source_mask, target_mask, target_mask, 6, mask_source_padding=False, need_allowed=True)
    assert authors.has_source[0].tolist() == [True] * 5 + [False]
    assert authors.source_position[0].tolist() == [0, 1, 2, 3, 4, 4]
    assert authors.allowed.all()


def pairs(alignment) -> list[tuple[int, int]]:
    """(target position, source position) of every paired token of row 0."""
    return [
        (t, int(s))
        for t, (s, has) in enumerate(zip(alignment.source_position[0], alignment.has_source[0], strict=True))
        if has
    ]


def test_end_pairing_counts_back_from_both_prompt_ends():
    # target: a pad, 5 prompt tokens, 2 answer tokens; source: 3 real tokens after 2 pads
    target = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 1]])
    prompt = torch.tensor([[0, 1, 1, 1, 1, 1, 0, 0]]).bool()
    source = torch.tensor([[0, 0, 1, 1, 1]])
    alignment = align_tokens(source, target, prompt, 8, pairing="end")
    # the last prompt token (position 5) pairs with the last source token (4), backwards; answers have no partner
    assert pairs(alignment) == [(3, 2), (4, 3), (5, 4)]
    longer_source = torch.ones(1, 9, dtype=torch.long)
    assert pairs(align_tokens(longer_source, target, prompt, 8, pairing="end")) == [
        (1, 4),
        (2, 5),
        (3, 6),
        (4, 7),
        (5, 8),
    ]


def test_proportional_pairing_spreads_the_prompt_over_the_source():
    target = torch.ones(1, 6, dtype=torch.long)
    prompt = torch.tensor([[1, 1, 1, 1, 1, 0]]).bool()
    # k of P=5 -> round(k·(S-1)/(P-1)) with S=9: 0, 2, 4, 6, 8; with S=3: 0, 0.5->1, 1, 1.5->2, 2
    assert pairs(align_tokens(torch.ones(1, 9), target, prompt, 6, pairing="proportional")) == [
        (0, 0),
        (1, 2),
        (2, 4),
        (3, 6),
        (4, 8),
    ]
    assert pairs(align_tokens(torch.ones(1, 3), target, prompt, 6, pairing="proportional")) == [
        (0, 0),
        (1, 1),
        (2, 1),
        (3, 2),
        (4, 2),
    ]
    padded_source = torch.tensor([[0, 0, 1, 1, 1]])  # real source positions 2..4: the same pairs, shifted by 2
    assert pairs(align_tokens(padded_source, target, prompt, 6, pairing="proportional")) == [
        (0, 2),
        (1, 3),
        (2, 3),
        (3, 4),
        (4, 4),
    ]


@pytest.mark.parametrize("pairing", ["start", "end", "proportional"])
def test_align_tokens_continues_after_a_cache(pairing):
    """The prefill and each generation step pair as the same positions of the full sequence do."""
    source_mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    full_target = torch.tensor([[0, 0, 1, 1, 1, 1]]).bool()
    prompt = full_target.clone()
    prompt[0, 4:] = False  # two generated tokens after a 2-token prompt
    full = align_tokens(source_mask, full_target, prompt, 6, pairing=pairing)
    prefill = align_tokens(source_mask, full_target[:, :4], prompt[:, :4], 4, pairing=pairing)
    assert torch.equal(prefill.has_source, full.has_source[:, :4])
    assert torch.equal(prefill.source_position[prefill.has_source], full.source_position[:, :4][prefill.has_source])
    for position in range(4, 6):
        step = align_tokens(source_mask, full_target[:, : position + 1], prompt[:, : position + 1], 1, pairing=pairing)
        assert step.has_source[0, 0] == full.has_source[0, position]
        if step.has_source[0, 0]:
            assert step.source_position[0, 0] == full.source_position[0, position]


def test_source_longer_than_target_is_trimmed():
    """Every real target token pairs with the source token of its own rank; the rest of the source is unused."""
    flare = get_flare_model(build("xlmr-cls"), FlareConfig()).eval()
    randomize_lora(flare)
    inputs = batch_for("xlmr-cls", target_length=4, source_length=9)
    with torch.no_grad():
        flare(**inputs)
    alignment = flare.flare_state.alignments["input"]
    for row in range(inputs["input_ids"].shape[0]):
        real = inputs["attention_mask"][row].bool()
        assert alignment.has_source[row].tolist() == real.tolist()
        ranks = torch.arange(int(real.sum()))  # right padding: rank k sits at position k on both sides
        assert alignment.source_position[row, : len(ranks)].tolist() == ranks.tolist()


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
