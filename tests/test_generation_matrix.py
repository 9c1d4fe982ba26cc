"""Cached generation equals teacher forcing, over the layouts people call generate() with.

FLARE counts the target positions of a generate() itself (pairing.PositionTracker). The matrix: Llama, Gemma 2
(sliding-window cache), Qwen2, XGLM and BLOOM (decoders with no is_causal flag on their attention) and mT5; batch 1
without a mask, an unpadded batch with an all-ones mask, and ragged batches padded on the model's side; greedy, beam
search and sampling with num_return_sequences; sources shorter than, as long as and longer than the prompt; and
every pairing mode. The teacher-forced forward is a training forward: prompt + generated tokens, with the generated
tokens labelled.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ADAPTER_SETTINGS, DECODERS, PAD, VOCAB, build, randomize_lora

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.adapter.token_pairing import PAIRING_MODES

PROMPT = 7
SOURCE_LENGTHS = {"shorter": 4, "equal": PROMPT, "longer": 11}
LAYOUTS = ("single", "unpadded", "ragged")
DECODINGS = {
    "greedy": {"do_sample": False},
    "beam": {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.0},
    "sample": {"do_sample": True, "num_return_sequences": 3, "top_k": 0},
}
NEW_TOKENS = 4


def make_inputs(kind: str, layout: str, source_length: int, seed: int = 5) -> dict:
    """Target prompt and source ids; "ragged" pads rows to different real lengths on the model's padding side."""
    generator = torch.Generator().manual_seed(seed)
    batch = 1 if layout == "single" else 3
    target = torch.randint(3, VOCAB, (batch, PROMPT), generator=generator)
    source = torch.randint(3, VOCAB, (batch, source_length), generator=generator)
    inputs = {"input_ids": target, "source_input_ids": source}
    if layout == "single":
        return inputs  # no masks at all: the most common call
    target_mask, source_mask = torch.ones_like(target), torch.ones_like(source)
    if layout == "ragged":
        left = kind in DECODERS
        for row in range(batch):
            for mask, cut in ((target_mask, row), (source_mask, 2 - row)):
                if cut:
                    mask[row, :cut] = 0 if left else 1
                    if not left:
                        mask[row, mask.shape[1] - cut :] = 0
        inputs["input_ids"] = target.masked_fill(target_mask == 0, PAD)
        inputs["source_input_ids"] = source.masked_fill(source_mask == 0, PAD)
    inputs["attention_mask"] = target_mask
    inputs["source_attention_mask"] = source_mask
    return inputs


def repeat_rows(inputs: dict, rows: int) -> dict:
    return {key: value.repeat_interleave(rows, dim=0) for key, value in inputs.items()}


def teacher_forced(flare, kind: str, inputs: dict, sequences: torch.Tensor) -> torch.Tensor:
    """Logits of one training forward over prompt + generated tokens, aligned with generation step logits (R, N, V)."""
    inputs = repeat_rows(inputs, sequences.shape[0] // inputs["input_ids"].shape[0])
    source = {key: value for key, value in inputs.items() if key.startswith("source_")}
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    if kind == "mt5":
        labels = sequences[:, 1:]
        return flare(
            input_ids=inputs["input_ids"], attention_mask=mask, decoder_input_ids=sequences[:, :-1], **source
        ).logits, labels
    generated = sequences[:, PROMPT:]
    full_mask = torch.cat([mask, torch.ones_like(generated)], 1)
    labels = torch.cat([torch.full_like(mask, -100), generated], 1)
    logits = flare(input_ids=sequences, attention_mask=full_mask, labels=labels, **source).logits
    return logits[:, PROMPT - 1 : -1], generated


def fused_model(kind: str, pairing: str, unpaired: str = "lora") -> torch.nn.Module:
    config = FlareConfig(pairing=pairing, unpaired=unpaired, **ADAPTER_SETTINGS.get(kind, {}))
    flare = get_flare_model(build(kind), config).eval()
    randomize_lora(flare)
    return flare


def generate(flare, inputs: dict, decoding: str, **extra):
    torch.manual_seed(0)
    return flare.generate(
        **inputs,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        return_dict_in_generate=True,
        output_logits=True,
        output_scores=True,
        pad_token_id=PAD,
        **DECODINGS[decoding],
        **extra,
    )


def check_agreement(flare, kind: str, inputs: dict, decoding: str) -> None:
    with torch.no_grad():
        out = generate(flare, inputs, decoding)
        forced, generated = teacher_forced(flare, kind, inputs, out.sequences)
    if decoding == "beam":  # beams are reordered between steps: compare each returned beam's total score
        log_probs = forced.log_softmax(-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1).sum(-1)
        torch.testing.assert_close(out.sequences_scores, log_probs, atol=1e-4, rtol=1e-4)
        return
    step_logits = torch.stack(out.logits, 1)  # (R, new tokens, V)
    torch.testing.assert_close(step_logits, forced, atol=1e-4, rtol=1e-4)


def model_layouts(kinds: list[str], layouts) -> list[tuple[str, str]]:
    """(model, layout) pairs. XGLM's own positions move with left padding unless generate() passes position_ids,
    so its ragged batches differ from teacher forcing without FLARE too; BLOOM covers them for a flagless decoder."""
    return [(kind, layout) for kind in kinds for layout in layouts if (kind, layout) != ("xglm", "ragged")]


@pytest.mark.parametrize("source", list(SOURCE_LENGTHS))
@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize(
    ("kind", "layout"), model_layouts(["llama", "gemma2", "qwen2", "xglm", "bloom", "mt5"], LAYOUTS)
)
def test_cached_generation_equals_teacher_forcing(kind, layout, decoding, source):
    flare = fused_model(kind, "start")
    check_agreement(flare, kind, make_inputs(kind, layout, SOURCE_LENGTHS[source]), decoding)


@pytest.mark.parametrize("unpaired", ["lora", "zero_source"])
@pytest.mark.parametrize("pairing", PAIRING_MODES)
@pytest.mark.parametrize("decoding", ["greedy", "beam"])
@pytest.mark.parametrize("source", ["shorter", "longer"])
@pytest.mark.parametrize(("kind", "layout"), model_layouts(["llama", "xglm", "bloom", "mt5"], ["single", "ragged"]))
def test_cached_generation_equals_teacher_forcing_per_pairing(kind, layout, source, decoding, pairing, unpaired):
    flare = fused_model(kind, pairing, unpaired)
    check_agreement(flare, kind, make_inputs(kind, layout, SOURCE_LENGTHS[source]), decoding)


def test_generation_without_cache_equals_cached_generation():
    flare = fused_model("llama", "end")
    inputs = make_inputs("llama", "ragged", SOURCE_LENGTHS["shorter"])
    with torch.no_grad():
        cached = generate(flare, inputs, "greedy")
        uncached = generate(flare, inputs, "greedy", use_cache=False)
    torch.testing.assert_close(torch.stack(uncached.logits, 1), torch.stack(cached.logits, 1), atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
def test_a_cache_that_disagrees_with_the_count_is_refused():
    """A model call whose KV cache does not hold the positions FLARE counted stops with both numbers."""
    from transformers import DynamicCache

    flare = fused_model("llama", "start")
    inputs = make_inputs("llama", "single", 5)
    network = flare.get_base_model()
    with torch.no_grad(), flare.source(source_input_ids=inputs["source_input_ids"]):
        cache = DynamicCache(config=network.config)
        network(input_ids=inputs["input_ids"], past_key_values=cache)
        network(input_ids=inputs["input_ids"][:, :1], past_key_values=cache)  # a manual cached step: counted, fine
        cache.crop(-5)  # drop 5 of the 8 positions behind FLARE's back
        with pytest.raises(RuntimeError, match="KV cache of 3 positions, but FLARE saw 8"):
            network(input_ids=inputs["input_ids"][:, :1], past_key_values=cache)
