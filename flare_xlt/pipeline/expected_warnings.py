"""Warnings about what the pipeline does on purpose, silenced inside its commands only."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

# Warnings about what the pipeline does on purpose, silenced inside its commands only (a caller's own PEFT use still
# sees them), each with its reason.
EXPECTED_WARNINGS = (
    # trainable=lora+head+embeddings trains lm_head and embed_tokens as two full copies (the authors' setting), so on
    # a model with tied embeddings PEFT warns at every adapter that the tie breaks, and again when a merge unties them.
    (UserWarning, r"Model has `tie_word_embeddings=True` and a tied layer is part of the adapter"),
    (UserWarning, r"Input and output embeddings are no longer tied after merging"),
    # peft 0.21's PeftModel.__init__ reads the attribute transformers 5.23 renamed; not ours to fix.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


def without_expected_warnings(command: Callable) -> Callable:
    """`command` with EXPECTED_WARNINGS silenced while it runs."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with warnings.catch_warnings():
            for category, message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            return command(*args, **kwargs)

    return run
