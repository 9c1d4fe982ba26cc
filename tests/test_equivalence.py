"""Without a source, or with fusion=None, a FlareModel computes exactly what plain PEFT LoRA computes."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ADAPTER_SETTINGS, BUILDERS, HEADS, batch_for, build, labels_for, randomize_lora
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from flare_xlt import FlareConfig, get_flare_model


def target_only(inputs: dict) -> dict:
    return {key: value for key, value in inputs.items() if not key.startswith("source_")}


def flare_and_plain_twin(kind: str, config: FlareConfig):
    """A FlareModel with random adapter weights, and a plain PEFT LoRA model holding the same weights."""
    base = build(kind)
    flare = get_flare_model(copy.deepcopy(base), config)
    randomize_lora(flare)
    return flare, plain_lora_twin(flare, base)


def plain_lora_twin(flare, base):
    config = flare.flare_config
    lora = get_peft_model(
        base,
        LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha,
            target_modules=config.target_modules,
            modules_to_save=config.modules_to_save,
        ),
    )
    set_peft_model_state_dict(lora, get_peft_model_state_dict(flare, adapter_name="flare"))
    return lora.eval()


@pytest.mark.parametrize("kind", list(BUILDERS))
@pytest.mark.parametrize("fusion", ["add_relu", None])
def test_matches_plain_lora_without_source_or_fusion(kind, fusion):
    flare, lora = flare_and_plain_twin(
        kind, FlareConfig(fusion=fusion, modules_to_save=HEADS.get(kind), **ADAPTER_SETTINGS.get(kind, {}))
    )
    flare.eval()
    inputs = batch_for(kind)
    extra = labels_for(kind, inputs) if kind == "mt5" else {}
    with torch.no_grad():
        expected = (
            lora(**target_only(inputs), **extra).logits
            if kind != "xlmr-qa"
            else lora(**target_only(inputs)).start_logits
        )
        without_source = flare(**target_only(inputs), **extra)
        with_source = flare(**inputs, **extra)
    pick = (lambda out: out.start_logits) if kind == "xlmr-qa" else (lambda out: out.logits)
    torch.testing.assert_close(pick(without_source), expected, atol=1e-6, rtol=0)
    if fusion is None:
        torch.testing.assert_close(pick(with_source), expected, atol=1e-6, rtol=0)
    else:
        assert not torch.allclose(pick(with_source), expected, atol=1e-4), "the source should change the output"


def test_fuse_at_inference_false_is_plain_lora_in_eval_only():
    flare, lora = flare_and_plain_twin("llama", FlareConfig(fuse_at_inference=False))
    inputs = batch_for("llama")
    flare.eval()
    with torch.no_grad():
        torch.testing.assert_close(flare(**inputs).logits, lora(**target_only(inputs)).logits, atol=1e-6, rtol=0)
        flare.train()
        assert not torch.allclose(flare(**inputs).logits, lora(**target_only(inputs)).logits, atol=1e-4)


def test_stale_source_is_not_reused_by_direct_calls():
    flare = get_flare_model(build("llama"), FlareConfig())
    randomize_lora(flare)
    inputs = batch_for("llama")
    with torch.no_grad():
        plain = flare(**target_only(inputs)).logits
        flare(**inputs)  # binds a source and keeps it for a possible backward
        direct = flare.get_base_model()(**target_only(inputs)).logits
    torch.testing.assert_close(direct, plain, atol=0, rtol=0)


def test_source_context_binds_for_every_call():
    flare = get_flare_model(build("xlmr-cls"), FlareConfig())
    randomize_lora(flare)
    inputs = batch_for("xlmr-cls")
    with torch.no_grad():
        explicit = flare(**inputs).logits
        with flare.source(inputs["source_input_ids"], inputs["source_attention_mask"]):
            bound = flare(**target_only(inputs)).logits
            raw = flare.get_base_model()(**target_only(inputs)).logits
        after = flare(**target_only(inputs)).logits
        plain = flare(**target_only(inputs)).logits
    torch.testing.assert_close(bound, explicit, atol=0, rtol=0)
    torch.testing.assert_close(raw, explicit, atol=0, rtol=0)
    assert not torch.allclose(after, explicit, atol=1e-4)
    torch.testing.assert_close(after, plain, atol=0, rtol=0)


def test_fuse_at_inference_false_ignores_the_source_kept_from_training():
    flare, lora = flare_and_plain_twin("llama", FlareConfig(fuse_at_inference=False))
    inputs = batch_for("llama")
    flare.train()
    flare(**inputs).logits.sum().backward()  # leaves its source bound for checkpoint recompute
    flare.eval()
    evaluation = batch_for("llama", batch=3, seed=9)  # another batch size must not trip over the old source
    with torch.no_grad():
        torch.testing.assert_close(
            flare(**evaluation).logits, lora(**target_only(evaluation)).logits, atol=1e-6, rtol=0
        )
        with flare.source(evaluation["source_input_ids"], evaluation["source_attention_mask"]):
            inside = flare(**target_only(evaluation)).logits
        torch.testing.assert_close(inside, lora(**target_only(evaluation)).logits, atol=1e-6, rtol=0)
