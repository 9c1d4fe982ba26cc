"""GPU-only paths: bf16 and bitsandbytes 4-bit base layers. Skipped where CUDA (or bitsandbytes) is absent."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch_for, build, generate_fused, labels_for, randomize_lora, teacher_forced_logits
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from flare_xlt import FlareConfig, get_flare_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu(inputs: dict) -> dict:
    return {key: value.cuda() for key, value in inputs.items()}


def test_bf16_training_step_and_cached_generation():
    flare = get_flare_model(build("llama").to("cuda", torch.bfloat16), FlareConfig())
    randomize_lora(flare)
    inputs = on_gpu(batch_for("llama"))
    loss = flare(**inputs, **on_gpu(labels_for("llama", inputs))).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in flare.named_parameters() if "lora_B" in n)
    flare.eval()
    with torch.no_grad():
        out = generate_fused(flare, inputs, 3, do_sample=False, output_logits=True)
        forced = teacher_forced_logits(flare, inputs, out.sequences)
    prompt = inputs["input_ids"].shape[1]
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits.float(), forced[:, prompt - 1 + step].float(), atol=5e-2, rtol=5e-2)


@pytest.fixture
def four_bit_llama(tmp_path):
    bitsandbytes = pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    build("llama").save_pretrained(tmp_path)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization, device_map={"": 0})
    return model, bitsandbytes


def test_four_bit_layers_are_wrapped_and_fall_back_to_plain_lora(four_bit_llama):
    model, bitsandbytes = four_bit_llama
    plain_base = copy.deepcopy(model)
    flare = get_flare_model(model, FlareConfig(target_modules="all-linear"))
    randomize_lora(flare)
    assert all(isinstance(layer.base_layer, bitsandbytes.nn.Linear4bit) for layer in flare.fused_modules.values())
    lora = get_peft_model(plain_base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    set_peft_model_state_dict(lora, get_peft_model_state_dict(flare, adapter_name="flare"))
    inputs = on_gpu(batch_for("llama"))
    target = {k: v for k, v in inputs.items() if not k.startswith("source_")}
    with torch.no_grad():
        torch.testing.assert_close(flare(**target).logits, lora(**target).logits, atol=1e-3, rtol=1e-3)
        assert not torch.allclose(flare(**inputs).logits, lora(**target).logits, atol=1e-2)


def test_four_bit_checkpointing_keeps_gradients(four_bit_llama):
    model, _ = four_bit_llama
    flare = get_flare_model(model, FlareConfig(target_modules="all-linear"))
    randomize_lora(flare)
    inputs = on_gpu(batch_for("llama"))
    inputs.update(on_gpu(labels_for("llama", inputs)))

    def gradients():
        flare.zero_grad()
        flare(**inputs).loss.backward()
        return {n: p.grad.float().clone() for n, p in flare.named_parameters() if p.requires_grad}

    flare.train()
    reference = gradients()
    flare.get_base_model().activation_checkpointing_enable()
    checkpointed = gradients()
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-3, rtol=1e-3, msg=name)
