"""Activation (gradient) checkpointing for FlareModel: each recompute reads the source of its own forward.

The source is state on the FLARE layers, not an argument that passes through the model's layer calls. A
checkpointed block runs again during backward, and another fused forward may have bound another source since (losses
summed over micro-batches, R-Drop, a reference pass). Non-reentrant checkpointing takes a `context_fn`; FLARE's
restores, around each recompute, the source and pairing that were bound when that block ran forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch


class CheckpointedSources:
    """Mixed into FlareModel (a PeftModel): `flare_state`, `training` and `get_base_model` come from there."""

    _checkpointing_managed: bool = False

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, **kwargs: Any
    ) -> None:
        """Activation (gradient) checkpointing in which each recompute reads the source and pairing of its own forward.

        A checkpointed block runs again during backward. Between its forward and that recompute another fused
        forward may bind another source (losses summed over micro-batches, R-Drop, a reference pass), so FLARE hands
        torch.utils.checkpoint a context_fn that restores the forward's own source and pairing for the recompute.
        That needs non-reentrant checkpointing; use_reentrant=True is refused.
        """
        options = dict(activation_checkpointing_kwargs or {})
        if options.get("use_reentrant", False):
            raise ValueError(
                "FLARE needs non-reentrant activation checkpointing (use_reentrant=False): only that mode takes the "
                "context_fn with which each recompute reads its own forward's source."
            )
        if "context_fn" in options:
            raise ValueError(
                "FLARE sets the checkpoint context_fn itself; pass activation_checkpointing_kwargs without it."
            )
        options.update(use_reentrant=False, context_fn=self._checkpoint_contexts)
        network = self.get_base_model()
        if hasattr(network, "activation_checkpointing_enable"):
            network.activation_checkpointing_enable(activation_checkpointing_kwargs=options, **kwargs)
        else:  # transformers before the rename
            network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options, **kwargs)
        self._checkpointing_managed = True
        self._prepare_model_for_gradient_checkpointing(network)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """The name transformers used before 5.24 for activation_checkpointing_enable."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def _checkpoint_contexts(self):
        """torch.utils.checkpoint context_fn: called at a checkpointed block's forward; its second context wraps the
        block's recompute and gives it that forward's source and pairing back."""
        state = self.flare_state
        forward_binding = (state.source, state.alignments)

        @contextmanager
        def recompute() -> Iterator[None]:
            current = (state.source, state.alignments)
            state.source, state.alignments = forward_binding
            try:
                yield
            finally:
                state.source, state.alignments = current

        return nullcontext(), recompute()

    def _refuse_unmanaged_checkpointing(self) -> None:
        if self._checkpointing_managed or not (self.training and torch.is_grad_enabled()):
            return
        network = self.get_base_model()
        checkpointing = getattr(network, "is_activation_checkpointing", None)
        if checkpointing is None:  # transformers before the rename
            checkpointing = getattr(network, "is_gradient_checkpointing", False)
        if checkpointing:
            raise ValueError(
                "Activation checkpointing was enabled on the base model, not on the FlareModel. Its recompute would "
                "read whichever source was bound last, which is wrong as soon as two fused forwards precede one "
                "backward. Call flare_model.activation_checkpointing_enable() (or gradient_checkpointing_enable) "
                "instead; the HF Trainer does so with gradient_checkpointing=True."
            )
