"""FLARE-MT source states: NLLB encoder outputs for the target-language text, and a store that keeps them on disk.

The authors ran the NLLB encoder inside `Dataset.__getitem__`, so every example went through it again in every epoch,
padded to max_length, and the tokenizer tagged the target-language text as eng_Latn. Here the states are computed
once, in length-sorted batches with dynamic padding and the text's own language tag. They are kept in float16
safetensors shards, which training reads through memory maps.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..io import TensorShards, replace_atomically, save_tensors_atomic

INDEX_NAME = "index.json"
SHARD_NAME = "shard-{:05d}.safetensors"
SHARD_PATTERN = "shard-*.safetensors"
# The first pass only measures token counts; chunking it keeps the token ids of a whole corpus out of memory.
LENGTH_CHUNK = 1024


def encoder_states(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str],
    nllb_code: str,
    max_length: int = 256,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """The NLLB encoder's last hidden states of each text, in input order: (length_i, d_model) on the CPU, padding
    removed, in the model's dtype. These are FLARE-MT's `source_embeds`.

    `model`: an M2M100ForConditionalGeneration or its encoder. `tokenizer`: an NLLB tokenizer. `nllb_code`: the
    language of `texts` (e.g. "swh_Latn"). The tokenizer tags the text with it, not with eng_Latn as the authors' code
    did. The tokenizer's `src_lang` and the model's train/eval mode are restored afterwards. Dropout is off while
    encoding, because the states are fixed features that training reads many times.

    Texts over `max_length` tokens (tags included) are cut by the tokenizer, which keeps the tags. Their number is
    reported through `warnings.warn` (UserWarning).
    """
    if max_length < 1 or batch_size < 1:
        raise ValueError(f"max_length and batch_size must be positive, got {max_length} and {batch_size}.")
    tag_id = tokenizer.convert_tokens_to_ids(nllb_code)
    # An unknown code would become <unk> without an error, and every state would carry that wrong tag.
    if tag_id is None or tag_id == tokenizer.unk_token_id:
        raise ValueError(f"The tokenizer has no language token {nllb_code!r}; pass an NLLB code such as 'swh_Latn'.")
    if not texts:
        return []
    encoder = model.get_encoder() if hasattr(model, "get_encoder") else model
    device = next(encoder.parameters()).device
    previous_language, was_training = tokenizer.src_lang, encoder.training
    tokenizer.src_lang = nllb_code
    encoder.eval()
    try:
        lengths: list[int] = []
        for start in range(0, len(texts), LENGTH_CHUNK):
            lengths.extend(len(ids) for ids in tokenizer(texts[start : start + LENGTH_CHUNK])["input_ids"])
        truncated = sum(length > max_length for length in lengths)
        if truncated:
            warnings.warn(
                f"{truncated} of {len(texts)} texts ({nllb_code}) are longer than max_length={max_length} tokens; "
                f"their encoder states cover only the first {max_length} tokens.",
                stacklevel=2,
            )
        # Longest first: batches of similar lengths need little padding, and a batch too large for memory fails at once.
        order = sorted(range(len(texts)), key=lambda index: -lengths[index])
        states: list[torch.Tensor] = [torch.empty(0)] * len(texts)
        with tqdm(total=len(texts), desc=f"NLLB encoder states ({nllb_code})", unit="text", disable=None) as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                encoded = tokenizer(
                    [texts[index] for index in batch],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                with torch.inference_mode():
                    hidden = encoder(
                        input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device)
                    ).last_hidden_state.cpu()
                # Indexed outside inference mode, so each result is an ordinary tensor with its own storage: autograd
                # accepts it later, and it does not keep the whole padded batch alive.
                real = encoded["attention_mask"].bool()
                for row, index in enumerate(batch):
                    states[index] = hidden[row][real[row]]
                bar.update(len(batch))
    finally:
        tokenizer.src_lang = previous_language
        encoder.train(was_training)
    return states


class EncoderStateStore:
    """float16 safetensors shards on disk and an index; memory-mapped when read at training time.

    The states of a corpus do not fit in memory at NLLB widths (1024 or 2048 per token), and recomputing them every
    epoch is what made the authors' FLARE-MT slow. Each example's tensor is keyed by its id; `index.json` maps ids to
    shards and records `d_model` and free-form `metadata` (e.g. the MT model and language).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(
                f"No encoder state store at {self.directory}: {INDEX_NAME} is missing. Write one with "
                f"EncoderStateStore.write."
            )
        index = json.loads(index_path.read_text(encoding="utf-8"))
        self._shards: dict[str, str] = index["ids"]
        self._d_model = int(index["d_model"])
        self.metadata: dict = index.get("metadata", {})
        self._files = TensorShards(self.directory)

    @classmethod
    def write(
        cls,
        directory: str | Path,
        ids: list[str],
        states: list[torch.Tensor],
        shard_size: int = 1024,
        metadata: dict | None = None,
    ) -> EncoderStateStore:
        """Store `states[i]` (length_i, d_model) under `ids[i]`, as float16, `shard_size` examples per shard.

        A store already in `directory` is replaced. Its index is deleted before the first new shard is written, so an
        interrupted write leaves no readable store rather than old ids pointing into new shards.
        """
        if len(ids) != len(states):
            raise ValueError(f"Got {len(ids)} ids for {len(states)} states.")
        if not ids:
            raise ValueError("No states to write: a store needs at least one example to know its d_model.")
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}.")
        for example_id in ids:
            if not isinstance(example_id, str):
                raise TypeError(f"Example ids must be strings (safetensors keys), got {example_id!r}.")
        if "__metadata__" in ids:
            raise ValueError("'__metadata__' is reserved by the safetensors format and cannot be an example id.")
        duplicates = [example_id for example_id, count in Counter(ids).items() if count > 1]
        if duplicates:
            raise ValueError(f"{len(duplicates)} ids occur more than once, e.g. {duplicates[:5]}.")
        d_model = states[0].shape[-1]
        for example_id, state in zip(ids, states, strict=True):
            if state.dim() != 2 or state.shape[1] != d_model:
                raise ValueError(
                    f"Every state must be (length, {d_model}) like the first; {example_id!r} is {tuple(state.shape)}."
                )

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / INDEX_NAME).unlink(missing_ok=True)
        shard_of: dict[str, str] = {}
        for number, start in enumerate(range(0, len(ids), shard_size)):
            name = SHARD_NAME.format(number)
            tensors = {}
            shard = slice(start, start + shard_size)
            for example_id, state in zip(ids[shard], states[shard], strict=True):
                # A copy of its own: safetensors refuses tensors that share storage (e.g. rows of one batch).
                half = state.detach().to(
                    device="cpu", dtype=torch.float16, memory_format=torch.contiguous_format, copy=True
                )
                if not torch.isfinite(half).all():
                    raise ValueError(f"The state of {example_id!r} is not finite in float16 (NaN, or beyond ±65504).")
                tensors[example_id] = half
                shard_of[example_id] = name
            save_tensors_atomic(directory / name, tensors)
        index = {"ids": shard_of, "d_model": d_model, "metadata": metadata or {}}
        replace_atomically(
            directory / INDEX_NAME, lambda path: Path(path).write_text(json.dumps(index), encoding="utf-8")
        )
        # Shards of an earlier, larger store in this folder are no longer referenced.
        current = set(shard_of.values())
        for shard in directory.glob(SHARD_PATTERN):
            if shard.name not in current:
                shard.unlink()
        return cls(directory)

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._shards

    def __len__(self) -> int:
        return len(self._shards)

    @property
    def d_model(self) -> int:
        return self._d_model

    def get(self, example_id: str) -> torch.Tensor:
        """The (length, d_model) float16 states of one example, read from the memory-mapped shard."""
        try:
            shard = self._shards[example_id]
        except KeyError:
            raise KeyError(
                f"{example_id!r} is not in the encoder state store at {self.directory} ({len(self)} ids)."
            ) from None
        return self._files.get(shard, example_id)

    def batch(self, ids: list[str], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """`source_embeds` (B, S_max, d_model), right-padded with zeros, and `source_attention_mask` (B, S_max) long,
        ready for `FlareModel.forward`. The padding side does not matter: FLARE pairs the k-th real tokens."""
        return padded_states([self.get(example_id) for example_id in ids], self.d_model, dtype)


def padded_states(
    states: list[torch.Tensor], d_model: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(length_i, d_model) states as `source_embeds` (B, S_max, d_model), right-padded with zeros, and
    `source_attention_mask` (B, S_max) long."""
    longest = max((state.shape[0] for state in states), default=0)
    embeds = torch.zeros(len(states), longest, d_model, dtype=dtype)
    mask = torch.zeros(len(states), longest, dtype=torch.long)
    for row, state in enumerate(states):
        embeds[row, : state.shape[0]] = state
        mask[row, : state.shape[0]] = 1
    return embeds, mask
