"""Batches of similar length: the pre-pass's and predict()'s sorted batches, and length-grouped training batches.

predict() gives the same predictions, byte for byte, with sorted batches as with batches in input order; training
with group_by_length sees every example once per epoch, in batches whose lengths do not interleave, in an order
that changes with the epoch and that a resumed run repeats."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DECODER_SIZES, ENCODER_SIZES, NUSAX_DATA, randomize_lora, train_tokenizer
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
    XLMRobertaConfig,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
)

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.adapter.source_prepass import length_sorted_batches, paired_length
from flare_xlt.pipeline.predict import predict
from flare_xlt.pipeline.settings import TrainConfig
from flare_xlt.pipeline.training import LengthGroupedSampler, train_adapter
from flare_xlt.tasks import NUSAX, TYDIQA, PairedCollator, TaskEncoder, load_original_view, pair_views


def spans_do_not_interleave(batches: list[list[int]], lengths: list[int]) -> bool:
    """Each batch's lengths form a range, and no two ranges overlap: the batches cut one sorted list of lengths."""
    spans = sorted((min(lengths[i] for i in batch), max(lengths[i] for i in batch)) for batch in batches)
    return all(low_end <= high_start for (_, low_end), (high_start, _) in itertools.pairwise(spans))


def test_length_sorted_batches_respect_both_limits_and_cover_every_index_once():
    lengths = [5, 30, 7, 30, 2, 12, 9, 40, 3, 11]
    batches = length_sorted_batches(lengths, max_items=3, max_tokens=64)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 64)
    flat = [index for batch in batches for index in batch]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    assert flat[:3] == [7, 1, 3]  # ties in index order
    assert spans_do_not_interleave(batches, lengths)


def test_length_grouped_sampler_groups_lengths_and_holds_every_example_once_per_epoch():
    lengths = torch.randint(3, 60, (43,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=5)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(lengths))) and order == list(sampler)
        batches = [order[start : start + 4] for start in range(0, len(order), 4)]
        assert len(batches[-1]) == 3  # the short batch comes last, so a DataLoader cuts these batches
        assert spans_do_not_interleave(batches, lengths)  # 43 examples: one window of 50 batches
        longest = [max(lengths[i] for i in batch) for batch in batches[:-1]]
        assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # batches are shuffled
        orders.append(order)
    assert orders[0] != orders[1] != orders[2] != orders[0]


class Batches(TrainerCallback):
    """The indices of each training batch (through the collator) and a kill before step `stop_at_step`."""

    def __init__(self, stop_at_step: int | None = None) -> None:
        self.seen: list[list[int]] = []
        self.stop_at_step = stop_at_step
        self.collate = PairedCollator(pad_token_id=0)

    def __call__(self, features: list[dict]) -> dict:
        self.seen.append([feature["index"] for feature in features])
        return self.collate(features)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at_step:
            raise KeyboardInterrupt("killed")


def grouped_features() -> list[dict]:
    generator = torch.Generator().manual_seed(11)
    rows = []
    for index in range(12):
        target, source = (int(n) for n in torch.randint(2, 24, (2,), generator=generator))
        rows.append(
            {
                "index": index,
                "input_ids": torch.randint(3, 96, (target,), generator=generator).tolist(),
                "attention_mask": [1] * target,
                "labels": index % 3,
                "source_input_ids": torch.randint(3, 96, (source,), generator=generator).tolist(),
                "source_attention_mask": [1] * source,
            }
        )
    return rows


def grouped_training(run_dir, stop_at_step: int | None = None) -> list[list[int]]:
    torch.manual_seed(0)
    flare = get_flare_model(
        XLMRobertaForSequenceClassification(XLMRobertaConfig(**ENCODER_SIZES, num_labels=3)),
        FlareConfig(modules_to_save=["classifier"]),
    )
    batches = Batches(stop_at_step)
    config = TrainConfig(batch_size=3, epochs=2, warmup_ratio=0.0, seed=0, save_steps=1, group_by_length=True)
    train_adapter(flare, grouped_features(), config, run_dir, batches, [batches])
    return batches.seen


def test_group_by_length_trains_each_example_once_per_epoch_in_grouped_batches_a_resumed_run_repeats(tmp_path):
    seen = grouped_training(tmp_path / "whole")
    lengths = [paired_length(feature) for feature in grouped_features()]
    epochs = [seen[:4], seen[4:]]
    assert len(seen) == 8
    for batches in epochs:
        assert sorted(index for batch in batches for index in batch) == list(range(12))
        assert spans_do_not_interleave(batches, lengths)
    assert epochs[0] != epochs[1]
    with pytest.raises(KeyboardInterrupt):
        grouped_training(tmp_path / "killed", stop_at_step=5)
    assert grouped_training(tmp_path / "killed") == seen[5:]  # resumed in the second epoch: its order, not another


def nusax_pairs() -> list[dict]:
    """14 NusaX pairs of ragged lengths, built from the fixture sentences: sorted, their batches change."""
    target = [
        r["text"]
        for split in ("train", "validation", "test")
        for r in load_original_view(NUSAX, "id", split, NUSAX_DATA)
    ]
    source = [
        r["text"]
        for split in ("train", "validation", "test")
        for r in load_original_view(NUSAX, "en", split, NUSAX_DATA)
    ]
    return pair_views(
        NUSAX,
        [
            {"id": str(i), "language": "id", "text": " ".join([target[i % 9]] * (1 + i % 4)), "label": i % 3}
            for i in range(14)
        ],
        [
            {"id": str(i), "language": "en", "text": " ".join([source[(2 * i) % 9]] * (1 + (i + 1) % 3))}
            for i in range(14)
        ],
    )


def qa_pairs() -> list[dict]:
    """QA pairs whose contexts need one to three windows at 48 tokens."""
    records = {"sw": [], "en": []}
    for i in range(7):
        for language, filler, answer in (
            ("sw", "mji ni mkubwa sana", "Nairobi"),
            ("en", "the city is very big", "Nairobi"),
        ):
            context = " ".join([filler] * (1 + 3 * (i % 4))) + f" {answer} is the capital."
            records[language].append(
                {
                    "id": str(i),
                    "language": language,
                    "question": "What is the capital?" if language == "en" else "Mji mkuu ni nini?",
                    "context": context,
                    "answers": {"text": [answer], "answer_start": [context.index(answer)]},
                }
            )
    return pair_views(TYDIQA, records["sw"], records["en"])


def encoder_flare(model_class, tokenizer, **config):
    torch.manual_seed(0)
    # Weights of std 0.5, not 0.02: the classes of a random model then depend on the input.
    sizes = {**ENCODER_SIZES, "vocab_size": len(tokenizer), "max_position_embeddings": 160, "initializer_range": 0.5}
    flare = get_flare_model(model_class(XLMRobertaConfig(**sizes, **config)), FlareConfig())
    randomize_lora(flare)
    return flare.eval()


def decoder_flare(tokenizer):
    torch.manual_seed(0)
    sizes = {
        **DECODER_SIZES,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    flare = get_flare_model(LlamaForCausalLM(LlamaConfig(**sizes)), FlareConfig())
    randomize_lora(flare)
    return flare.eval()


@pytest.mark.parametrize("case", ["encoder-classification", "decoder-generation", "encoder-qa"])
def test_sorted_predict_equals_predict_in_input_order_byte_for_byte(case):
    architecture = "decoder" if case == "decoder-generation" else "encoder"
    tokenizer = train_tokenizer(architecture)
    task, pairs, max_length = (TYDIQA, qa_pairs(), 48) if case == "encoder-qa" else (NUSAX, nusax_pairs(), 96)
    if case == "decoder-generation":
        model = decoder_flare(tokenizer)
    elif case == "encoder-qa":
        model = encoder_flare(XLMRobertaForQuestionAnswering, tokenizer)
    else:
        model = encoder_flare(XLMRobertaForSequenceClassification, tokenizer, num_labels=3)
    features, _, _ = TaskEncoder(task, tokenizer, architecture, "paired", max_length, for_generation=True).encode(pairs)
    lengths = [paired_length(feature) for feature in features]
    sorted_batches = length_sorted_batches(lengths, max_items=4)
    in_order = [list(range(start, min(start + 4, len(features)))) for start in range(0, len(features), 4)]
    assert sorted_batches != in_order and len(set(lengths)) > 3  # the two paths batch other examples together

    def run(sort_by_length: bool):
        return predict(
            model, tokenizer, task, architecture, pairs, "paired", max_length, 4, sort_by_length=sort_by_length
        )

    (predictions, raw), (reference, reference_raw) = run(True), run(False)
    assert raw == reference_raw and predictions == reference
    assert len(set(map(str, raw))) > 1  # not one constant answer, which any order would reproduce
