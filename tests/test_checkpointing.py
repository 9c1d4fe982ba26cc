"""Gradient checkpointing recomputes layers during backward; fusion must stay on, giving identical loss and grads.

The authors' decoders silently trained as plain LoRA under checkpointing, so each case also checks that the source
really changed the loss. The models run in float64: recomputation may sum in another order (T5 does, with fp32
differences of ~1e-6 relative even for plain LoRA), and float64 makes a 1e-6 bound a test of the logic alone.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import HEADS, batch_for, build, labels_for, randomize_lora

from flare_xlt import FlareConfig, get_flare_model


def loss_and_grads(flare, batches, checkpointing):
    """Sum of the losses of several fused forwards, then one backward (micro-batches, R-Drop, a reference pass)."""
    if checkpointing:
        flare.activation_checkpointing_enable()
    flare.train()
    flare.zero_grad()
    batches = batches if isinstance(batches, list) else [batches]
    loss = sum(flare(**inputs).loss for inputs in batches)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in flare.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize(
    ("kind", "fusion"),
    [
        ("llama", "add_relu"),
        ("llama", "cross_attention"),
        ("qwen2", "matmul"),
        ("xlmr-cls", "add_relu"),
        ("xlmr-cls", "mul"),
        ("mt5", "add_relu"),
    ],
)
def test_checkpointing_keeps_loss_and_gradients(kind, fusion):
    config = FlareConfig(fusion=fusion, modules_to_save=HEADS.get(kind))
    reference = get_flare_model(build(kind).double(), config)
    randomize_lora(reference)
    checkpointed = copy.deepcopy(reference)
    inputs = batch_for(kind)
    inputs.update(labels_for(kind, inputs))

    loss, grads = loss_and_grads(reference, inputs, checkpointing=False)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, inputs, checkpointing=True)
    assert checkpointed.get_base_model().is_activation_checkpointing

    torch.testing.assert_close(loss_ckpt, loss, atol=1e-9, rtol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=0, msg=name)
    plain_loss = reference(**{k: v for k, v in inputs.items() if not k.startswith("source_")}).loss
    assert abs(plain_loss.item() - loss.item()) > 1e-5, "fusion must actually be on in this comparison"


def test_checkpointing_flare_mt_projection_gradients():
    config = FlareConfig(mt_source_dim=12)
    reference = get_flare_model(build("llama").double(), config).double()
    randomize_lora(reference)
    checkpointed = copy.deepcopy(reference)
    inputs = batch_for("llama")
    inputs.update(labels_for("llama", inputs))
    source_ids = inputs.pop("source_input_ids")
    inputs["source_embeds"] = torch.randn(*source_ids.shape, 12, generator=torch.Generator().manual_seed(4)).double()
    loss, grads = loss_and_grads(reference, inputs, checkpointing=False)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, inputs, checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=0)
    projection = "lora_mt_projection.flare.weight"
    assert grads[projection].abs().sum() > 0
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)


def without_source(inputs: dict) -> dict:
    return {key: value for key, value in inputs.items() if not key.startswith("source_")}


@pytest.mark.parametrize("kind", ["llama", "xlmr-cls", "mt5"])
@pytest.mark.parametrize("order", ["source,source", "source,none", "none,source"])
def test_two_fused_forwards_before_one_backward(kind, order):
    """Each recompute reads its own forward's source and pairing, whichever forward bound a source last."""
    config = FlareConfig(modules_to_save=HEADS.get(kind))
    reference = get_flare_model(build(kind).double(), config)
    randomize_lora(reference)
    checkpointed = copy.deepcopy(reference)
    first = batch_for(kind, seed=3)
    second = batch_for(kind, seed=9, target_length=6, source_length=8)
    first.update(labels_for(kind, first))
    second.update(labels_for(kind, second))
    batches = [
        inputs if use == "source" else without_source(inputs)
        for use, inputs in zip(order.split(","), [first, second], strict=True)
    ]
    loss, grads = loss_and_grads(reference, batches, checkpointing=False)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, batches, checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-9, rtol=0)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-8, rtol=0, msg=name)


def test_checkpointing_outside_flare_or_reentrant_is_refused():
    flare = get_flare_model(build("llama"), FlareConfig())
    inputs = batch_for("llama")
    with pytest.raises(ValueError, match="use_reentrant=False"):
        flare.activation_checkpointing_enable({"use_reentrant": True})
    flare.get_base_model().activation_checkpointing_enable()
    flare.train()
    with pytest.raises(ValueError, match="enabled on the base model, not on the FlareModel"):
        flare(**inputs)
    with torch.no_grad():  # nothing is recomputed without a backward
        flare(**inputs)
