"""Random-init models built from transformers configs (nothing is downloaded), the sizes of a run, and the adapters.

Every method of one comparison wraps its own copy of one base model whose frozen weights are shared with the base
(`shared_copy`): the methods differ only in their adapters and forward, and an 8B base fits once in memory.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PretrainedConfig,
    XLMRobertaConfig,
)

from flare_xlt import FlareConfig, FlareModel, get_flare_model
from flare_xlt.tasks import PairedCollator

LLAMA_PAD = 0
XLMR_PAD = 1
FIRST_TOKEN = 4  # ids below are special tokens in both families
R, ALPHA = 8, 16  # the paper's LoRA rank and alpha, for LoRA and FLARE alike


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str  # "decoder" (Llama) or "encoder" (XLM-R sequence classification)
    sizes: dict
    dtype: torch.dtype = torch.float32

    def config(self) -> PretrainedConfig:
        if self.architecture == "decoder":
            return LlamaConfig(**self.sizes, pad_token_id=LLAMA_PAD, bos_token_id=2, eos_token_id=3)
        return XLMRobertaConfig(**self.sizes, pad_token_id=XLMR_PAD, num_labels=3)

    @property
    def pad_id(self) -> int:
        return LLAMA_PAD if self.architecture == "decoder" else XLMR_PAD

    @property
    def padding_side(self) -> str:
        return "left" if self.architecture == "decoder" else "right"

    @property
    def heads(self) -> list[str] | None:
        """Modules trained in full next to the adapter: the classifier of the encoder, as in the paper."""
        return ["classifier"] if self.architecture == "encoder" else None


@dataclass(frozen=True)
class Scale:
    """Sizes of one run: `full` for `make bench`, `tiny` for the test that runs the code path."""

    llama: ModelSpec
    xlmr: ModelSpec
    e5: ModelSpec  # the shape of multilingual-e5-small, for the per-step ratio and the 3-epoch runs with the cache
    e5_length: int  # target and English tokens per example (at most, in the runs)
    e5_batch_size: int
    run_examples: int  # training examples of a 3-epoch run
    sequence_lengths: tuple[int, ...]
    batch_size: int
    repeats: int
    warmup: int
    eval_examples: int
    eval_batch_size: int
    eval_max_length: int
    generation_prompts: int
    generation_batch_size: int
    generation_tokens: int
    mt_source_dim: int  # FLARE-MT input width (NLLB-600M encoder states are 1024 wide)
    nllb_sizes: dict = field(default_factory=dict)
    nllb_vocab: int = 2000
    mt_premises: int = 48
    mt_new_tokens: int = 24
    naive_batch_size: int = 64  # the authors' translation loop: batch 64, padding to max_length 128
    naive_max_length: int = 128


TINY_ENCODER = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=40,
)

SCALES = {
    "full": Scale(
        llama=ModelSpec(
            "Llama, hidden 256, 4 layers, vocabulary 32000",
            "decoder",
            dict(
                vocab_size=32000,
                hidden_size=256,
                intermediate_size=704,
                num_hidden_layers=4,
                num_attention_heads=8,
                num_key_value_heads=2,
                max_position_embeddings=1024,
            ),
        ),
        xlmr=ModelSpec(
            "XLM-R, hidden 256, 4 layers, vocabulary 32000",
            "encoder",
            dict(
                vocab_size=32000,
                hidden_size=256,
                intermediate_size=1024,
                num_hidden_layers=4,
                num_attention_heads=4,
                max_position_embeddings=514,
            ),
        ),
        e5=ModelSpec(
            "e5-small-shaped encoder (XLM-R layout), hidden 384, 12 layers, vocabulary 250002",
            "encoder",
            dict(
                vocab_size=250002,
                hidden_size=384,
                intermediate_size=1536,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=514,
            ),
        ),
        e5_length=64,
        e5_batch_size=16,
        run_examples=48,
        sequence_lengths=(128, 256),
        batch_size=8,
        repeats=5,
        warmup=1,
        eval_examples=256,
        eval_batch_size=32,
        eval_max_length=128,
        generation_prompts=32,
        generation_batch_size=16,
        generation_tokens=16,
        mt_source_dim=1024,
        nllb_sizes=dict(
            d_model=256,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=1024,
            decoder_ffn_dim=1024,
        ),
    ),
    "tiny": Scale(
        llama=ModelSpec(
            "Llama, hidden 32, 2 layers",
            "decoder",
            dict(
                vocab_size=96,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=64,
            ),
        ),
        xlmr=ModelSpec("XLM-R, hidden 32, 2 layers", "encoder", TINY_ENCODER),
        e5=ModelSpec("e5-small-shaped encoder (XLM-R layout), hidden 32, 2 layers", "encoder", TINY_ENCODER),
        e5_length=8,
        e5_batch_size=2,
        run_examples=4,
        sequence_lengths=(8, 16),
        batch_size=2,
        repeats=1,
        warmup=1,
        eval_examples=8,
        eval_batch_size=4,
        eval_max_length=16,
        generation_prompts=4,
        generation_batch_size=2,
        generation_tokens=3,
        mt_source_dim=16,
        nllb_sizes=dict(
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
        ),
        nllb_vocab=300,
        mt_premises=4,
        mt_new_tokens=3,
        naive_batch_size=4,
        naive_max_length=48,
    ),
}

# Llama 3.1 8B's shape with random weights, for the GPU rows.
LLAMA_8B = ModelSpec(
    "Llama-3.1-8B-shaped (random init), bf16",
    "decoder",
    dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    dtype=torch.bfloat16,
)


def build_base(spec: ModelSpec, device: torch.device) -> nn.Module:
    """The random-init base model, created directly on `device` in the spec's dtype."""
    torch.manual_seed(0)
    auto = AutoModelForCausalLM if spec.architecture == "decoder" else AutoModelForSequenceClassification
    with torch.device(device):
        return auto.from_config(spec.config(), dtype=spec.dtype)


def shared_copy(base: nn.Module) -> nn.Module:
    """A copy of `base` with new modules but the same weight tensors, so that adapters can wrap it separately."""
    return copy.deepcopy(base, memo={id(parameter): parameter for parameter in base.parameters()})


def lora_model(base: nn.Module, spec: ModelSpec) -> nn.Module:
    """Plain PEFT LoRA on PEFT's default targets (the attention query and value projections): the baseline."""
    config = LoraConfig(r=R, lora_alpha=ALPHA, modules_to_save=spec.heads)
    return get_peft_model(shared_copy(base), config)


def flare_model(base: nn.Module, spec: ModelSpec, **config: object) -> FlareModel:
    """FLARE on the same targets as `lora_model`, all of them fused."""
    return get_flare_model(shared_copy(base), FlareConfig(r=R, lora_alpha=ALPHA, modules_to_save=spec.heads, **config))


def head_share(base: nn.Module) -> float:
    """Share of the model's linear multiply-accumulates per token spent in the LM head (decoders)."""
    linears = [module for module in base.modules() if isinstance(module, nn.Linear)]
    head = base.get_output_embeddings()
    return head.weight.numel() / sum(module.weight.numel() for module in linears) if head is not None else 0.0


def random_ids(generator: random.Random, length: int, vocab: int) -> list[int]:
    return [generator.randrange(FIRST_TOKEN, vocab) for _ in range(length)]


def paired_feature(spec: ModelSpec, target: list[int], source: list[int], label: int) -> dict:
    """One training/evaluation feature as the task encoder writes it: the target with its labels and the source."""
    return {
        "input_ids": target,
        "attention_mask": [1] * len(target),
        "labels": list(target) if spec.architecture == "decoder" else label,
        "source_input_ids": source,
        "source_attention_mask": [1] * len(source),
    }


def input_fusion_feature(spec: ModelSpec, feature: dict) -> dict:
    """Input-level fusion: the English text followed by the target text in one sequence, through plain LoRA."""
    source, target = feature["source_input_ids"], feature["input_ids"]
    labels = [-100] * len(source) + list(target) if spec.architecture == "decoder" else feature["labels"]
    return {"input_ids": source + target, "attention_mask": [1] * (len(source) + len(target)), "labels": labels}


def without_source(feature: dict) -> dict:
    return {key: value for key, value in feature.items() if not key.startswith("source_")}


def collate(spec: ModelSpec, features: list[dict], device: torch.device, pad_to: int | None = None) -> dict:
    """The library's collator: dynamic padding to the longest sequence of the batch, or to a multiple of `pad_to`."""
    collator = PairedCollator(spec.pad_id, spec.padding_side, pad_to_multiple_of=pad_to)
    batch = collator(features)
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
