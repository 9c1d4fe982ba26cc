"""Trains a tiny XLM-R FlareModel in a plain loop: one process, or two CPU processes with FSDP2 (fully_shard over a
gloo mesh) under torchrun. Each process takes its share of one global batch; see test_distributed.py."""

from __future__ import annotations

import os
import sys

import torch
from conftest import ENCODER_SIZES, FIXTURES
from safetensors.torch import save_file
from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.tasks import NUSAX, PairedCollator, TaskEncoder, load_original_view, pair_views


def main(output: str, tokenizer_dir: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = XLMRobertaConfig(**{**ENCODER_SIZES, "vocab_size": len(tokenizer)}, num_labels=3)
    flare = get_flare_model(XLMRobertaForSequenceClassification(config), FlareConfig(modules_to_save=["classifier"]))
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in flare.get_base_model().roberta.encoder.layer:
            fully_shard(layer, mesh=mesh)
        fully_shard(flare, mesh=mesh)
    data = FIXTURES / "nusax"
    pairs = pair_views(
        NUSAX, load_original_view(NUSAX, "id", "train", data), load_original_view(NUSAX, "en", "train", data)
    )
    pairs = [*pairs, {**pairs[0], "id": "11b"}]  # 4 examples: one global batch
    features, _, _ = TaskEncoder(NUSAX, tokenizer, "encoder").encode(pairs)
    share = len(features) // world
    batch = PairedCollator.for_tokenizer(tokenizer)(features[rank * share : (rank + 1) * share])
    trainable = [parameter for parameter in flare.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    flare.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = flare(**batch).loss  # the mean over this process's share; FSDP averages gradients over processes
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    mean_loss = torch.stack(losses).mean()
    if world > 1:
        torch.distributed.all_reduce(mean_loss)
        mean_loss /= world
    weights = {}
    for name, parameter in flare.named_parameters():
        if parameter.requires_grad:
            full = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
            weights[name] = full.detach().contiguous().clone()
    if rank == 0:
        weights["training_loss"] = mean_loss.reshape(1)
        save_file(weights, output)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
