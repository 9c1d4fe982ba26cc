"""Token pairing: which English (source) token each target token reads in a fused layer.

Two questions, answered here once for training, evaluation and every generate() step:

1. Where in its sequence is each target position? `PositionTracker` counts the target positions that have run in
   the current sequence of each token stream (one forward; or the prefill and the steps of one generate()), with
   masks of its real tokens and of its prompt tokens. FLARE owns this count: the keywords transformers passes
   between its own functions are no API (5.24 renamed the cache keyword and dropped all-ones masks in cached steps).
   Where a KV cache object is visible, its length must agree with the count, or an error names both.
2. Which source token does target token k pair with? `align_tokens`, by `FlareConfig.pairing`:

   start         k-th real target token <-> k-th real source token, counted from each side's first real token
   end           the j-th prompt token from the end <-> the j-th real source token from the end
   proportional  prompt token k of P <-> source token round(k·(S-1)/(P-1)): both ends pair, the middle spreads

   start pairs every real token while the source lasts, answer tokens included (the authors' right-padded pairing).
   end and proportional pair prompt tokens only: the whole input of an encoder, the prefill of a generate(), and
   in a teacher-forced forward the tokens before the first labelled one. Answer and new tokens have no partner, so
   a training forward (prompt + answer) and generation (prompt, then new tokens) pair every prompt token alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import Cache

from .config import PAIRING_MODES

IGNORE_INDEX = -100  # the label of tokens without a loss, as in every transformers model


@dataclass
class TokenAlignment:
    """Pairing of the current target positions with source tokens, for one token stream."""

    source_position: torch.Tensor  # (B, T) long: index into the source sequence
    has_source: torch.Tensor  # (B, T) bool: False where the target token has no partner
    allowed: torch.Tensor | None  # (B, T, T) bool: keys a position-mixing fusion may read; None if unused

    def gather(self, source_codes: torch.Tensor) -> torch.Tensor:
        index = self.source_position.unsqueeze(-1).expand(-1, -1, source_codes.shape[-1])
        return source_codes.gather(1, index)  # (B, S, r) -> (B, T, r)


def align_tokens(
    source_mask: torch.Tensor,
    target_mask: torch.Tensor,
    prompt_mask: torch.Tensor,
    current_length: int,
    pairing: str = "start",
    mask_source_padding: bool = True,
    causal: bool = False,
    need_allowed: bool = False,
) -> TokenAlignment:
    """Pair the last `current_length` of the N target positions so far with source tokens.

    source_mask (B, S), target_mask (B, N) and prompt_mask (B, N, a subset of target_mask) mark real tokens.
    Counting from real tokens makes a token's partner independent of the padding side and amount and of how many
    tokens follow it, so teacher forcing and cached generation agree.
    mask_source_padding=False (the authors' code): padded position p pairs with padded source position p.
    """
    if pairing not in PAIRING_MODES:
        raise ValueError(f"Unknown pairing {pairing!r}; valid choices: {', '.join(PAIRING_MODES)}.")
    batch, source_length = source_mask.shape
    device = source_mask.device
    total_length = target_mask.shape[1]
    target_real = target_mask.to(device=device, dtype=torch.bool)
    current = slice(total_length - current_length, total_length)
    if not mask_source_padding:
        padded_position = torch.arange(total_length - current_length, total_length, device=device).expand(batch, -1)
        has_source = padded_position < source_length  # (B, T)
        source_position = padded_position.clamp(max=source_length - 1)
        key_valid = torch.ones_like(has_source)
    else:
        pairable = target_real if pairing == "start" else prompt_mask.to(device=device, dtype=torch.bool)
        rank = pairable.long().cumsum(-1) - 1  # (B, N): k for the k-th pairable token
        target_count = pairable.sum(-1, keepdim=True)  # (B, 1)
        source_real = source_mask.bool()
        source_count = source_real.sum(-1, keepdim=True)  # (B, 1)
        if pairing == "start":
            source_rank = rank
        elif pairing == "end":
            source_rank = rank + source_count - target_count
        else:  # proportional: round(k·(S-1)/(P-1)) in integers, halves rounded up
            denominator = (target_count - 1).clamp(min=1)
            source_rank = (2 * rank * (source_count - 1) + denominator) // (2 * denominator)
        has_source = (pairable & (source_rank >= 0) & (source_rank < source_count))[:, current]  # (B, T)
        real_first = torch.argsort((~source_real).to(torch.int8), dim=-1, stable=True)  # (B, S): real tokens first
        source_position = real_first.gather(1, source_rank[:, current].clamp(0, source_length - 1))  # (B, T)
        key_valid = target_real[:, current]
    allowed = None
    if need_allowed:
        allowed = key_valid.unsqueeze(1).expand(-1, current_length, -1)  # (B, T, T)
        if causal:
            allowed = allowed & torch.ones(current_length, current_length, dtype=torch.bool, device=device).tril()
    return TokenAlignment(source_position, has_source, allowed)


def prompt_before_answer(real: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(B, N) bool: the real tokens before the first labelled one, i.e. the prompt of a teacher-forced forward.

    Without labels, or where nothing precedes the first label (language-model style labels on every token), the
    whole input is the prompt.
    """
    if labels is None:
        return real
    labelled = (labels.to(real.device) != IGNORE_INDEX) & real
    prompt = real & (labelled.long().cumsum(-1) == 0)
    whole = ~prompt.any(-1, keepdim=True)
    return torch.where(whole, real, prompt)


def first_token_only(real: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: each row's first real token (the decoder start token of an encoder-decoder model)."""
    return real & (real.long().cumsum(-1) == 1)


def visible_cache_length(args: tuple, kwargs: dict) -> int | None:
    """The length of the KV cache a model call carries, whatever keyword carries it; None if it carries none."""
    caches = [value for value in (*args, *kwargs.values()) if isinstance(value, Cache)]
    if len(caches) > 1:
        raise RuntimeError(
            f"FLARE found {len(caches)} KV cache objects in one model call and cannot tell which to use."
        )
    return caches[0].get_seq_length() if caches else None


@dataclass
class SequenceHistory:
    """The target positions one stream has run so far in the current sequence."""

    real: torch.Tensor  # (B, N) bool: real (non-pad) tokens
    prompt: torch.Tensor  # (B, N) bool: prompt tokens, which end/proportional pairing pairs

    @property
    def length(self) -> int:
        return self.real.shape[1]

    def rows_repeated(self, batch: int) -> SequenceHistory:
        return SequenceHistory(rows_repeated(self.real, batch), rows_repeated(self.prompt, batch))


def rows_repeated(rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Each row repeated in place to `batch` rows, as generate() expands a batch for beams or samples."""
    if batch == rows.shape[0]:
        return rows
    if batch % rows.shape[0]:
        raise RuntimeError(f"FLARE recorded {rows.shape[0]} rows of this sequence; the model now runs {batch} rows.")
    return rows.repeat_interleave(batch // rows.shape[0], 0)


@dataclass
class GenerationPlan:
    """What FlareModel.generate() knows before transformers' loop starts: whether steps are cached, and the prompt."""

    use_cache: bool
    prompt_masks: dict[str, torch.Tensor]  # stream -> (B, P) the caller's 2-D attention mask of its input


@dataclass
class PositionTracker:
    """Counts the positions of the current sequence of each stream (see the module docstring)."""

    histories: dict[str, SequenceHistory] = field(default_factory=dict)
    generation: GenerationPlan | None = None

    def reset(self, generation: GenerationPlan | None = None) -> None:
        self.histories = {}
        self.generation = generation

    def advance(
        self,
        stream: str,
        batch: int,
        length: int,
        attention_mask: torch.Tensor | None,
        cache_length: int | None,
        device: torch.device,
        prompt_of_new_sequence: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[int, SequenceHistory]:
        """Count a call of `length` target positions; return (positions before it, the stream's history).

        `prompt_of_new_sequence(real)` gives the prompt mask (B, N) when the call starts a new sequence.
        """
        previous = self.histories.get(stream)
        generating = self.generation is not None
        if generating and previous is not None:
            previous = previous.rows_repeated(batch)
            if self.generation.use_cache:  # a cached step: the cache holds what ran before
                past = previous.length
                if cache_length is None:
                    raise RuntimeError(
                        f"generate() ran a cached step of {length} positions after {past}, but the model call "
                        "carries no KV cache object, so FLARE cannot check where it is. This transformers version "
                        "passes the cache in a way FLARE does not know; pass use_cache=False to generate()."
                    )
                if cache_length != past:
                    raise RuntimeError(
                        f"The KV cache holds {cache_length} positions but FLARE counted {past} in this generate(), "
                        "so pairing would be wrong. Assisted, contrastive or prefix-cached decoding is not supported."
                    )
            else:  # no cache: each step runs the whole sequence again
                past = 0
                if cache_length or length != previous.length + 1:
                    raise RuntimeError(
                        f"generate(use_cache=False) ran {length} positions (cache: {cache_length}) after a call of "
                        f"{previous.length}; FLARE expects the whole sequence plus one new token."
                    )
        else:
            past = cache_length or 0
            if past == 0:
                previous = None  # a new sequence
            elif generating or previous is None or previous.length != past:
                seen = "none" if generating or previous is None else str(previous.length)
                raise RuntimeError(
                    f"The model call continues a KV cache of {past} positions, but FLARE saw {seen} of them run "
                    "under this source; it can only pair a sequence whose earlier positions ran under the same source."
                )
        total = past + length

        if attention_mask is not None and attention_mask.dim() == 2:
            if tuple(attention_mask.shape) != (batch, total):
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but FLARE counts {batch} rows of "
                    f"{total} positions ({past} earlier + {length} now)."
                )
            real = attention_mask.to(device=device, dtype=torch.bool)
        elif attention_mask is not None and not generating:
            raise ValueError(
                "FLARE pairs tokens through a 2-D attention_mask (batch, length); "
                f"got shape {tuple(attention_mask.shape)}."
            )
        elif previous is not None:  # generate() leaves out masks that add only real tokens
            real = torch.cat(
                [previous.real, torch.ones(batch, total - previous.length, dtype=torch.bool, device=device)], 1
            )
        elif generating and stream in self.generation.prompt_masks:
            prompt_mask = self.generation.prompt_masks[stream].to(device=device, dtype=torch.bool)
            real = rows_repeated(prompt_mask, batch)
            if real.shape[1] != total:
                raise RuntimeError(
                    f"generate()'s first model call runs {total} positions but the prompt has {real.shape[1]}."
                )
        else:
            real = torch.ones(batch, total, dtype=torch.bool, device=device)

        if previous is not None:
            new_positions = torch.zeros(batch, total - previous.length, dtype=torch.bool, device=device)
            prompt = torch.cat([previous.prompt, new_positions], 1)
        else:
            prompt = prompt_of_new_sequence(real)
        self.histories[stream] = SequenceHistory(real, prompt)
        return past, self.histories[stream]
