"""The lean source pass: early exit changes nothing, nothing after the last capture point runs, q and v share one
captured tensor in the adapter's dtype, and no hidden-state tuple is collected."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import batch_for, build, labels_for, randomize_lora

from flare_xlt import FlareConfig, get_flare_model

LLAMA_LAYER0 = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
MT5_ENCODER_BLOCK0 = ["encoder.block.0.layer.0.SelfAttention.q", "encoder.block.0.layer.0.SelfAttention.v"]


def loss_logits_and_gradients(flare, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    flare.zero_grad(set_to_none=True)
    output = flare(**inputs)
    output.loss.backward()
    gradients = {name: p.grad.clone() for name, p in flare.named_parameters() if p.grad is not None}
    return output.logits.detach(), gradients


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("llama", FlareConfig()),
        ("llama", FlareConfig(source_site="block_input", source_layer_offset=1)),
        ("llama", FlareConfig(fusion_modules=LLAMA_LAYER0)),
        ("xlmr-cls", FlareConfig(fusion="cross_attention", modules_to_save=["classifier"])),
        ("mt5", FlareConfig()),
        ("mt5", FlareConfig(fusion_modules=MT5_ENCODER_BLOCK0)),
    ],
    ids=["llama", "llama-block-offset1", "llama-layer0", "xlmr-cross-attention", "mt5", "mt5-encoder-block0"],
)
def test_early_exit_gives_identical_logits_and_gradients(kind, config):
    flare = get_flare_model(build(kind), config).train()
    randomize_lora(flare)
    inputs = batch_for(kind)
    inputs.update(labels_for(kind, inputs))

    early_logits, early_gradients = loss_logits_and_gradients(flare, inputs)
    flare.source_pass_early_exit = False
    full_logits, full_gradients = loss_logits_and_gradients(flare, inputs)

    assert torch.equal(early_logits, full_logits)
    assert early_gradients.keys() == full_gradients.keys()
    assert any("lora_A" in name for name in early_gradients)  # A receives gradient through A·x_s
    for name, gradient in early_gradients.items():
        assert torch.equal(gradient, full_gradients[name]), name


def completed_forwards(network: torch.nn.Module) -> dict[str, int]:
    """Counts, per module name, forwards that ran to the end (a forward hook fires only after forward returns)."""
    counts = dict.fromkeys((name for name, _ in network.named_modules() if name), 0)
    for name in counts:
        network.get_submodule(name).register_forward_hook(
            lambda _module, _args, _output, name=name: counts.__setitem__(name, counts[name] + 1)
        )
    return counts


def in_a_process_group(monkeypatch) -> None:
    """What the source pass sees under DeepSpeed or FSDP: an initialised process group."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)


@pytest.mark.parametrize(
    ("kind", "fused", "before", "rest_of_block", "after"),
    [
        (
            "llama",
            LLAMA_LAYER0,
            ["model.embed_tokens", "model.layers.0.input_layernorm", "model.layers.0.self_attn.q_proj"],
            ["model.layers.0.self_attn.v_proj", "model.layers.0.mlp", "model.layers.0", "model.norm"],
            ["model.layers.1", "lm_head"],
        ),
        (
            "xlmr-cls",
            ["layer.0.attention.self.query", "layer.0.attention.self.value"],
            ["roberta.embeddings", "roberta.encoder.layer.0.attention.self.query"],
            ["roberta.encoder.layer.0.attention.output", "roberta.encoder.layer.0"],
            ["roberta.encoder.layer.1", "classifier"],
        ),
        (  # the last block is fused: the LM head (its large vocabulary) never runs, nor the rest of that block
            "llama",
            None,
            ["model.layers.0", "model.layers.1.self_attn.q_proj"],
            ["model.layers.1.mlp", "model.layers.1", "model.norm"],
            ["lm_head"],
        ),
        (
            "mt5",
            MT5_ENCODER_BLOCK0,
            ["encoder.embed_tokens", "encoder.block.0.layer.0.SelfAttention.q"],
            ["encoder.block.0.layer.0.SelfAttention.o", "encoder.block.0", "encoder.final_layer_norm"],
            ["encoder.block.1", "decoder", "lm_head"],
        ),
    ],
)
def test_nothing_after_the_last_capture_point_runs(kind, fused, before, rest_of_block, after, monkeypatch):
    """A single process stops as soon as the last capture point has recorded; inside a process group the pass
    finishes the block it is in (sharding frameworks need complete forwards) and stops after it; without early exit
    everything runs."""
    flare = get_flare_model(build(kind), FlareConfig(fusion_modules=fused)).train()
    counts = completed_forwards(flare.get_base_model())
    inputs = batch_for(kind)

    def ran(names: list[str]) -> list[int]:
        with flare.source(inputs["source_input_ids"], inputs["source_attention_mask"]):
            pass
        return [counts[name] for name in names]

    assert ran(before + rest_of_block + after) == [1] * len(before) + [0] * len(rest_of_block + after)
    with monkeypatch.context() as patch:
        in_a_process_group(patch)
        everything = before + rest_of_block + after  # counts add up over the passes
        assert ran(everything) == [2] * len(before) + [1] * len(rest_of_block) + [0] * len(after)
    flare.source_pass_early_exit = False  # the counting sees the later modules when they do run
    assert ran(after) == [1] * len(after)


@pytest.mark.parametrize(
    ("kind", "query", "value", "layers"),
    [("llama", "self_attn.q_proj", "self_attn.v_proj", "model.layers"), ("xlmr-cls", "query", "value", "layer")],
)
def test_query_and_value_share_one_captured_tensor(kind, query, value, layers):
    flare = get_flare_model(build(kind), FlareConfig()).eval()
    network = flare.get_base_model()
    inputs = batch_for(kind)
    # Independently: what each query projection reads when the English text runs through the bare base model.
    seen = {}
    handles = [
        module.register_forward_pre_hook(lambda _m, args, name=name: seen.__setitem__(name, args[0]))
        for name, module in network.named_modules()
        if name.endswith(query)
    ]
    with torch.no_grad(), flare.disable_adapter():
        network(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
    for handle in handles:
        handle.remove()

    with flare.source(inputs["source_input_ids"], inputs["source_attention_mask"]):
        captured = flare.flare_state.source.inputs
    query_names = sorted(name for name in captured if name.endswith(query))
    assert len(query_names) == 2 and all(f"{layers}." in name for name in query_names)
    for name in query_names:
        assert captured[name] is captured[name.removesuffix(query) + value]
        assert torch.equal(captured[name], seen[name])
    assert len({id(tensor) for tensor in captured.values()}) == 2  # one tensor per layer, nothing else kept


def test_bf16_source_is_kept_once_per_layer_in_the_adapter_dtype():
    """PEFT keeps the adapter of a bf16 model in fp32; q and v share one fp32 copy of their input."""
    flare = get_flare_model(build("llama").to(torch.bfloat16), FlareConfig())
    network = flare.get_base_model()
    inputs = batch_for("llama")
    seen = []
    handle = network.model.layers[1].self_attn.q_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad(), flare.disable_adapter():
        network(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
    handle.remove()

    with flare.source(inputs["source_input_ids"], inputs["source_attention_mask"]):
        captured = flare.flare_state.source.inputs
    assert network.model.layers[1].self_attn.q_proj.lora_A["flare"].weight.dtype == torch.float32
    assert {tensor.dtype for tensor in captured.values()} == {torch.float32}
    assert len({id(tensor) for tensor in captured.values()}) == 2
    assert seen[0].dtype == torch.bfloat16
    assert torch.equal(captured["model.layers.1.self_attn.q_proj"], seen[0].float())


def test_source_pass_does_not_collect_outputs_a_config_asks_for():
    """Models loaded with output_hidden_states=True (as the authors load theirs) still get a lean source pass; an
    explicit source_output_hidden_states argument is passed through. Gemma 2 runs eager attention, which can return
    attention maps."""
    flare = get_flare_model(build("gemma2"), FlareConfig())
    network = flare.get_base_model()
    network.config.output_hidden_states = True
    network.config.output_attentions = True
    source_calls = []
    network.base_model.register_forward_pre_hook(  # the source pass runs the backbone, without the LM head
        lambda _m, _args, kwargs: source_calls.append(dict(kwargs)) if flare.flare_state.capturing else None,
        with_kwargs=True,
    )
    inputs = batch_for("gemma2")
    with torch.no_grad():
        target_output = flare(**inputs)
        flare(**inputs, source_output_hidden_states=True)
    assert len(target_output.hidden_states) == 3  # the target pass still honours the config
    assert source_calls[0]["output_hidden_states"] is False and source_calls[0]["output_attentions"] is False
    assert source_calls[1]["output_hidden_states"] is True


@pytest.mark.parametrize(
    ("kind", "fused"), [("llama", LLAMA_LAYER0), ("llama", None), ("xlmr-cls", None), ("mt5", MT5_ENCODER_BLOCK0)]
)
def test_early_exit_finishes_every_module_it_starts_in_a_process_group(kind, fused, monkeypatch):
    """DeepSpeed ZeRO-3 and FSDP gather a module's parameters in its forward pre-hooks and release them in its
    post-hooks, registered when they wrap the model. In a process group the early exit raises nothing through a
    forward: every module that starts in the source pass also finishes, so none is left gathered."""
    in_a_process_group(monkeypatch)
    flare = get_flare_model(build(kind), FlareConfig(fusion_modules=fused)).train()
    network = flare.get_base_model()
    started, finished = Counter(), Counter()
    for name, module in network.named_modules():
        module.register_forward_pre_hook(lambda *_, name=name: started.update([name]))
        module.register_forward_hook(lambda *_, name=name: finished.update([name]))
    inputs = batch_for(kind)
    with flare.source(inputs["source_input_ids"], inputs["source_attention_mask"]):
        pass
    assert started == finished and started
