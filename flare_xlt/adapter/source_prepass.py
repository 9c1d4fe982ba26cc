"""The source pre-pass: the English side of every training example runs once before training and fills the source
cache, so that no training step runs the source pass.

With a deterministic source pass (FlareConfig.source_dropout=False) an example's source rows are the same in every
epoch (source_cache.py). The first epoch need not compute them at the training batch: the pre-pass runs the same
source pass (FlareModel.source, in training mode, under the training autocast dtype, padded by the training
collator, so on the model's padding side) under `torch.inference_mode()`, on batches of examples of similar length
whose padded size stays under a token budget. A verse of 33 tokens is then padded to its neighbours' length, not to
the longest verse of a random batch, and the batch size follows the budget rather than the training batch.

The cache keeps each example's rows at its real tokens only, so the rows do not depend on which batch computed
them, up to float rounding of other shapes (the cache's tests bound it).

Resumable: rows go to the cache as each batch ends; the disk store writes them to a shard every FLUSH_SECONDS (and
every SHARD_BYTES) and when the pass ends or fails. A run killed during the pass finds the flushed shards when it
starts again and computes only the sources they lack.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .config import KEY_FIELD
from .state import BoundSource

FLUSH_SECONDS = 120.0  # the disk store writes a shard at least this often during the pre-pass


def paired_length(feature: dict) -> int:
    """What a paired feature adds to its batch's padded length: the collator pads target and source to one length."""
    return max(len(feature["input_ids"]), len(feature.get("source_input_ids", ())))


def length_sorted_batches(
    lengths: Sequence[int], max_items: int | None = None, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices into `lengths` in batches of neighbours in length, longest first (ties in index order). A batch holds
    at most `max_items` indices, and at most `max_tokens` padded tokens (its size times its longest length; an item
    longer than that gets a batch of its own)."""
    if max_items is None and max_tokens is None:
        raise ValueError("length_sorted_batches needs max_items, max_tokens or both.")
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    batches: list[list[int]] = []
    for index in order:
        batch = batches[-1] if batches else None
        full = batch is None or (max_items is not None and len(batch) >= max_items)
        # Sorted longest first, so the batch's first item gives its padded length.
        if not full and max_tokens is not None and (len(batch) + 1) * lengths[batch[0]] > max_tokens:
            full = True
        if full:
            batches.append([index])
        else:
            batch.append(index)
    return batches


def bound_source(model, source_batch: dict[str, torch.Tensor], autocast: torch.dtype | None) -> BoundSource:
    """The source a training step of `model` (a FlareModel) captures for `source_batch` (source_* tensors, as the
    collator gives them): the pass runs in training mode (the source is bound in training even where
    fuse_at_inference is off), under `autocast` (the dtype training runs in), where the model's parameters are."""
    device = next(model.parameters()).device
    inputs = {name.removeprefix("source_"): tensor.to(device) for name, tensor in source_batch.items()}
    was_training = model.training
    model.train()
    try:
        with (
            torch.autocast(device.type, dtype=autocast, enabled=autocast is not None),
            model.source(inputs.pop("input_ids"), inputs.pop("attention_mask", None), **inputs),
        ):
            source = model.flare_state.source
    finally:
        model.train(was_training)
    if model.flare_state.open_bindings == 0:
        model.flare_state.source = None  # a binding keeps its source for a checkpointed backward; this one has none
    return source


def fill_source_cache(
    model,
    features: Sequence[dict],
    collate: Callable[[list[dict]], dict],
    max_tokens: int,
    autocast: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    label: str = "source pre-pass",
    progress: bool = True,
) -> int:
    """Run the source pass of every distinct source of `features` that `model.source_cache` lacks, and add its rows
    to the cache; returns how many sources this process computed.

    `features` carry their cache key (open_source_cache sets it). `collate` pads a list of features as training does
    (a PairedCollator: it is given the source_* fields only). Batches hold sources of similar length, at most
    `max_tokens` padded tokens each. With several processes, process `rank` computes every `world_size`-th batch;
    all run as many passes (the last ones again where a share is short), so that a sharded model (FSDP), whose
    forwards are collective, sees the same number everywhere.
    """
    cache = model.source_cache
    if cache is None:
        raise ValueError(
            "The source pre-pass fills a source cache, but none is attached; call open_source_cache first."
        )
    if max_tokens < 1:
        raise ValueError(f"The pre-pass's tokens per batch must be a positive integer, got {max_tokens!r}.")
    missing: dict[str, dict] = {}
    for feature in features:
        if KEY_FIELD not in feature:
            raise ValueError(f"The pre-pass needs each feature's {KEY_FIELD!r}, which open_source_cache sets.")
        if feature[KEY_FIELD] not in cache:
            missing.setdefault(feature[KEY_FIELD], {k: v for k, v in feature.items() if k.startswith("source_")})
    sources = list(missing.values())
    batches = length_sorted_batches([len(source["source_input_ids"]) for source in sources], max_tokens=max_tokens)
    share = batches[rank::world_size]
    passes = -(-len(batches) // world_size)
    share += (share or batches)[-1:] * (passes - len(share))  # rows already added are skipped by the cache
    streams = {name: layer.flare_stream for name, layer in model.fused_modules.items()}
    computed = 0
    last_flush = time.monotonic()
    bar = tqdm(share, desc=label, unit="batch", disable=None if progress else True)
    try:
        for batch_indices in bar:
            computed += run_batch(model, [sources[index] for index in batch_indices], collate, autocast, streams)
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                cache.flush()
                last_flush = time.monotonic()
    finally:
        bar.close()
        cache.flush()  # the disk store keeps what was computed, even when the pass fails
    return computed


def run_batch(model, sources: list[dict], collate, autocast: torch.dtype | None, streams: dict[str, str]) -> int:
    """One batch of the pre-pass: its source pass, without autograd bookkeeping, and its rows added to the cache
    (those it lacks); returns how many it lacked."""
    batch = collate(sources)
    keys = batch.pop("source_keys")
    new = len({key for key in keys if key not in model.source_cache})
    with torch.inference_mode():
        source = bound_source(model, batch, autocast)
    model.source_cache.add(keys, source, streams)  # outside inference mode: the kept rows are ordinary tensors
    return new
