"""Python work per training step: FLARE's bookkeeping must grow with the fused modules, not with the model.

cProfile counts the Python function calls of one step of tiny Llamas of growing depth. What FLARE adds on top of a
LoRA step is its source pass (a forward up to the last fused module) plus per-fused-module work: capture hooks,
looking up the bound source, the fused update. The last column divides the latter by the number of fused modules.
"""

from __future__ import annotations

import cProfile
import pstats
import random

import torch

from .harness import Step
from .models import ModelSpec, build_base, collate, flare_model, lora_model, paired_feature, random_ids, without_source
from .report import Section, Table
from .training import TrainingCase

DEPTHS = (2, 4, 8)


def python_calls(step: Step) -> int:
    step()  # first calls build caches and warn once
    profiler = cProfile.Profile()
    profiler.enable()
    step()
    profiler.disable()
    return pstats.Stats(profiler).total_calls


def overhead_section(device: torch.device) -> Section:
    table = Table(
        "Python function calls per training step (tiny Llama, hidden 32, batch 2, 8 tokens)",
        [
            "layers",
            "fused modules",
            "LoRA step",
            "FLARE step",
            "source pass",
            "FLARE − LoRA − source pass",
            "per fused module",
        ],
    )
    for depth in DEPTHS:
        spec = ModelSpec(
            f"Llama, {depth} layers",
            "decoder",
            dict(
                vocab_size=96,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=depth,
                num_attention_heads=4,
                num_key_value_heads=2,
            ),
        )
        base = build_base(spec, device)
        generator = random.Random(depth)
        features = [
            paired_feature(spec, random_ids(generator, 8, 96), random_ids(generator, 8, 96), 0) for _ in range(2)
        ]
        lora = TrainingCase(lora_model(base, spec), collate(spec, [without_source(f) for f in features], device))
        flare = TrainingCase(flare_model(base, spec), collate(spec, features, device))
        fused = len(flare.model.fused_modules)
        lora_calls, flare_calls, source_calls = (
            python_calls(step) for step in (lora.step, flare.step, flare.source_pass)
        )
        extra = flare_calls - lora_calls - source_calls
        table.rows.append(
            [
                str(depth),
                str(fused),
                str(lora_calls),
                str(flare_calls),
                str(source_calls),
                str(extra),
                f"{extra / fused:.1f}",
            ]
        )
    return Section("Per-step Python overhead", __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(), [table])
