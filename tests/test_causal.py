"""Causal models: no future leakage, and teacher forcing agrees with cached step-by-step generation."""

from __future__ import annotations

import pytest
import torch
from conftest import ADAPTER_SETTINGS, VOCAB, batch_for, build, generate_fused, randomize_lora, teacher_forced_logits

from flare_xlt import FUSION_NAMES, FlareConfig, get_flare_model


def flare_for(kind, fusion, **overrides):
    config = FlareConfig(fusion=fusion, **ADAPTER_SETTINGS.get(kind, {}), **overrides)
    flare = get_flare_model(build(kind), config).eval()
    randomize_lora(flare)
    return flare


@pytest.mark.parametrize("fusion", FUSION_NAMES)
@pytest.mark.parametrize(("pairing", "unpaired"), [("start", "lora"), ("end", "zero_source"), ("proportional", "lora")])
@pytest.mark.parametrize("kind", ["llama", "xglm", "bloom"])
def test_no_future_leakage_decoder(kind, fusion, pairing, unpaired):
    flare = flare_for(kind, fusion, pairing=pairing, unpaired=unpaired)
    generator = torch.Generator().manual_seed(7)
    target = torch.randint(3, VOCAB, (1, 8), generator=generator)
    source = torch.randint(3, VOCAB, (1, 8), generator=generator)
    with torch.no_grad():
        reference = flare(input_ids=target, source_input_ids=source).logits
        for position in range(target.shape[1] - 1):
            changed = target.clone()
            changed[0, position + 1] = (changed[0, position + 1] + 1) % VOCAB
            logits = flare(input_ids=changed, source_input_ids=source).logits
            torch.testing.assert_close(logits[:, : position + 1], reference[:, : position + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(logits[:, position + 1], reference[:, position + 1], atol=1e-4)


@pytest.mark.parametrize("fusion", FUSION_NAMES)
def test_no_future_leakage_encoder_decoder_decoder_side(fusion):
    flare = flare_for("mt5", fusion)
    generator = torch.Generator().manual_seed(8)
    encoder_ids = torch.randint(3, VOCAB, (1, 6), generator=generator)
    source = torch.randint(3, VOCAB, (1, 5), generator=generator)
    decoder_ids = torch.randint(3, VOCAB, (1, 6), generator=generator)
    with torch.no_grad():
        reference = flare(input_ids=encoder_ids, decoder_input_ids=decoder_ids, source_input_ids=source).logits
        for position in range(decoder_ids.shape[1] - 1):
            changed = decoder_ids.clone()
            changed[0, position + 1] = (changed[0, position + 1] + 1) % VOCAB
            logits = flare(input_ids=encoder_ids, decoder_input_ids=changed, source_input_ids=source).logits
            torch.testing.assert_close(logits[:, : position + 1], reference[:, : position + 1], atol=1e-6, rtol=0)


def encoder_decoder_forced_logits(flare, inputs: dict, sequences: torch.Tensor) -> torch.Tensor:
    """One fused mT5 forward over the decoder start token + generated tokens (rows as in `sequences`)."""
    rows = sequences.shape[0] // inputs["input_ids"].shape[0]
    repeat = {key: value.repeat_interleave(rows, dim=0) for key, value in inputs.items()}
    return flare(**repeat, decoder_input_ids=sequences[:, :-1]).logits


@pytest.mark.parametrize("kind", ["llama", "gemma2", "qwen2", "bloom"])  # ragged batches: XGLM needs position_ids
@pytest.mark.parametrize("fusion", ["add_relu", "mul", "matmul_relu", "cross_attention"])
def test_teacher_forcing_equals_cached_generation(kind, fusion):
    """Prompts longer than some sources and new tokens beyond every source exercise the fallback policy."""
    flare = flare_for(kind, fusion)
    inputs = batch_for(kind, batch=3, target_length=6, source_length=5)
    with torch.no_grad():
        out = generate_fused(flare, inputs, 4, do_sample=False, output_logits=True)
        forced = teacher_forced_logits(flare, inputs, out.sequences)
    prompt = inputs["input_ids"].shape[1]
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, forced[:, prompt - 1 + step], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["add_relu", "cross_attention"])
def test_teacher_forcing_equals_cached_generation_mt5(fusion):
    flare = flare_for("mt5", fusion)
    inputs = batch_for("mt5", batch=2, target_length=6, source_length=5)
    with torch.no_grad():
        out = generate_fused(flare, inputs, 4, do_sample=False, output_logits=True)
        forced = encoder_decoder_forced_logits(flare, inputs, out.sequences)
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits, forced[:, step], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "fusion"), [("llama", "add_relu"), ("llama", "matmul"), ("mt5", "add_relu")])
def test_beam_search_scores_use_each_rows_source(kind, fusion):
    """Each returned beam's score equals the teacher-forced log-probability of its tokens under its own source."""
    flare = flare_for(kind, fusion)
    inputs = batch_for(kind, batch=2, target_length=6, source_length=5)
    with torch.no_grad():
        out = generate_fused(
            flare, inputs, 3, num_beams=3, num_return_sequences=2, length_penalty=0.0, output_scores=True
        )
        if kind == "mt5":
            step_logits = encoder_decoder_forced_logits(flare, inputs, out.sequences)
            generated = out.sequences[:, 1:]
        else:
            prompt = inputs["input_ids"].shape[1]
            step_logits = teacher_forced_logits(flare, inputs, out.sequences)[:, prompt - 1 : -1]
            generated = out.sequences[:, prompt:]
    log_probs = step_logits.log_softmax(-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, log_probs, atol=1e-4, rtol=1e-4)


def test_position_mixing_fusion_refuses_kv_cache():
    flare = flare_for("llama", "matmul")
    inputs = batch_for("llama")
    with pytest.raises(ValueError, match="KV cache"):
        flare.generate(**inputs, max_new_tokens=2, use_cache=True, pad_token_id=0)
