"""Trains a tiny XLM-R FlareModel with the HF Trainer; run directly or under torchrun (see test_distributed.py)."""

from __future__ import annotations

import os
import sys

import torch
from conftest import ENCODER_SIZES, FIXTURES
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    Trainer,
    TrainingArguments,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.tasks import NUSAX, PairedCollator, TaskEncoder, load_original_view, pair_views


def main(output: str, per_device_batch: int, tokenizer_dir: str) -> None:
    # One tokenizer for every process and run: training it in each process need not give identical vocabularies.
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = XLMRobertaConfig(**{**ENCODER_SIZES, "vocab_size": len(tokenizer)}, num_labels=3)
    flare = get_flare_model(XLMRobertaForSequenceClassification(config), FlareConfig(modules_to_save=["classifier"]))
    data = FIXTURES / "nusax"
    pairs = pair_views(
        NUSAX, load_original_view(NUSAX, "id", "train", data), load_original_view(NUSAX, "en", "train", data)
    )
    pairs = [*pairs, {**pairs[0], "id": "11b"}]  # 4 examples: one global batch, so sampler order cannot matter
    features, _, _ = TaskEncoder(NUSAX, tokenizer, "encoder").encode(pairs)
    arguments = TrainingArguments(
        output_dir=output + ".trainer",
        per_device_train_batch_size=per_device_batch,
        num_train_epochs=3,
        learning_rate=0.5,
        optim="sgd",  # Adam's sign-like first steps would turn noise-level gradient differences into lr-sized jumps
        # The classifier's loss is a mean over examples; DDP then averages equal-sized shards exactly.
        average_tokens_across_devices=False,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        seed=0,
    )
    collator = PairedCollator.for_tokenizer(tokenizer)
    result = Trainer(model=flare, args=arguments, train_dataset=features, data_collator=collator).train()
    if int(os.environ.get("RANK", "0")) == 0:
        weights = {name: p.detach().contiguous() for name, p in flare.named_parameters() if p.requires_grad}
        weights["training_loss"] = torch.tensor([result.training_loss])
        save_file(weights, output)
    if torch.distributed.is_initialized():
        # A gloo group still alive at interpreter exit can abort a rank ("terminate called without an active
        # exception"); close it once every rank is done.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
