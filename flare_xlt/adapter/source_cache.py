"""The training source cache: each example's captured source tensors, computed once (by the pre-pass before training,
source_prepass.py, or in the example's first epoch) and read by every later step.

The source pass runs a frozen network (the FLARE adapter off) on the English input. With a deterministic pass
(FlareConfig.source_dropout=False) it gives the same tensors for an example in every epoch, so later epochs can
read them instead of running it. A cached row is what the fused modules read of one example: for each distinct
captured tensor, its rows at the example's real source tokens, (L, d) without padding, in the dtype the pass
recorded (the compute dtype of A·x_s). A batch is rebuilt at the positions of its own source mask, so padding side
and batch composition do not matter.

Keys are hashes of what the source pass reads of a feature (its source_* token sequences): a key cannot name
another text, and features reading the same English (QA windows paired with one English window) share one entry.
The model and adapter settings (model config, frozen weights, capture points, dtypes) form the cache's
fingerprint; disk shards written under another fingerprint are ignored.

The disk store writes safetensors shards atomically (a shard is whole or absent) and reads them through memory
maps, like the FLARE-MT state store. Each process writes its own shards (`rank<r>-<n>.safetensors`) and reads every
process's, so the share a process meets in a later epoch is found whichever process computed it, and a run
resumed after a kill finds everything flushed before it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..io import TensorShards, save_tensors_atomic
from .config import CACHE_MODES, KEY_FIELD
from .source_prepass import bound_source
from .state import INPUT_STREAM, BoundSource

SHARD_BYTES = 256 * 2**20  # a disk shard is written once this much is pending (and at every epoch end and save)
CHECKSUM_CHUNK = 2**20  # elements of a weight summed at once by the cache fingerprint
_SHARD_NAME = re.compile(r"rank(\d+)-(\d+)\.safetensors")


def source_key(feature: dict) -> str:
    """The cache key of a feature: a hash of every source_* sequence it gives the source pass."""
    digest = hashlib.sha256()
    for name in sorted(key for key in feature if key.startswith("source_") and key != KEY_FIELD):
        digest.update(json.dumps([name, list(feature[name])]).encode())
    return digest.hexdigest()[:32]


class SourceCache:
    """Captured source rows by key, in memory (`directory` None) or in safetensors shards in `directory`.

    `layout` maps each fused module to (group, stream): the group names the distinct captured tensor it reads (q and
    v of a layer share one), the stream says which source mask gives its real positions.
    """

    def __init__(
        self, fingerprint: str, directory: str | Path | None = None, rank: int = 0, shard_bytes: int = SHARD_BYTES
    ) -> None:
        self.fingerprint = fingerprint
        self.directory = Path(directory) if directory is not None else None
        self.rank = rank
        self.shard_bytes = shard_bytes
        self.layout: dict[str, tuple[str, str]] | None = None
        self._rows: dict[str, dict[str, torch.Tensor]] = {}  # in memory, or written at the next flush
        self._pending_bytes = 0
        self._shard_of: dict[str, str] = {}  # key -> shard holding it
        self._next_shard = 0
        self._ignored: set[str] = set()  # shards of another fingerprint
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._files = TensorShards(self.directory)
            self._scan()

    def __len__(self) -> int:
        return len(self._rows.keys() | self._shard_of.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._rows or key in self._shard_of

    # ------------------------------------------------------------------ reading
    def bound(self, keys: Sequence[str], masks: dict[str, torch.Tensor]) -> BoundSource | None:
        """The source of a batch whose rows are `keys`, at the real positions of `masks` (stream -> (B, S)), or None
        when a key is missing (the batch then runs the source pass)."""
        if any(key not in self for key in keys) and self.directory is not None:
            self._scan()  # another process may have written them since
        if self.layout is None or any(key not in self for key in keys):
            return None
        tensors = {}
        for group, stream in sorted(set(self.layout.values())):
            mask = masks[stream]  # (B, S)
            rows = [self._row(key, group) for key in keys]  # each (L_i, d)
            lengths = mask.sum(dim=1).tolist()
            for key, row, length in zip(keys, rows, lengths, strict=True):
                if row.shape[0] != length:
                    raise ValueError(
                        f"The cached source {key!r} has {row.shape[0]} {stream} tokens, but the batch's source mask "
                        f"has {length}: the cache at {self.directory or 'memory'} does not belong to these inputs."
                    )
            full = rows[0].new_zeros(*mask.shape, rows[0].shape[-1], device=mask.device)  # (B, S, d)
            full[mask] = torch.cat(rows).to(mask.device)
            tensors[group] = full
        return BoundSource({module: tensors[group] for module, (group, _) in self.layout.items()}, masks)

    def _row(self, key: str, group: str) -> torch.Tensor:
        rows = self._rows.get(key)
        if rows is not None:
            return rows[group]
        return self._files.get(self._shard_of[key], f"{key}/{group}")

    # ------------------------------------------------------------------ writing
    def add(self, keys: Sequence[str], source: BoundSource, streams: dict[str, str]) -> None:
        """Keep the rows of `source` (a batch whose rows are `keys`) that are not cached yet; `streams` maps each fused
        module to its stream."""
        groups: dict[int, str] = {}  # id of a captured tensor -> its group: the first module reading it
        layout = {}
        for module, tensor in source.inputs.items():
            layout[module] = (groups.setdefault(id(tensor), module), streams[module])
        self._check_layout(layout)
        tensors = {group: source.inputs[group] for group in groups.values()}
        for row, key in enumerate(keys):
            if key in self:
                continue
            self._rows[key] = {
                group: tensor[row][source.masks[layout[group][1]][row]].cpu()  # (L, d), its own storage
                for group, tensor in tensors.items()
            }
            self._pending_bytes += sum(t.nbytes for t in self._rows[key].values())
        if self.directory is not None and self._pending_bytes >= self.shard_bytes:
            self.flush()

    def _check_layout(self, layout: dict[str, tuple[str, str]]) -> None:
        if self.layout is None:
            self.layout = layout
        elif layout != self.layout:
            raise ValueError(
                "The source pass captured tensors in another layout than the cache holds (fused modules or their "
                "sharing changed); the cache belongs to another model or adapter."
            )

    def flush(self) -> None:
        """Write the pending rows to a new shard (disk store; the memory store keeps them)."""
        if self.directory is None or not self._rows:
            return
        name = f"rank{self.rank}-{self._next_shard:05d}.safetensors"
        tensors = {f"{key}/{group}": row for key, rows in self._rows.items() for group, row in rows.items()}
        metadata = {"fingerprint": self.fingerprint, "layout": json.dumps(self.layout)}
        save_tensors_atomic(self.directory / name, tensors, metadata)
        self._shard_of.update(dict.fromkeys(self._rows, name))
        self._next_shard += 1
        self._rows, self._pending_bytes = {}, 0

    def _scan(self) -> None:
        """Index the shards in the folder not indexed yet. A shard of another fingerprint is ignored, and deleted when
        it is this process's own (its number is then free again)."""
        known = set(self._shard_of.values()) | self._ignored
        for path in sorted(self.directory.iterdir()):
            match = _SHARD_NAME.fullmatch(path.name)
            if match is None or path.name in known:
                continue
            handle = self._files.open(path.name)
            metadata = handle.metadata() or {}
            own = int(match.group(1)) == self.rank
            if metadata.get("fingerprint") != self.fingerprint:
                self._files.close(path.name)
                if own:
                    path.unlink()
                else:
                    self._ignored.add(path.name)
                continue
            self._check_layout({module: tuple(entry) for module, entry in json.loads(metadata["layout"]).items()})
            for name in handle.keys():
                self._shard_of.setdefault(name.rpartition("/")[0], path.name)
            if own:
                self._next_shard = max(self._next_shard, int(match.group(2)) + 1)


class FlushSourceCache(TrainerCallback):
    """Write the disk cache's pending rows at the end of every epoch and with every checkpoint, so that a resumed run
    finds what was computed before its checkpoint."""

    def __init__(self, cache: SourceCache) -> None:
        self.cache = cache

    def on_epoch_end(self, args, state, control, **kwargs):
        self.cache.flush()
        return control

    def on_save(self, args, state, control, **kwargs):
        self.cache.flush()
        return control


def cache_fingerprint(model, dtypes: dict[str, str]) -> str:
    """What decides the captured tensors besides the input: the base model's config and frozen weights (a checksum),
    the FLARE capture points and source settings, and the dtypes recorded."""
    network = model.get_base_model()
    frozen = [weight_checksum(p) for p in model.parameters() if not p.requires_grad and p.numel()]
    settings = {
        "config": network.config.to_dict(),
        "weights": torch.stack(frozen).tolist() if frozen else [],
        "capture": sorted(model._capture_points.items()),
        "source_site": model.flare_config.source_site,
        "source_layer_offset": model.flare_config.source_layer_offset,
        "dtypes": sorted(dtypes.items()),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weight_checksum(parameter: torch.Tensor) -> torch.Tensor:
    """The float64 sum of a weight, in chunks of 2^20 elements: a sum(dtype=float64) of the whole tensor would first
    make a float64 copy of it (733 MiB for e5-small's 250k x 384 embedding, measured as the cached runs' peak)."""
    chunks = parameter.detach().reshape(-1).split(CHECKSUM_CHUNK)
    return torch.stack([chunk.sum(dtype=torch.float64) for chunk in chunks]).sum()


def open_source_cache(
    model,
    features: list[dict],
    mode: str,
    max_gb: float,
    directory: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
    autocast: torch.dtype | None = None,
    announce: bool = True,
    collate: Callable[[list[dict]], dict] | None = None,
) -> SourceCache:
    """Attach a training source cache to `model` (a FlareModel) for `features` and return it.

    Sets each feature's `source_key`, which PairedCollator hands to the model as `source_keys`. One source pass on
    the first feature measures the bytes per source token (under `autocast`, the dtype training will run in); the
    estimate for all distinct sources is printed (with `announce`) and refused above `max_gb`. With `collate` (the
    training collator), two more passes check that padding on its side leaves the rows of real tokens as they are:
    rows kept from one batch serve any other only then.
    """
    if mode not in CACHE_MODES[1:]:
        raise ValueError(f"Unknown source_cache {mode!r}; valid choices: {', '.join(CACHE_MODES)}.")
    config = model.flare_config
    problems = []
    if config.source_dropout:
        problems.append("it needs a deterministic source pass: set source_dropout to false in the adapter settings")
    if not config.mask_source_padding:
        problems.append(
            "it keeps real source tokens only, but mask_source_padding=false fuses pad positions, whose states depend "
            "on each batch's padding"
        )
    if config.mt_source_dim is not None or not model.fused_modules:
        problems.append("this adapter runs no source pass (FLARE-MT or plain LoRA): there is nothing to cache")
    if mode == "memory" and world_size > 1:
        problems.append(
            "the memory store keeps what each process computed, but the Trainer hands every process other examples "
            "in each epoch; use source_cache=disk, whose shards the processes share"
        )
    if mode == "disk" and directory is None:
        problems.append("the disk store needs a directory")
    if problems:
        raise ValueError(f"source_cache={mode!r} cannot be used: {'; '.join(problems)}.")
    if not features or "source_input_ids" not in features[0]:
        raise ValueError("source_cache needs paired features (with source_input_ids) to cache.")

    lengths = {}
    for feature in features:
        feature[KEY_FIELD] = source_key(feature)
        mask = feature.get("source_attention_mask")
        lengths[feature[KEY_FIELD]] = sum(mask) if mask is not None else len(feature["source_input_ids"])
    probe = _probe(model, features[0], autocast)
    if collate is not None:
        _refuse_padding_dependence(model, features, collate, autocast)
    per_token = {stream: 0 for stream in probe.masks}  # bytes each real token of a stream adds
    for tensor in {id(t): t for t in probe.inputs.values()}.values():
        stream = next(model.fused_modules[name].flare_stream for name, t in probe.inputs.items() if t is tensor)
        per_token[stream] += tensor.shape[-1] * tensor.element_size()
    other_tokens = sum(
        mask.shape[1] * per_token[stream] for stream, mask in probe.masks.items() if stream != INPUT_STREAM
    )
    total = sum(length * per_token[INPUT_STREAM] + other_tokens for length in lengths.values())
    dtypes = {name: str(tensor.dtype) for name, tensor in probe.inputs.items()}
    where = f"in {directory}" if mode == "disk" else "in memory"
    summary = (
        f"source cache ({mode}): {len(lengths)} distinct sources of {len(features)} features, "
        f"{', '.join(sorted(set(dtypes.values())))}, about {_decimal_size(total)} {where} (limit {max_gb:g} GB)"
    )
    if total > max_gb * 1e9:
        raise ValueError(
            f"{summary}: above the limit. Raise source_cache_max_gb"
            + (", use source_cache=disk" if mode == "memory" else "")
            + ", or turn the cache off (source_cache=off: the source pass then runs in every epoch)."
        )
    if announce:
        print(summary)
    cache = SourceCache(cache_fingerprint(model, dtypes), directory if mode == "disk" else None, rank)
    model.source_cache = cache
    return cache


def _decimal_size(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} B"


PADDING_TOLERANCE = 0.1  # of the largest state: rounding (bf16: about 1%) stays far below, moved positions do not


def _refuse_padding_dependence(model, features: list[dict], collate, autocast: torch.dtype | None) -> None:
    """Raise if the source rows of real tokens change with the padding of their batch: the first half of the longest
    source, alone and padded (by `collate`, on the training side) next to the whole source. Absolute positions that
    count from the first token of a left-padded row (XGLM) move every state."""
    longest = max(features[:64], key=lambda feature: len(feature["source_input_ids"]))
    whole = {name: list(value) for name, value in longest.items() if name.startswith("source_") and name != KEY_FIELD}
    half = {name: value[: max(1, len(value) // 2)] for name, value in whole.items()}
    if len(half["source_input_ids"]) == len(whole["source_input_ids"]):
        return  # a one-token source has no padding to compare
    alone, padded = (
        bound_source(model, collate([half]), autocast),
        bound_source(model, collate([half, whole]), autocast),
    )
    for name, tensor in alone.inputs.items():
        stream = model.fused_modules[name].flare_stream
        reference = tensor[0][alone.masks[stream][0]].float()  # (L, d)
        moved = (padded.inputs[name][0][padded.masks[stream][0]].float() - reference).abs().max().item()
        if moved > PADDING_TOLERANCE * reference.abs().max().item():
            raise ValueError(
                f"The source states of this model change with the padding of their batch ({name} moves by {moved:.3g} "
                f"when a source is padded next to a longer one): rows cached from one batch are not what another "
                "computes, e.g. absolute positions counted from the first pad of a left-padded row. Pad on the right "
                "(the tokenizer's padding_side), or turn the cache off (source_cache=off)."
            )


def _probe(model, feature: dict, autocast: torch.dtype | None) -> BoundSource:
    """The source of one feature, as training will capture it."""
    inputs = {
        name: torch.tensor([feature[name]]) for name in feature if name.startswith("source_") and name != KEY_FIELD
    }
    return bound_source(model, inputs, autocast)
