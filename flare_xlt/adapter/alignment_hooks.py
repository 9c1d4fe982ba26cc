"""Pairing each call's target positions with the bound source: the forward pre-hooks a FlareModel puts on the wrapped
network (and on the encoder of an encoder-decoder model).

They run for every call of the network: a training forward, a prefill, each generate() step with a KV cache. FLARE
counts the positions itself (token_pairing.PositionTracker, checked against the cache), finds the prompt where a
causal model's labels mark the answer, and aligns each stream's target tokens with the source tokens
(token_pairing.align_tokens) for the FLARE layers to read from the shared state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import FlareConfig
from .fusion import POSITION_MIXING_FUSIONS
from .state import DECODER_STREAM, INPUT_STREAM, BoundSource, FlareState
from .token_pairing import (
    SequenceHistory,
    TokenAlignment,
    align_tokens,
    first_token_only,
    prompt_before_answer,
    visible_cache_length,
)


class PositionAligner:
    """The alignment pre-hooks of one FlareModel, with what they read: the shared state, the adapter's settings,
    which streams are causal, and whether fusion is on (`fusion_active`, asked at every call)."""

    def __init__(
        self,
        state: FlareState,
        config: FlareConfig,
        is_encoder_decoder: bool,
        input_stream_causal: bool,
        fusion_active: Callable[[], bool],
    ) -> None:
        self.state, self.config = state, config
        self.is_encoder_decoder, self.input_stream_causal = is_encoder_decoder, input_stream_causal
        self.fusion_active = fusion_active

    def register(self, network: nn.Module) -> None:
        network.register_forward_pre_hook(self.align_target, with_kwargs=True)
        if self.is_encoder_decoder:
            network.get_encoder().register_forward_pre_hook(self.align_encoder, with_kwargs=True)

    def stream_is_causal(self, stream: str) -> bool:
        return stream == DECODER_STREAM or self.input_stream_causal

    def current_source(self, batch: int, target: torch.Tensor | None) -> BoundSource | None:
        state = self.state
        if state.open_bindings == 0 or not self.fusion_active():
            # Outside forward/generate/source() a source kept from an earlier call is stale; and in eval mode
            # with fuse_at_inference=False nothing is fused, even inside source().
            state.source = None
        if state.source is None:
            state.alignments = {}
            return None
        return self._match_batch(state.source, batch, target)

    @staticmethod
    def _input_tokens(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(input ids or embeds, attention mask) of a model or encoder call."""
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        return tokens, kwargs.get("attention_mask")

    def align_encoder(self, _encoder: nn.Module, args: tuple, kwargs: dict) -> None:
        """The encoder of an encoder-decoder model runs its whole input in one call (generate() runs it alone)."""
        if self.state.capturing:
            return None
        tokens, attention_mask = self._input_tokens(args, kwargs)
        batch, length = tokens.shape[:2] if tokens is not None else attention_mask.shape
        if self.current_source(batch, tokens) is None:
            return None
        _, history = self.state.positions.advance(
            INPUT_STREAM, batch, length, attention_mask, None, self._device(), lambda real: real
        )
        self.state.alignments = {
            **self.state.alignments,
            INPUT_STREAM: self._alignment(INPUT_STREAM, history, length, 0),
        }
        return None

    def align_target(self, _network: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pair the positions this call of the wrapped model runs (a forward, a prefill or one generation step)."""
        state = self.state
        if state.capturing:
            return None
        tokens, attention_mask = self._input_tokens(args, kwargs)
        cache_length = visible_cache_length(args, kwargs)
        if not self.is_encoder_decoder:
            batch, length = tokens.shape[:2]
            if self.current_source(batch, tokens) is None:
                return None
            labels = kwargs.get("labels") if self.input_stream_causal else None

            def prompt(real: torch.Tensor) -> torch.Tensor:
                usable = labels is not None and tuple(labels.shape) == tuple(real.shape)
                return prompt_before_answer(real, labels if usable else None)

            past, history = state.positions.advance(
                INPUT_STREAM, batch, length, attention_mask, cache_length, self._device(), prompt
            )
            state.alignments = {INPUT_STREAM: self._alignment(INPUT_STREAM, history, length, past)}
            return None

        decoder_tokens = next(
            (
                kwargs[key]
                for key in ("decoder_input_ids", "decoder_inputs_embeds", "labels")
                if kwargs.get(key) is not None
            ),
            None,
        )
        shaped = next((value for value in (decoder_tokens, tokens, attention_mask) if value is not None), None)
        batch = shaped.shape[0] if shaped is not None else kwargs["encoder_outputs"][0].shape[0]
        if self.current_source(batch, tokens) is None:
            return None
        alignments = {}
        if tokens is None:  # the encoder ran before this call (generate() runs it once, up front)
            history = state.positions.histories.get(INPUT_STREAM)
            if history is None:
                raise RuntimeError(
                    "This encoder-decoder call passes encoder_outputs from an encoder that did not run under the "
                    "bound source; run the encoder inside the same FlareModel.generate() or source() block."
                )
            history = history.rows_repeated(batch)
            alignments[INPUT_STREAM] = self._alignment(INPUT_STREAM, history, history.length, 0)
        if decoder_tokens is not None:
            decoder_length = decoder_tokens.shape[1]
            past, history = state.positions.advance(
                DECODER_STREAM,
                batch,
                decoder_length,
                kwargs.get("decoder_attention_mask"),
                cache_length,
                self._device(),
                first_token_only,  # the decoder start token, the one decoder token the source pass ran
            )
            alignments[DECODER_STREAM] = self._alignment(DECODER_STREAM, history, decoder_length, past)
        state.alignments = alignments  # the encoder's hook adds the input stream when the encoder runs in this call
        return None

    def _device(self) -> torch.device:
        return next(iter(self.state.source.masks.values())).device

    def _alignment(self, stream: str, history: SequenceHistory, length: int, past: int) -> TokenAlignment:
        causal = self.stream_is_causal(stream)
        mixing = self.config.fusion in POSITION_MIXING_FUSIONS
        if mixing and causal and past > 0:
            raise ValueError(
                f"fusion={self.config.fusion!r} mixes target positions, which needs the whole sequence at once; "
                "it cannot run with a KV cache on a causal model. Pass use_cache=False (FlareModel.generate does)."
            )
        return align_tokens(
            self.state.source.masks[stream],
            history.real,
            history.prompt,
            length,
            pairing=self.config.pairing,
            mask_source_padding=self.config.mask_source_padding,
            causal=causal,
            need_allowed=mixing,
        )

    def _match_batch(self, source: BoundSource, batch: int, target: torch.Tensor | None) -> BoundSource:
        if source.batch_size == batch:
            return source
        if self.state.allow_batch_expansion and batch % source.batch_size == 0:
            self.state.source = source.repeat_rows(batch // source.batch_size)
            return self.state.source
        source_shape = tuple(next(iter(source.masks.values())).shape)
        target_shape = tuple(target.shape) if target is not None else (batch,)
        raise ValueError(
            f"Source batch size {source.batch_size} (source shape {source_shape}) differs from target batch size "
            f"{batch} (target shape {target_shape}); source and target rows must pair one to one."
        )
