"""Trainable parameters, what the source pass keeps, source sites, and the stage-1 task adapter."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import HEADS, batch_for, build, labels_for, randomize_lora
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from flare_xlt import FlareConfig, get_flare_model


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("xlmr-cls", FlareConfig(fusion="cross_attention", modules_to_save=["classifier"])),
        ("llama", FlareConfig(target_modules="all-linear")),
        ("llama", FlareConfig(mt_source_dim=10)),
        ("mt5", FlareConfig(fusion="matmul")),
    ],
    ids=["xlmr-cross-attention-head", "llama-all-linear", "llama-mt", "mt5-matmul"],
)
def test_gradients_reach_only_adapter_parameters(kind, config):
    flare = get_flare_model(build(kind), config).train()
    randomize_lora(flare)
    inputs = batch_for(kind)
    inputs.update(labels_for(kind, inputs))
    if config.mt_source_dim:
        inputs["source_embeds"] = torch.randn(*inputs.pop("source_input_ids").shape, config.mt_source_dim)
    flare(**inputs).loss.backward()

    def allowed(name: str) -> bool:
        return any(part in name for part in ("lora_A", "lora_B", "lora_fusion_attention", "lora_mt_projection")) or (
            ".modules_to_save.flare." in name
        )

    trainable = {name for name, p in flare.named_parameters() if p.requires_grad}
    with_grad = {name for name, p in flare.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trainable == {name for name, _ in flare.named_parameters() if allowed(name)}
    assert with_grad <= trainable
    expected = {name for name in trainable if "lora_B" in name or "lora_mt_projection" in name or "to_query" in name}
    assert expected <= with_grad, sorted(expected - with_grad)


def test_source_pass_keeps_one_tensor_per_input_and_stops_early():
    flare = get_flare_model(build("llama"), FlareConfig(target_modules="all-linear"))
    network = flare.get_base_model()
    calls = {"lm_head": 0, "last_mlp": 0, "norm": 0}
    network.lm_head.register_forward_hook(lambda *_: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    network.model.layers[-1].mlp.register_forward_hook(lambda *_: calls.__setitem__("last_mlp", calls["last_mlp"] + 1))
    network.model.norm.register_forward_hook(lambda *_: calls.__setitem__("norm", calls["norm"] + 1))
    inputs = batch_for("llama")
    with torch.no_grad():
        flare(**inputs)
    # The source pass stops at the last fused projection (v_proj of the last layer): it runs neither that layer's MLP,
    # the final norm nor the LM head, which only the target pass runs.
    assert calls == {"lm_head": 1, "last_mlp": 1, "norm": 1}

    source = flare.flare_state.source
    assert (
        set(source.inputs)
        == set(flare.fused_modules)
        == {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    )
    distinct = {id(t) for t in source.inputs.values()}
    assert len(distinct) == 2  # q_proj and v_proj of a layer read one tensor, stored once
    for tensor in source.inputs.values():
        assert tensor.shape == (2, 6, 32) and not tensor.requires_grad


@pytest.mark.parametrize("offset", [0, 1])
def test_block_input_site_reads_hidden_states(offset):
    """block_input with offset 0 is HF hidden_states[i] (the authors' code); offset 1 is hidden_states[i + 1]."""
    flare = get_flare_model(build("llama"), FlareConfig(source_site="block_input", source_layer_offset=offset))
    inputs = batch_for("llama")
    with torch.no_grad(), flare.disable_adapter():
        hidden = flare.get_base_model()(
            input_ids=inputs["source_input_ids"],
            attention_mask=inputs["source_attention_mask"],
            output_hidden_states=True,
        ).hidden_states
    with torch.no_grad():
        flare(**inputs)
    source = flare.flare_state.source.inputs
    for layer in range(2):
        tensor = source[f"model.layers.{layer}.self_attn.q_proj"]
        if layer + offset < 2:  # hidden_states[2] is after the final norm, the last block's output is not
            torch.testing.assert_close(tensor, hidden[layer + offset], atol=0, rtol=0)
    linear = get_flare_model(build("llama"), FlareConfig())
    with torch.no_grad():
        linear(**inputs)
    assert not torch.allclose(linear.flare_state.source.inputs["model.layers.1.self_attn.q_proj"], hidden[1])


def test_source_sites_coincide_on_post_norm_encoders():
    """In BERT-style post-norm blocks the query/value input is the block input, so both sites fuse the same."""
    outputs = []
    for site in ("linear_input", "block_input"):
        flare = get_flare_model(build("xlmr-cls"), FlareConfig(source_site=site)).eval()
        randomize_lora(flare)
        with torch.no_grad():
            outputs.append(flare(**batch_for("xlmr-cls")).logits)
    torch.testing.assert_close(outputs[0], outputs[1], atol=0, rtol=0)


def stage1_model():
    """An English task model: LoRA on query/value with non-zero weights and a trained classifier copy."""
    base = build("xlmr-cls")
    stage1 = get_peft_model(
        base,
        LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "key"], modules_to_save=["classifier"]),
        adapter_name="task",
    )
    randomize_lora(stage1, seed=21, adapter="task")
    with torch.no_grad():
        for name, parameter in stage1.named_parameters():
            if ".modules_to_save.task." in name:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(22)))
    return stage1.eval()


@pytest.mark.parametrize("mode", ["merge", "frozen"])
def test_stage1_adapter_stays_on_in_the_source_pass(mode):
    stage1 = stage1_model()
    inputs = batch_for("xlmr-cls")
    # What layer 1's query sees when the English text runs through the stage-1 model itself.
    seen = []
    query = stage1.get_base_model().roberta.encoder.layer[1].attention.self.query
    handle = query.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        stage1(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
    handle.remove()

    flare = get_flare_model(copy.deepcopy(stage1), FlareConfig(modules_to_save=["classifier"]), stage1=mode).eval()
    randomize_lora(flare, seed=5)
    with torch.no_grad():
        flare(**inputs)
    captured = flare.flare_state.source.inputs["roberta.encoder.layer.1.attention.self.query"]
    torch.testing.assert_close(captured, seen[0], atol=1e-5, rtol=1e-5)


def test_stage1_merge_and_frozen_compute_the_same_model():
    stage1 = stage1_model()
    config = FlareConfig(modules_to_save=["classifier"])
    merged = get_flare_model(copy.deepcopy(stage1), config, stage1="merge").eval()
    frozen = get_flare_model(copy.deepcopy(stage1), config, stage1="frozen").eval()
    randomize_lora(merged, seed=5)
    set_peft_model_state_dict(frozen, get_peft_model_state_dict(merged, adapter_name="flare"), adapter_name="flare")
    inputs = batch_for("xlmr-cls")
    with torch.no_grad():
        torch.testing.assert_close(frozen(**inputs).logits, merged(**inputs).logits, atol=1e-5, rtol=1e-5)
        with_head = stage1(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        frozen_plain = frozen(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    # Zeroing the FLARE adapter leaves exactly the stage-1 model, trained head included.
    for name, parameter in frozen.named_parameters():
        if "lora_B.flare" in name:
            parameter.data.zero_()
    with torch.no_grad():
        torch.testing.assert_close(frozen(**inputs).logits, with_head, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(frozen_plain.logits, with_head, atol=1e-4)


def test_frozen_stage1_adapter_does_not_train():
    flare = get_flare_model(stage1_model(), FlareConfig(modules_to_save=["classifier"]), stage1="frozen").train()
    randomize_lora(flare, seed=5)
    task = {name: p.detach().clone() for name, p in flare.named_parameters() if ".task." in name}
    assert task and not any(p.requires_grad for name, p in flare.named_parameters() if ".task." in name)
    key_layers = [m for n, m in flare.named_modules() if n.endswith("attention.self.key")]
    assert all(type(m).__name__ == "Linear" and "task" in m.lora_A for m in key_layers)  # stage-1-only targets
    optimizer = torch.optim.SGD([p for p in flare.parameters() if p.requires_grad], lr=0.1)
    inputs = batch_for("xlmr-cls")
    inputs.update(labels_for("xlmr-cls", inputs))
    flare(**inputs).loss.backward()
    optimizer.step()
    for name, parameter in flare.named_parameters():
        if name in task:
            assert parameter.grad is None and torch.equal(parameter, task[name])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in flare.named_parameters() if ".flare." in n)


def test_heads_are_trainable_copies():
    flare = get_flare_model(build("xlmr-qa"), FlareConfig(modules_to_save=HEADS["xlmr-qa"]))
    names = [name for name, p in flare.named_parameters() if p.requires_grad and "qa_outputs" in name]
    assert names == [
        "base_model.model.qa_outputs.modules_to_save.flare.weight",
        "base_model.model.qa_outputs.modules_to_save.flare.bias",
    ]


def test_flare_head_copies_are_off_in_the_source_pass():
    """A FLARE-trained embed_tokens copy belongs to the adapter: the source must see the original embeddings."""
    flare = get_flare_model(build("llama"), FlareConfig(modules_to_save=["embed_tokens"]))
    randomize_lora(flare)
    with torch.no_grad():
        flare.get_base_model().model.embed_tokens.modules_to_save["flare"].weight.mul_(3.0)
    inputs = batch_for("llama")
    seen = []
    q_proj = flare.get_base_model().model.layers[0].self_attn.q_proj
    handle = q_proj.base_layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with flare.disable_adapter(), torch.no_grad():
        flare(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
    handle.remove()
    with torch.no_grad():
        flare(**inputs)
    torch.testing.assert_close(flare.flare_state.source.inputs["model.layers.0.self_attn.q_proj"], seen[0])
    assert flare.get_base_model().model.embed_tokens.modules_to_save["flare"].weight.requires_grad
    assert not flare.get_base_model().model.embed_tokens.disable_adapters  # switched back on for the target pass


def test_source_kwargs_reach_the_source_pass_in_generate():
    flare = get_flare_model(build("llama"), FlareConfig())
    inputs = batch_for("llama")
    seen = []
    flare.get_base_model().base_model.register_forward_pre_hook(  # the source pass runs the backbone
        lambda _m, _a, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True
    )
    positions = torch.arange(6).expand(2, -1)
    flare.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        source_input_ids=inputs["source_input_ids"],
        source_position_ids=positions,
        max_new_tokens=1,
        pad_token_id=0,
    )
    assert torch.equal(seen[0], positions)  # the first call is the source pass
