"""Dynamic padding of paired batches for the HF Trainer or a plain DataLoader."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapter.config import KEY_FIELD

SEQUENCE_KEYS = ("input_ids", "attention_mask", "source_input_ids", "source_attention_mask")


@dataclass
class PairedCollator:
    """Pads target and source of a batch to one common length, on the model's padding side.

    Returns input_ids / attention_mask / labels and, for paired batches, source_input_ids / source_attention_mask.
    Token-level labels are padded with -100: with the inputs when they line up with them (decoder-only models), on
    the right to their own length otherwise (encoder-decoder models); scalar labels and QA positions are stacked.
    Each feature's `source_key` (set by the training source cache, source_cache.py) becomes the list `source_keys`.
    Other keys (ids, offsets) are left out: they are bookkeeping, not model inputs.
    """

    pad_token_id: int
    padding_side: str = "right"
    label_pad_id: int = -100
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}.")

    @classmethod
    def for_tokenizer(cls, tokenizer, **kwargs) -> PairedCollator:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token; set one (e.g. tokenizer.pad_token = tokenizer.eos_token for "
                "decoders) before building the collator."
            )
        return cls(pad_token_id=tokenizer.pad_token_id, padding_side=tokenizer.padding_side, **kwargs)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        sequence_keys = [key for key in SEQUENCE_KEYS if key in features[0]]
        token_labels = "labels" in features[0] and isinstance(features[0]["labels"], list)
        # Decoder-only labels line up with input_ids; encoder-decoder labels are the decoder's own sequence.
        aligned = token_labels and all(len(feature["labels"]) == len(feature["input_ids"]) for feature in features)
        if aligned:
            sequence_keys.append("labels")
        length = max(len(feature[key]) for feature in features for key in sequence_keys)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of

        batch = {}
        for key in sequence_keys:
            if key.endswith("attention_mask"):
                fill = 0
            elif key == "labels":
                fill = self.label_pad_id
            else:
                fill = self.pad_token_id
            rows = []
            for feature in features:
                padding = [fill] * (length - len(feature[key]))
                rows.append(
                    padding + list(feature[key]) if self.padding_side == "left" else list(feature[key]) + padding
                )
            batch[key] = torch.tensor(rows, dtype=torch.long)
        if token_labels and not aligned:
            label_length = max(len(feature["labels"]) for feature in features)
            batch["labels"] = torch.tensor(
                [list(f["labels"]) + [self.label_pad_id] * (label_length - len(f["labels"])) for f in features]
            )
        for key in ("labels", "start_positions", "end_positions"):
            if key in features[0] and key not in batch:
                batch[key] = torch.tensor([feature[key] for feature in features], dtype=torch.long)
        if KEY_FIELD in features[0]:
            batch["source_keys"] = [feature[KEY_FIELD] for feature in features]
        return batch
