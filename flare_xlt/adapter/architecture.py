"""What the wrapped network is, read from public facts rather than from flags on its modules.

FLARE needs three facts about a transformers model:
- whether its input tokens attend causally (a decoder-only LM) or to the whole sequence (an encoder). A causal
  stream pairs source and target tokens as generation sees them and must not mix future positions; a
  bidirectional one may.
- for an encoder-decoder model, which modules belong to the encoder;
- which token stream a module reads: the input (encoder) tokens or the decoder tokens. Decoder cross-attention keys
  and values read encoder tokens.

Causality comes from the model's config, in this order: an encoder-decoder model's input stream is its encoder
(bidirectional); `config.is_decoder` marks a causal model (BERT or XLM-R built as a causal LM); an architecture
that transformers registers with a masked-LM head and not as a decoder is an encoder (BERT, XLM-R); one with a
causal-LM head and no masked-LM head is a decoder (Llama, Gemma, Qwen, BLOOM, XGLM, GPT-NeoX). Anything else is
refused unless the caller says (FlareConfig.causal).
"""

from __future__ import annotations

import re

import transformers
from torch import nn

from .state import DECODER_STREAM, INPUT_STREAM

_CROSS_ATTENTION_PARENT = re.compile(r"(encdecattention|encoder_attn|crossattention|cross_attn)", re.IGNORECASE)
_KEY_VALUE_LEAVES = {"k", "v", "k_proj", "v_proj", "key", "value"}


def input_stream_is_causal(network: nn.Module, declared: bool | None = None) -> bool:
    """Whether the tokens of `input_ids` attend causally in `network` (a transformers PreTrainedModel).

    `declared` (FlareConfig.causal) overrides what the config says; without it a model the rules above cannot place
    is refused, since guessing wrong silently leaks future tokens or mispairs generation.
    """
    config = network.config
    if getattr(config, "is_encoder_decoder", False):
        if declared:
            raise ValueError(
                f"causal=True, but {type(network).__name__} is an encoder-decoder model: its input tokens run "
                "through the bidirectional encoder (the decoder stream is causal anyway). Leave causal unset."
            )
        return False
    if declared is not None:
        return declared
    if getattr(config, "is_decoder", False):
        return True
    config_class = type(config)
    if config_class in transformers.MODEL_FOR_MASKED_LM_MAPPING:
        return False
    if config_class in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        return True
    raise ValueError(
        f"FLARE cannot tell whether {type(network).__name__} (model_type {config.model_type!r}) attends causally: "
        "transformers registers it neither as a masked LM (an encoder) nor as a causal LM (a decoder), and its config "
        "sets no is_decoder. Say which it is with FlareConfig(causal=True) for a decoder or causal=False for an "
        "encoder."
    )


def encoder_prefix(network: nn.Module) -> str | None:
    """`name.` of the encoder of an encoder-decoder model (e.g. "encoder."), None for other models."""
    if not getattr(network.config, "is_encoder_decoder", False):
        return None
    encoder = network.get_encoder()
    return next(name for name, module in network.named_modules() if module is encoder) + "."


def stream_of(module_name: str, prefix: str | None) -> str:
    """The token stream a module reads, given the encoder prefix of its model."""
    if prefix is None or module_name.startswith(prefix):
        return INPUT_STREAM
    parent, _, leaf = module_name.rpartition(".")
    if leaf in _KEY_VALUE_LEAVES and _CROSS_ATTENTION_PARENT.search(parent):
        return INPUT_STREAM  # decoder cross-attention keys/values read encoder tokens
    return DECODER_STREAM
