"""(b) Evaluation throughput: encoder classification and decoder generation with LoRA, FLARE and FLARE-MT.

The examples have XNLI-like ragged lengths (a quarter of max_length up to max_length; the English side within ±20%
of the target) and are batched by the library's collator with dynamic padding. FLARE-MT reads precomputed MT
encoder states of width `mt_source_dim` from memory (the pipeline reads them from a memory-mapped file).
"""

from __future__ import annotations

import random

import torch
from torch import nn

from .harness import median, paired_ratio, time_interleaved
from .models import ModelSpec, Scale, build_base, collate, flare_model, lora_model, paired_feature, random_ids
from .report import Section, Table, ratio

LORA, FLARE, FLARE_MT = "LoRA", "FLARE", "FLARE-MT"


def ragged_features(spec: ModelSpec, count: int, shortest: int, longest: int, seed: int) -> list[dict]:
    generator = random.Random(seed)
    vocab = spec.sizes["vocab_size"]
    features = []
    for index in range(count):
        length = generator.randint(shortest, longest)
        source_length = min(longest, max(2, round(length * generator.uniform(0.8, 1.2))))
        features.append(
            paired_feature(
                spec, random_ids(generator, length, vocab), random_ids(generator, source_length, vocab), index % 3
            )
        )
    return features


def mt_states(features: list[dict], width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random stand-ins for MT encoder states of the batch's English sides, padded on the right, and their mask."""
    lengths = [len(feature["source_input_ids"]) for feature in features]
    states = torch.zeros(len(features), max(lengths), width)
    mask = torch.zeros(len(features), max(lengths), dtype=torch.long)
    for row, length in enumerate(lengths):
        states[row, :length] = torch.randn(length, width)
        mask[row, :length] = 1
    return states.to(device), mask.to(device)


def method_batches(spec: ModelSpec, features: list[dict], batch_size: int, width: int, device: torch.device) -> dict:
    """The same examples batched for each method: target only, target + English ids, target + MT states."""
    batches: dict[str, list[dict]] = {LORA: [], FLARE: [], FLARE_MT: []}
    for start in range(0, len(features), batch_size):
        chunk = features[start : start + batch_size]
        paired = collate(spec, [{k: v for k, v in f.items() if k != "labels"} for f in chunk], device)
        target = {key: value for key, value in paired.items() if not key.startswith("source_")}
        states, mask = mt_states(chunk, width, device)
        batches[LORA].append(target)
        batches[FLARE].append(paired)
        batches[FLARE_MT].append({**target, "source_embeds": states, "source_attention_mask": mask})
    return batches


def method_models(spec: ModelSpec, base: nn.Module, scale: Scale) -> dict[str, nn.Module]:
    models = {
        LORA: lora_model(base, spec),
        FLARE: flare_model(base, spec),
        FLARE_MT: flare_model(base, spec, mt_source_dim=scale.mt_source_dim),
    }
    return {name: model.eval() for name, model in models.items()}


def classification_table(scale: Scale, repeats: int, device: torch.device) -> Table:
    spec = scale.xlmr
    models = method_models(spec, build_base(spec, device), scale)
    features = ragged_features(spec, scale.eval_examples, scale.eval_max_length // 4, scale.eval_max_length, seed=1)
    batches = method_batches(spec, features, scale.eval_batch_size, scale.mt_source_dim, device)

    def evaluate(name: str):
        def run() -> None:
            with torch.no_grad():
                for batch in batches[name]:
                    models[name](**batch)

        return run

    seconds = time_interleaved({name: evaluate(name) for name in models}, repeats, scale.warmup, device)
    table = Table(
        f"Classification evaluation, {spec.name}: {len(features)} examples, batch {scale.eval_batch_size}",
        ["method", "examples/s", "× LoRA time"],
    )
    for name in models:
        table.rows.append(
            [name, f"{len(features) / median(seconds[name]):.1f}", ratio(paired_ratio(seconds, name, LORA))]
        )
    return table


def generation_table(scale: Scale, repeats: int, device: torch.device) -> Table:
    spec = scale.llama
    models = method_models(spec, build_base(spec, device), scale)
    longest = scale.eval_max_length // 2
    features = ragged_features(spec, scale.generation_prompts, longest // 2, longest, seed=2)
    batches = method_batches(spec, features, scale.generation_batch_size, scale.mt_source_dim, device)
    new_tokens = scale.generation_tokens

    def generate(name: str):
        def run() -> None:
            with torch.no_grad():
                for batch in batches[name]:
                    # A fixed number of new tokens: random weights would otherwise stop at random points.
                    models[name].generate(
                        **batch,
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=spec.pad_id,
                    )

        return run

    seconds = time_interleaved({name: generate(name) for name in models}, repeats, scale.warmup, device)
    table = Table(
        f"Greedy generation, {spec.name}: {len(features)} prompts of {longest // 2}-{longest} tokens, "
        f"batch {scale.generation_batch_size}, {new_tokens} new tokens each, KV cache",
        ["method", "examples/s", "new tokens/s", "× LoRA time"],
    )
    for name in models:
        per_second = len(features) / median(seconds[name])
        table.rows.append(
            [name, f"{per_second:.1f}", f"{per_second * new_tokens:.0f}", ratio(paired_ratio(seconds, name, LORA))]
        )
    table.notes.append(
        "FLARE runs one source pass per batch, then generates with the source bound; FLARE-MT projects the MT states "
        "once per batch."
    )
    return table


def evaluation_section(scale: Scale, repeats: int, device: torch.device) -> Section:
    return Section(
        "(b) Evaluation throughput",
        "Whole evaluation passes under torch.no_grad in eval mode, methods interleaved; median of the repetitions.",
        [classification_table(scale, repeats, device), generation_table(scale, repeats, device)],
    )
