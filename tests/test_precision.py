"""Trainable copies of a 16-bit base stay in float32, so that small fine-tuning updates are not rounded away."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_for, build, labels_for
from peft import LoraConfig, get_peft_model

from flare_xlt import FlareConfig, get_flare_model, keep_trainables_in_float32

COPIES = ["lm_head", "embed_tokens"]


def bf16_models():
    flare = get_flare_model(build("llama").to(torch.bfloat16), FlareConfig(modules_to_save=COPIES))
    lora = get_peft_model(build("llama").to(torch.bfloat16), LoraConfig(r=8, modules_to_save=COPIES))
    keep_trainables_in_float32(lora)  # what the pipeline does for stage 1
    return {"flare": flare, "peft-lora": lora}


@pytest.mark.parametrize("name", ["flare", "peft-lora"])
def test_one_small_step_moves_every_trainable_copy(name):
    model = bf16_models()[name]
    trainable = {key: p for key, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert model.get_base_model().model.layers[0].self_attn.o_proj.weight.dtype == torch.bfloat16  # base untouched
    inputs = batch_for("llama")
    inputs.update(labels_for("llama", inputs))
    if name == "peft-lora":
        inputs = {key: value for key, value in inputs.items() if not key.startswith("source_")}
    before = {key: p.detach().clone() for key, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=2e-5)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**inputs)
    assert output.logits.dtype == torch.bfloat16  # the copies hand the model its own dtype
    output.loss.backward()
    optimizer.step()
    for copy_name in COPIES:
        copies = [key for key in trainable if f"{copy_name}.modules_to_save." in key]
        assert copies, copy_name
        for key in copies:
            changed = (trainable[key].detach() != before[key]).float().mean().item()
            assert changed > 0.95, f"{key}: only {changed:.0%} of the entries moved"


def test_copies_run_without_autocast_too():
    model = bf16_models()["flare"].eval()
    inputs = batch_for("llama")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def saved_source_tensors(flare, inputs: dict, source_length: int, width: int) -> int:
    """Distinct tensors of the source's size (B·S rows of `width`; linear saves its input flattened) that autograd
    keeps for backward in one forward."""
    storages = set()
    rows = inputs["attention_mask"].shape[0] * source_length

    def pack(tensor):
        if tensor.dim() and tensor.shape[-1] == width and tensor.numel() == rows * width:
            storages.add((tensor.untyped_storage().data_ptr(), tensor.dtype))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            flare(**inputs).loss.backward()
    return len(storages)


@pytest.mark.parametrize("base_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mt", [False, True], ids=["flare", "flare-mt"])
def test_autocast_saves_one_source_copy(base_dtype, mt):
    """2 layers with q and v fused: q and v of a layer read one input (linear_input), so FLARE saves one source per
    layer; FLARE-MT feeds one projected tensor to all four modules."""
    mt_width = 12
    config = FlareConfig(mt_source_dim=mt_width if mt else None)
    flare = get_flare_model(build("llama").to(base_dtype), config).train()
    inputs = batch_for("llama", target_length=7, source_length=5)
    inputs.update(labels_for("llama", inputs))
    if mt:
        source_ids = inputs.pop("source_input_ids")
        inputs["source_embeds"] = torch.randn(*source_ids.shape, mt_width)
    hidden = flare.get_base_model().config.hidden_size
    assert saved_source_tensors(flare, inputs, 5, hidden) == (1 if mt else 2)
