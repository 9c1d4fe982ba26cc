"""X-Mixup baseline: the entropy-based ratio, the mixing hooks, the losses, LoRA training, save/load, QA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ENCODER_SIZES, batch_for, labels_for
from peft import LoraConfig, get_peft_model
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
)

from flare_xlt.xmixup import XMixupConfig, XMixupModel, gold_source_probability, pair_entropy

SIZES = {**ENCODER_SIZES, "num_hidden_layers": 4}
MIXED = (1, 3)


def classifier(seed: int = 0) -> XLMRobertaForSequenceClassification:
    torch.manual_seed(seed)
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**SIZES, num_labels=3)).eval()


def qa_model(seed: int = 0) -> XLMRobertaForQuestionAnswering:
    torch.manual_seed(seed)
    return XLMRobertaForQuestionAnswering(XLMRobertaConfig(**SIZES)).eval()


def with_lora(model: torch.nn.Module):
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))


def randomize(xmixup: XMixupModel, seed: int = 1) -> None:
    """Move the ratio gates and LoRA B (zero at start) away from their initial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in xmixup.named_parameters():
            if "xmixup_" in name or "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def target_only(inputs: dict) -> dict:
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def hand_entropy(rows: list[list[float]]) -> float:
    """Mean entropy of softmax over each row of plain Python numbers."""
    total = 0.0
    for row in rows:
        norm = sum(math.exp(value) for value in row)
        total -= sum(math.exp(value) / norm * (value - math.log(norm)) for value in row)
    return total / len(rows)


def test_ratio_follows_the_entropy_formula():
    # One example, 2 heads, 3 target positions (the last a pad), 4 source positions (the last a pad).
    scores = torch.tensor(
        [
            [
                [[0.3, -1.2, 2.0, 9.0], [1.5, 0.1, -0.4, -7.0], [5.0, 5.0, 5.0, 5.0]],
                [[-0.8, 0.0, 0.9, 3.0], [2.2, -2.0, 0.5, 1.0], [0.0, 4.0, 0.0, 0.0]],
            ]
        ]
    )
    target_mask = torch.tensor([[True, True, False]])
    source_mask = torch.tensor([[True, True, True, False]])
    values = scores[0].tolist()
    # Target -> source: softmax over the three real source tokens, rows of the two real target tokens.
    forward = hand_entropy([values[h][t][:3] for h in range(2) for t in range(2)])
    # Source -> target: softmax over the two real target tokens, columns of the three real source tokens.
    backward = hand_entropy([[values[h][t][s] for t in range(2)] for h in range(2) for s in range(3)])
    entropy = pair_entropy(scores, target_mask, source_mask)
    assert entropy.item() == pytest.approx(forward + backward, rel=1e-6)

    xmixup = XMixupModel(classifier(), XMixupConfig(layers=MIXED, max_ratio=0.5))
    gate = xmixup.xmixup_ratios["1"]
    assert gate(entropy).item() == pytest.approx(0.5 / (1 + math.exp(-(forward + backward))), rel=1e-6)
    with torch.no_grad():
        gate.weight.fill_(-0.7)
        gate.bias.fill_(0.4)
    expected = 0.5 / (1 + math.exp(-(-0.7 * (forward + backward) + 0.4)))
    assert gate(entropy).item() == pytest.approx(expected, rel=1e-6)


def test_mixing_matches_the_formula_computed_by_hand():
    plain, model = classifier(), classifier()
    xmixup = XMixupModel(model, XMixupConfig(layers=MIXED))
    randomize(xmixup)
    inputs = batch_for("xlmr-cls")
    layer = plain.roberta.encoder.layer[1]
    recorded = []
    hook = layer.attention.register_forward_hook(lambda module, args, output: recorded.append(output[0]))
    with torch.no_grad():
        plain(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
        plain(**target_only(inputs))
    hook.remove()
    source_states, target_states = recorded
    mixed = []
    model.roberta.encoder.layer[1].attention.register_forward_hook(
        lambda module, args, output: mixed.append(output[0])  # after X-Mixup's hook: the last call is mixed
    )
    with torch.no_grad():
        output = xmixup(**inputs)

    attention = layer.attention.self
    batch, heads, width = target_states.shape[0], 4, 8

    def split(states: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
        return (states @ linear.weight.T + linear.bias).view(batch, -1, heads, width).transpose(1, 2)

    with torch.no_grad():
        query, key, value = (
            split(states, projection)
            for states, projection in [
                (target_states, attention.query),
                (source_states, attention.key),
                (source_states, attention.value),
            ]
        )
        scores = query @ key.transpose(-1, -2) / math.sqrt(width)
        source_mask = inputs["source_attention_mask"].bool()
        target_mask = inputs["attention_mask"].bool()
        probs = torch.softmax(scores.masked_fill(~source_mask[:, None, None, :], float("-inf")), dim=-1)
        context = (probs @ value).transpose(1, 2).reshape(batch, -1, heads * width)
        update = context @ layer.attention.output.dense.weight.T + layer.attention.output.dense.bias
        entropies = []
        for row in range(batch):
            real_t, real_s = int(target_mask[row].sum()), int(source_mask[row].sum())
            values = scores[row].tolist()
            entropies.append(
                hand_entropy([values[h][t][:real_s] for h in range(heads) for t in range(real_t)])
                + hand_entropy([[values[h][t][s] for t in range(real_t)] for h in range(heads) for s in range(real_s)])
            )
        gate = xmixup.xmixup_ratios["1"]
        ratio = torch.tensor([0.5 * torch.sigmoid(gate.weight * e + gate.bias).item() for e in entropies])
        expected = F.layer_norm(
            ratio[:, None, None] * update + (1 - ratio[:, None, None]) * target_states,
            (32,),
            layer.attention.output.LayerNorm.weight,
            layer.attention.output.LayerNorm.bias,
            eps=layer.attention.output.LayerNorm.eps,
        )
    torch.testing.assert_close(output.xmixup.lambdas[1], ratio, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[-1], expected, rtol=1e-4, atol=1e-5)
    assert list(output.xmixup.lambdas) == [1, 2]


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
def test_hooks_replace_exactly_the_layer_range(kind: str):
    def build():
        torch.manual_seed(0)
        if kind == "bert":
            return BertForSequenceClassification(BertConfig(**SIZES, num_labels=3)).eval()
        return XLMRobertaForSequenceClassification(XLMRobertaConfig(**SIZES, num_labels=3)).eval()

    plain, model = build(), build()
    xmixup = XMixupModel(model, XMixupConfig(layers=MIXED))
    inputs = batch_for("xlmr-cls")
    with torch.no_grad():
        reference = plain(**target_only(inputs), output_hidden_states=True).hidden_states
        mixed = xmixup(**inputs, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is the output of layer i: embeddings and layer 0 untouched, from layer 1 on changed.
    assert torch.equal(mixed[0], reference[0]) and torch.equal(mixed[1], reference[1])
    assert all(not torch.allclose(mixed[i], reference[i]) for i in range(2, 5))

    # λ forced to 0 (no source): each mixed layer computes LN(h_t) on its attention output and nothing else.
    with torch.no_grad():
        for gate in xmixup.xmixup_ratios.values():
            gate.weight.zero_()
            gate.bias.fill_(-1e4)
        encoder = plain.base_model.encoder
        for index in range(*MIXED):
            norm = encoder.layer[index].attention.output.LayerNorm
            encoder.layer[index].attention.register_forward_hook(
                lambda module, args, output, norm=norm: (norm(output[0]), *output[1:])
            )
        renormed = plain(**target_only(inputs), output_hidden_states=True)
        forced = xmixup(**inputs, output_hidden_states=True)
    assert all(torch.equal(a, b) for a, b in zip(forced.hidden_states, renormed.hidden_states, strict=True))
    assert all(torch.equal(value, torch.zeros(2)) for value in forced.xmixup.lambdas.values())


def test_without_source_is_the_plain_model_and_no_binding_outlives_forward():
    plain, model = classifier(), classifier()
    xmixup = XMixupModel(model, XMixupConfig(layers=MIXED))
    randomize(xmixup)
    inputs = batch_for("xlmr-cls")
    labels = labels_for("xlmr-cls", inputs)
    with torch.no_grad():
        expected = plain(**target_only(inputs), **labels)
        alone = xmixup(**target_only(inputs), **labels)
        xmixup(**inputs)
        direct = model(**target_only(inputs))  # the wrapped model called on its own after a mixed call
    assert torch.equal(alone.logits, expected.logits) and torch.equal(alone.loss, expected.loss)
    assert torch.equal(direct.logits, expected.logits)


def test_source_padding_gets_zero_attention_weight():
    xmixup = XMixupModel(classifier(), XMixupConfig(layers=MIXED))
    randomize(xmixup)
    generator = torch.Generator().manual_seed(0)
    target, source = torch.randn(2, 5, 32, generator=generator), torch.randn(2, 6, 32, generator=generator)
    target_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    source_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        mixed, ratio, probs = xmixup.mix(1, target, source, target_mask, source_mask)
        noisy = source.clone()
        noisy[0, 4:] = 100.0  # whatever the padded source positions hold
        mixed_noisy, ratio_noisy, _ = xmixup.mix(1, target, noisy, target_mask, source_mask)
    assert torch.equal(probs[0, :, :, 4:], torch.zeros(4, 5, 2))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 5))
    assert torch.equal(mixed, mixed_noisy) and torch.equal(ratio, ratio_noisy)

    # End to end: other token ids under the source padding change nothing.
    inputs = batch_for("xlmr-cls")
    changed = dict(
        inputs, source_input_ids=inputs["source_input_ids"].masked_fill(inputs["source_attention_mask"] == 0, 7)
    )
    with torch.no_grad():
        torch.testing.assert_close(xmixup(**changed).logits, xmixup(**inputs).logits, rtol=0, atol=1e-6)


def test_classification_loss_is_task_plus_weighted_consistency():
    plain, model = classifier(), classifier()
    config = XMixupConfig(layers=MIXED, source_loss_weight=0.3, consistency_weight=0.7)
    xmixup = XMixupModel(model, config).train()
    randomize(xmixup)
    inputs = batch_for("xlmr-cls")
    labels = torch.tensor([2, 0])
    output = xmixup(**inputs, labels=labels)
    pieces = output.xmixup
    mixed, source = output.logits, pieces.source_output.logits
    # The representations are the first tokens' final hidden states; the source side is the plain model's.
    with torch.no_grad():
        plain_source = plain(
            input_ids=inputs["source_input_ids"],
            attention_mask=inputs["source_attention_mask"],
            output_hidden_states=True,
        )
    torch.testing.assert_close(source, plain_source.logits)
    torch.testing.assert_close(pieces.source_representation, plain_source.hidden_states[-1][:, 0])
    task = 0.3 * F.cross_entropy(source, labels) + 0.7 * F.cross_entropy(mixed, labels)
    p_source, p_mixed = source.softmax(-1), mixed.softmax(-1)
    kl = (p_source * (p_source.log() - p_mixed.log())).sum(-1).mean()
    mse = ((pieces.source_representation - pieces.target_representation) ** 2).mean()
    torch.testing.assert_close(pieces.task_loss, task)
    torch.testing.assert_close(pieces.consistency_loss, kl + mse)
    torch.testing.assert_close(output.loss, task + 0.7 * (kl + mse))
    assert torch.equal(pieces.mixed_logits, mixed)


def test_eval_logits_average_mixed_and_source_logits():
    xmixup = XMixupModel(classifier(), XMixupConfig(layers=MIXED))
    randomize(xmixup)
    inputs = batch_for("xlmr-cls")
    with torch.no_grad():
        output = xmixup.eval()(**inputs)
        torch.testing.assert_close(output.logits, (output.xmixup.mixed_logits + output.xmixup.source_output.logits) / 2)
        xmixup.config.average_source_logits = False
        assert torch.equal(xmixup(**inputs).logits, output.xmixup.mixed_logits)


def test_gradients_reach_the_ratios_and_lora_not_the_frozen_base():
    xmixup = XMixupModel(with_lora(classifier()), XMixupConfig(layers=MIXED)).train()
    inputs = batch_for("xlmr-cls")
    xmixup(**inputs, **labels_for("xlmr-cls", inputs)).loss.backward()
    trainable = {name: p for name, p in xmixup.named_parameters() if p.requires_grad}
    assert {name for name in trainable if "xmixup_" in name} == {
        f"xmixup_ratios.{i}.{w}" for i in ("1", "2") for w in ("weight", "bias")
    }
    assert all("xmixup_" in name or "lora_" in name for name in trainable)
    for name, parameter in trainable.items():
        assert parameter.grad is not None, name
        if "xmixup_" in name or "lora_B" in name:  # lora_A gets no gradient while B is still zero
            assert parameter.grad.abs().sum() > 0, name
    frozen = [p for name, p in xmixup.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    def run(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xmixup = XMixupModel(with_lora(classifier()), XMixupConfig(layers=MIXED)).train()
        randomize(xmixup)
        if checkpointing:
            xmixup.model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        inputs = batch_for("xlmr-cls")
        loss = xmixup(**inputs, **labels_for("xlmr-cls", inputs)).loss
        loss.backward()
        return loss.detach(), {name: p.grad for name, p in xmixup.named_parameters() if p.requires_grad}

    loss, gradients = run(False)
    checkpointed_loss, checkpointed = run(True)
    torch.testing.assert_close(checkpointed_loss, loss)
    assert gradients.keys() == checkpointed.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed[name], gradient, msg=name)


def test_save_and_load_round_trip(tmp_path):
    xmixup = XMixupModel(with_lora(classifier()), XMixupConfig(layers=MIXED, max_ratio=0.4))
    randomize(xmixup)
    xmixup.save_pretrained(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "xmixup.safetensors", "xmixup_config.json"} <= names
    assert not any(name.startswith(".") for name in names)

    restored = XMixupModel.from_pretrained(classifier(), tmp_path)
    assert restored.config == xmixup.config and not restored.training
    assert not any(p.requires_grad for p in restored.parameters())
    inputs = batch_for("xlmr-cls")
    with torch.no_grad():
        assert torch.equal(restored(**inputs).logits, xmixup.eval()(**inputs).logits)


def test_save_and_load_a_fully_fine_tuned_model(tmp_path):
    xmixup = XMixupModel(classifier(), XMixupConfig(layers=MIXED))
    randomize(xmixup)
    with torch.no_grad():
        xmixup.model.classifier.out_proj.bias.add_(0.5)  # a change that only the saved full model carries
    xmixup.save_pretrained(tmp_path)
    restored = XMixupModel.from_pretrained(classifier(seed=5), tmp_path, is_trainable=True)
    assert restored.training and all(p.requires_grad for p in restored.xmixup_ratios.parameters())
    inputs = batch_for("xlmr-cls")
    with torch.no_grad():
        assert torch.equal(restored.eval()(**inputs).logits, xmixup.eval()(**inputs).logits)


def test_question_answering_head():
    xmixup = XMixupModel(with_lora(qa_model()), XMixupConfig(layers=MIXED, source_loss_weight=0.2)).train()
    randomize(xmixup)
    inputs = batch_for("xlmr-qa")
    positions = labels_for("xlmr-qa", inputs)
    output = xmixup(**inputs, **positions, output_hidden_states=True)
    pieces = output.xmixup
    assert output.start_logits.shape == output.end_logits.shape == inputs["input_ids"].shape
    assert torch.isfinite(output.loss)

    def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([hidden[row, mask[row].bool()].mean(0) for row in range(hidden.shape[0])])

    source_hidden = xmixup.model(
        input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"], output_hidden_states=True
    ).hidden_states[-1]
    source_rep = mean_pool(source_hidden, inputs["source_attention_mask"])
    target_rep = mean_pool(output.hidden_states[-1], inputs["attention_mask"])
    torch.testing.assert_close(pieces.source_representation, source_rep)
    torch.testing.assert_close(pieces.target_representation, target_rep)
    # Without English spans the task loss is the mixed span loss; consistency is the MSE of mean-pooled states.
    span = (
        F.cross_entropy(output.start_logits, positions["start_positions"])
        + F.cross_entropy(output.end_logits, positions["end_positions"])
    ) / 2
    mse = ((source_rep - target_rep) ** 2).mean()
    torch.testing.assert_close(output.loss, span + mse)

    source_positions = {"source_start_positions": torch.tensor([0, 2]), "source_end_positions": torch.tensor([1, 4])}
    with_source = xmixup(**inputs, **positions, **source_positions)
    source = with_source.xmixup.source_output
    source_span = (
        F.cross_entropy(source.start_logits, source_positions["source_start_positions"])
        + F.cross_entropy(source.end_logits, source_positions["source_end_positions"])
    ) / 2
    torch.testing.assert_close(with_source.loss, 0.2 * source_span + 0.8 * span + mse)
    with torch.no_grad():  # QA predicts from the mixed logits in eval mode too
        assert torch.equal(xmixup.eval()(**inputs).start_logits, xmixup.train()(**inputs).start_logits)


def test_gold_source_probability_is_the_inverse_sigmoid_decay():
    assert gold_source_probability(0, 1000) == pytest.approx(1000 / 1001)
    assert gold_source_probability(5000, 1000) == pytest.approx(1000 / (1000 + math.e**5))
    assert gold_source_probability(4000, 2000) == pytest.approx(2000 / (2000 + math.e**2))


def test_config_checks_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="layers"):
        XMixupConfig(layers=(2, 2))
    with pytest.raises(ValueError, match="exceed"):
        XMixupModel(classifier(), XMixupConfig(layers=(3, 5)))
    with pytest.raises(ValueError, match="question answering"):
        XMixupModel(classifier().roberta, XMixupConfig())
    config = XMixupConfig(layers=(15, 16), source_loss_weight=0.2)
    config.save(tmp_path)
    assert XMixupConfig.load(tmp_path) == config
