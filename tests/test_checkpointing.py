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


def loss_and_grads(flare, inputs, checkpointing, reentrant=False):
    network = flare.get_base_model()
    if checkpointing:
        network.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        if reentrant:  # reentrant checkpoints need an input that requires grad to build a graph at all
            network.enable_input_require_grads()
    flare.train()
    flare.zero_grad()
    loss = flare(**inputs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in flare.named_parameters() if p.requires_grad}
    return loss.detach(), grads


# The source pass runs under no_grad; reentrant checkpointing warns that its blocks need no gradients there.
@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
@pytest.mark.parametrize(
    ("kind", "fusion", "reentrant"),
    [
        ("llama", "add_relu", False),
        ("llama", "add_relu", True),
        ("llama", "cross_attention", False),
        ("qwen2", "matmul", False),
        ("xlmr-cls", "add_relu", False),
        ("xlmr-cls", "mul", True),
        ("mt5", "add_relu", False),
    ],
)
def test_checkpointing_keeps_loss_and_gradients(kind, fusion, reentrant):
    config = FlareConfig(fusion=fusion, modules_to_save=HEADS.get(kind))
    reference = get_flare_model(build(kind).double(), config)
    randomize_lora(reference)
    checkpointed = copy.deepcopy(reference)
    inputs = batch_for(kind)
    inputs.update(labels_for(kind, inputs))

    loss, grads = loss_and_grads(reference, inputs, checkpointing=False)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, inputs, checkpointing=True, reentrant=reentrant)
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
