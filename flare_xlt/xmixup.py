"""X-Mixup (Yang, Chen, Zhou, Li: *Enhancing Cross-lingual Transfer by Manifold Mixup*, ICLR 2022, arXiv 2205.04182)
as a baseline for encoder task models (BERT / XLM-R sequence classification and extractive QA).

What the method computes, per training pair (target text t, its English source s) and as implemented here. The
formulas follow the authors' released implementation (github.com/yhy1117/X-Mixup, TensorFlow), which the paper
names as its code; λ0, α, the layer ranges and the schedule constant are the values of its training scripts.

1. Source stream. s runs through the unchanged encoder and head. It is never affected by the target, so it is run
   here as one ordinary forward pass before the target pass (the authors interleave the two layer by layer, which
   computes the same thing). It runs with gradients: its task loss and the consistency losses train through it.
2. Target stream with mixing in the layers [start, end) of `XMixupConfig.layers`. In such a layer l, after the
   self-attention sublayer has produced the target states h_t = LN(SelfAttn(x_t) + x_t) (and likewise h_s for the
   source), the target states attend to the source states with the layer's *own* attention (its query, key and
   value projections, heads, attention dropout and output projection, LoRA included when LoRA wraps them), queries
   from the target, keys and values from the source, source padding masked:

       A   = softmax(Q(h_t) K(h_s)ᵀ / √d_head)                                 (B, heads, T, S)
       h_t ← LN(λ · Dropout(W_o · A V(h_s)) + (1 − λ) · h_t)                    LN: the sublayer's own LayerNorm

   and the FFN of layer l continues from the mixed states. λ is the share of the source, computed per example and
   per layer from the entropy of the cross-attention, the paper's proxy of how well the pair aligns (its
   translation quality):

       H(A)  = mean over heads and real target positions of the entropy of A's rows (target → source)
       H(Aᵀ) = the same for softmax over the target axis of the same scores (source → target), over real source rows
       λ     = λ0 · sigmoid(w_l · (H(A) + H(Aᵀ)) + b_l),     λ0 = `max_ratio` = 0.5, w_l = 1 and b_l = 0 at start

   (w_l, b_l) are the only new parameters, one pair per mixed layer, named `xmixup_ratios.<layer>.weight/bias`.
3. Losses, with α = `source_loss_weight` and the consistency weight (1 in the paper):
       sequence classification: α·CE(source logits) + (1 − α)·CE(mixed logits)
                                + weight · [KL(softmax(source) ‖ softmax(mixed)) + MSE(source ⟨s⟩, mixed ⟨s⟩)]
       extractive QA:           α·L(source spans) + (1 − α)·L(mixed spans)   (only L(mixed spans) without source spans)
                                + weight · MSE(mean-pooled source states, mean-pooled mixed states)
   CE/L are the head's own losses; ⟨s⟩ is the final hidden state of the first token; MSE averages over the hidden
   size and the batch, KL sums over classes and averages over the batch. Gradients flow into both sides.
4. Inference: the same two passes, the source being the translate-test English. Sequence classification predicts
   from the mean of the mixed and the source logits (as the authors evaluate; `average_source_logits`), QA from the
   mixed start/end logits. Without a source the model is the plain wrapped model: no mixing, its own loss.
5. Scheduled sampling (training): the authors feed the gold English source with probability k / (k + exp(step / k))
   (`gold_source_probability`; k = 1000 classification, 2000 QA) and otherwise the back-translation of the translated
   example, so that training sees machine-translated English as inference does.

Simplifications and departures (each deliberate):
- Scheduled sampling is left to the caller: forward() mixes whatever source it is given, and the experiment pipeline
  has no back-translated training sources. `gold_source_probability` gives the schedule for callers that do.
- The entropies average over real positions only, from the properly masked distributions. The authors' code also
  averages over padded query rows and scores padded keys with a logit of 0 in the cross-entropy; with unpadded pairs
  the two coincide.
- The classification representation is the first *real* token (the authors take position 0, the same thing under
  right padding). The QA representation is the mean over all real tokens (the authors drop the first and last
  position with a shifted mask).
- The source-side QA loss needs English answer spans (`source_start_positions` / `source_end_positions`); without
  them only the mixed loss counts, as the authors do for back-translated sources.
- The authors fine-tune the whole encoder; here the wrapped model decides what trains (e.g. a PEFT LoRA). The λ
  parameters are always trainable (frozen by `from_pretrained(..., is_trainable=False)`).
- Token classification (the paper's tagging tasks, with their own consistency over aligned tokens) is not supported.

Mechanics: forward hooks on the attention sublayers of the mixed layers record the source states during the source
pass and replace the target states during the target pass (an attention sublayer returns a tuple in transformers 5;
a plain tensor is handled too). A hook on the encoder records each pass's final hidden states. The bound pass stays
in place after forward() returns, because gradient checkpointing re-runs the target layers during backward; the
source pass runs the mixed layers without checkpointing so that no replay of them ever sees the target binding, and
the next call of the wrapped model outside forward() drops the binding.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from .io import write_text_atomic

CONFIG_NAME = "xmixup_config.json"
WEIGHTS_NAME = "xmixup.safetensors"
_RATIO_PREFIX = "xmixup_ratios."
_SUPPORTED_HEADS = ("ForSequenceClassification", "ForQuestionAnswering")


@dataclass
class XMixupConfig:
    layers: tuple[int, int] = field(
        default=(0, 1),
        metadata={
            "help": "Half-open range [start, end) of encoder layers whose target states are mixed with the source. "
            "The authors' scripts: (0, 1) for sentence classification (XNLI, PAWS-X), (3, 4) for tagging, (15, 16) "
            "for QA, on the 24-layer XLM-R large and on mBERT alike."
        },
    )
    max_ratio: float = field(
        default=0.5,
        metadata={"help": "λ0: the largest share of the source in a mixed state; λ = λ0 · sigmoid(w·entropy + b)."},
    )
    source_loss_weight: float = field(
        default=0.4,
        metadata={"help": "α: task loss = α·source loss + (1 − α)·mixed loss. Authors: 0.4 classification, 0.2 QA."},
    )
    consistency_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the consistency losses (KL + MSE, or MSE for QA) added to the task loss; 1 in the paper."
        },
    )
    average_source_logits: bool = field(
        default=True,
        metadata={
            "help": "In eval mode, sequence classification returns the mean of the mixed and the source logits "
            "(the authors' evaluation); False returns the mixed logits. QA always returns the mixed logits."
        },
    )

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)  # JSON brings a list
        if len(self.layers) != 2 or not 0 <= self.layers[0] < self.layers[1]:
            raise ValueError(f"layers must be a range (start, end) with 0 <= start < end, got {self.layers}.")
        if not 0.0 < self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {self.max_ratio}.")
        if not 0.0 <= self.source_loss_weight <= 1.0:
            raise ValueError(f"source_loss_weight must be in [0, 1], got {self.source_loss_weight}.")
        if self.consistency_weight < 0.0:
            raise ValueError(f"consistency_weight must be >= 0, got {self.consistency_weight}.")

    def save(self, directory: str | os.PathLike) -> None:
        write_text_atomic(Path(directory) / CONFIG_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> XMixupConfig:
        return cls(**json.loads((Path(directory) / CONFIG_NAME).read_text(encoding="utf-8")))


def gold_source_probability(step: int, k: float = 1000.0) -> float:
    """The authors' scheduled sampling: the chance of training on the gold English source at `step` (else its
    back-translation), an inverse-sigmoid decay from k / (k + 1) at step 0."""
    return k / (k + math.exp(step / k))


def _entropy(logits: torch.Tensor, dim: int) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, dim=dim)
    # Masked entries hold the dtype's minimum: probability exactly 0 and a finite log, so they add exactly 0.
    return -(log_probs.exp() * log_probs).sum(dim)


def pair_entropy(scores: torch.Tensor, target_mask: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
    """H(A) + H(Aᵀ) per example from target → source attention scores (B, heads, T, S) and boolean masks (B, T),
    (B, S): the entropy of softmax over the source (rows of real target tokens) plus that of softmax over the target
    (columns of real source tokens), each averaged over heads and real positions. Returns (B,) in float32."""
    scores = scores.float()
    minimum = torch.finfo(scores.dtype).min
    heads = scores.shape[1]
    forward = _entropy(scores.masked_fill(~source_mask[:, None, None, :], minimum), dim=-1)  # (B, heads, T)
    backward = _entropy(scores.masked_fill(~target_mask[:, None, :, None], minimum), dim=-2)  # (B, heads, S)
    forward = (forward * target_mask[:, None, :]).sum((1, 2)) / (heads * target_mask.sum(1))
    backward = (backward * source_mask[:, None, :]).sum((1, 2)) / (heads * source_mask.sum(1))
    return forward + backward


class XMixupRatio(nn.Module):
    """λ = max_ratio · sigmoid(weight · entropy + bias) for one mixed layer; weight starts at 1, bias at 0."""

    def __init__(self, max_ratio: float) -> None:
        super().__init__()
        self.max_ratio = max_ratio
        self.weight = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, entropy: torch.Tensor) -> torch.Tensor:
        return self.max_ratio * torch.sigmoid(self.weight * entropy + self.bias)


@dataclass
class XMixupPieces:
    """What one X-Mixup forward computed besides the usual output; attached to it as `output.xmixup`."""

    source_output: Any  # the source pass's ModelOutput (source logits, its own loss when labels were given)
    source_representation: torch.Tensor  # (B, d): first real token (classification) or mean over real tokens (QA)
    target_representation: torch.Tensor  # (B, d): the same from the mixed target pass
    lambdas: dict[int, torch.Tensor]  # layer index -> (B,) share of the source in that layer's mixed states
    consistency_loss: torch.Tensor  # unweighted: KL + MSE (classification) or MSE (QA)
    mixed_logits: torch.Tensor | None = None  # classification: the mixed logits, whatever `logits` holds
    task_loss: torch.Tensor | None = None  # α·source loss + (1 − α)·mixed loss, when labels were given


@dataclass
class _Binding:
    """The pair being processed: which pass runs, the masks, and what the hooks recorded."""

    target_mask: torch.Tensor  # (B, T) bool
    source_mask: torch.Tensor  # (B, S) bool
    mixing: bool = False  # False: source pass (record), True: target pass (mix)
    source_states: dict[int, torch.Tensor] = field(default_factory=dict)
    lambdas: dict[int, torch.Tensor] = field(default_factory=dict)
    last_hidden: torch.Tensor | None = None


class XMixupModel(nn.Module):
    """Wraps an encoder task model (transformers, or a PeftModel around one) with X-Mixup; see the module doc."""

    def __init__(self, model: nn.Module, config: XMixupConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        transformer = model.get_base_model() if isinstance(model, PeftModel) else model
        if not type(transformer).__name__.endswith(_SUPPORTED_HEADS):
            raise ValueError(
                f"X-Mixup supports sequence classification and question answering heads, got "
                f"{type(transformer).__name__}."
            )
        self.is_qa = type(transformer).__name__.endswith("ForQuestionAnswering")
        encoder = transformer.base_model.encoder
        start, end = config.layers
        if end > len(encoder.layer):
            raise ValueError(f"layers {config.layers} exceed the model's {len(encoder.layer)} layers.")
        self._layers = {index: encoder.layer[index] for index in range(start, end)}  # not registered: owned by model
        ratios = {str(index): XMixupRatio(config.max_ratio) for index in self._layers}
        self.xmixup_ratios = nn.ModuleDict(ratios).to(next(model.parameters()).device)
        self._binding: _Binding | None = None
        self._running = False
        for index, layer in self._layers.items():
            layer.attention.register_forward_hook(partial(self._attention_hook, index))
        encoder.register_forward_hook(self._encoder_hook)
        transformer.register_forward_pre_hook(self._drop_stale_binding)

    # --- hooks -------------------------------------------------------------------------------------------------

    def _drop_stale_binding(self, module: nn.Module, args: tuple) -> None:
        if not self._running:  # a call of the wrapped model on its own: plain model
            self._binding = None

    def _encoder_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._binding is not None:
            self._binding.last_hidden = output[0]

    def _attention_hook(self, index: int, module: nn.Module, args: tuple, output: Any) -> Any:
        binding = self._binding
        if binding is None:
            return None
        states = output[0] if isinstance(output, tuple) else output
        if not binding.mixing:
            binding.source_states[index] = states
            return None
        mixed, ratio, _ = self.mix(
            index, states, binding.source_states[index], binding.target_mask, binding.source_mask
        )
        binding.lambdas[index] = ratio
        return (mixed, *output[1:]) if isinstance(output, tuple) else mixed

    # --- the mixing --------------------------------------------------------------------------------------------

    def cross_attention(
        self, index: int, target_states: torch.Tensor, source_states: torch.Tensor, source_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer `index`'s own multi-head attention with queries from the target and keys/values from the source.
        Returns the context (B, T, d) before the output projection, the scores (B, heads, T, S) and the
        attention probabilities (B, heads, T, S), exactly 0 on source padding."""
        attention = self._layers[index].attention.self
        batch, target_length = target_states.shape[:2]
        width = attention.attention_head_size
        query = attention.query(target_states).view(batch, target_length, -1, width).transpose(1, 2)
        key = attention.key(source_states).view(batch, source_states.shape[1], -1, width).transpose(1, 2)
        value = attention.value(source_states).view(batch, source_states.shape[1], -1, width).transpose(1, 2)
        scores = (query @ key.transpose(-1, -2)) * attention.scaling
        masked = scores.float().masked_fill(~source_mask[:, None, None, :], torch.finfo(torch.float32).min)
        probs = torch.softmax(masked, dim=-1).to(value.dtype)
        context = (attention.dropout(probs) @ value).transpose(1, 2).reshape(batch, target_length, -1)
        return context, scores, probs

    def mix(
        self,
        index: int,
        target_states: torch.Tensor,
        source_states: torch.Tensor,
        target_mask: torch.Tensor,
        source_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixed target states of layer `index` from its self-attention outputs h_t (B, T, d) and h_s (B, S, d):
        LN(λ·Dropout(W_o·CrossAttn) + (1 − λ)·h_t). Returns them, λ (B,) and the cross-attention probabilities."""
        context, scores, probs = self.cross_attention(index, target_states, source_states, source_mask)
        ratio = self.xmixup_ratios[str(index)](pair_entropy(scores, target_mask, source_mask))
        output = self._layers[index].attention.output
        update = output.dropout(output.dense(context))
        share = ratio.to(target_states.dtype)[:, None, None]
        return output.LayerNorm(share * update + (1 - share) * target_states), ratio, probs

    # --- forward -----------------------------------------------------------------------------------------------

    @contextmanager
    def _source_pass(self) -> Iterator[None]:
        # A checkpointed replay of a mixed layer's source pass would run under the target binding; keep those
        # activations instead (only the mixed layers, whose hooks act).
        saved = {index: getattr(layer, "gradient_checkpointing", False) for index, layer in self._layers.items()}
        for layer in self._layers.values():
            layer.gradient_checkpointing = False
        try:
            yield
        finally:
            for index, layer in self._layers.items():
                layer.gradient_checkpointing = saved[index]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        source_input_ids: torch.Tensor | None = None,
        source_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        source_start_positions: torch.Tensor | None = None,
        source_end_positions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The wrapped model's usual output for the target; with a source, `logits` (or start/end logits) are the
        mixed ones (eval-mode classification: see `average_source_logits`), `loss` is task + weight·consistency,
        and `output.xmixup` holds the `XMixupPieces`. kwargs go to the target pass only."""
        targets = _present(labels=labels, start_positions=start_positions, end_positions=end_positions)
        if source_input_ids is None:
            self._binding = None
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **targets, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if source_attention_mask is None:
            source_attention_mask = torch.ones_like(source_input_ids)
        if self.is_qa:
            source_targets = _present(start_positions=source_start_positions, end_positions=source_end_positions)
        else:
            source_targets = _present(labels=labels)
        binding = _Binding(target_mask=attention_mask.bool(), source_mask=source_attention_mask.bool())
        self._binding, self._running = binding, True
        try:
            with self._source_pass():
                source_output = self.model(
                    input_ids=source_input_ids, attention_mask=source_attention_mask, **source_targets
                )
            source_hidden = binding.last_hidden
            binding.mixing = True
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, **targets, **kwargs)
        finally:
            self._running = False
        pieces = self._pieces(source_output, source_hidden, binding, source_attention_mask, attention_mask, output)
        if targets:
            source_loss = source_output.loss if source_targets else None
            alpha = self.config.source_loss_weight
            pieces.task_loss = output.loss if source_loss is None else alpha * source_loss + (1 - alpha) * output.loss
            output.loss = pieces.task_loss + self.config.consistency_weight * pieces.consistency_loss
        if not self.is_qa and not self.training and self.config.average_source_logits:
            output.logits = (output.logits + source_output.logits) / 2
        output.xmixup = pieces  # an attribute, not a key: Trainer and to_tuple() see the usual fields only
        return output

    def _pieces(
        self,
        source_output: Any,
        source_hidden: torch.Tensor,
        binding: _Binding,
        source_mask: torch.Tensor,
        target_mask: torch.Tensor,
        output: Any,
    ) -> XMixupPieces:
        if self.is_qa:
            source_rep = _mean_over_tokens(source_hidden, source_mask)
            target_rep = _mean_over_tokens(binding.last_hidden, target_mask)
            consistency = F.mse_loss(target_rep.float(), source_rep.float())
            mixed_logits = None
        else:
            source_rep = _first_token(source_hidden, source_mask)
            target_rep = _first_token(binding.last_hidden, target_mask)
            source_log_probs = torch.log_softmax(source_output.logits.float(), dim=-1)
            mixed_log_probs = torch.log_softmax(output.logits.float(), dim=-1)
            kl = F.kl_div(mixed_log_probs, source_log_probs, log_target=True, reduction="batchmean")
            consistency = kl + F.mse_loss(target_rep.float(), source_rep.float())
            mixed_logits = output.logits
        return XMixupPieces(
            source_output=source_output,
            source_representation=source_rep,
            target_representation=target_rep,
            lambdas=dict(sorted(binding.lambdas.items())),
            consistency_loss=consistency,
            mixed_logits=mixed_logits,
        )

    # --- save / load -------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """The wrapped model's own save_pretrained (a PEFT adapter for a PeftModel) plus xmixup.safetensors and
        xmixup_config.json. Everything is written into a staging folder first and moved into place entry by
        entry, so no file is ever seen half written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as staging:
            staged = Path(staging)
            self.model.save_pretrained(staged)
            weights = {
                _RATIO_PREFIX + key: value.detach().contiguous()
                for key, value in self.xmixup_ratios.state_dict().items()
            }
            save_file(weights, staged / WEIGHTS_NAME, metadata={"format": "pt"})
            self.config.save(staged)
            for entry in staged.iterdir():
                destination = directory / entry.name
                if entry.is_dir() and destination.is_dir():  # a named PEFT adapter's subfolder from an earlier save
                    shutil.rmtree(destination)
                os.replace(entry, destination)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, directory: str | os.PathLike, is_trainable: bool = False, adapter_loaded: bool = False
    ) -> XMixupModel:
        """Restore what save_pretrained wrote. `model` is the base the PEFT adapter in `directory` goes onto; when
        the directory holds a full transformers model instead, that model is loaded (of `model`'s class).
        adapter_loaded: `model` already carries the adapter of `directory` (e.g. a FlareModel restored from it, with
        a frozen stage-1 LoRA that plain PEFT loading would drop); only the mixing layers are loaded."""
        directory = Path(directory)
        config = XMixupConfig.load(directory)
        if not adapter_loaded and (directory / "adapter_config.json").is_file():
            model = PeftModel.from_pretrained(model, directory, is_trainable=is_trainable)
        elif not adapter_loaded:
            model = type(model).from_pretrained(directory)
        xmixup = cls(model, config)
        weights = load_file(directory / WEIGHTS_NAME)
        try:
            xmixup.xmixup_ratios.load_state_dict(
                {key.removeprefix(_RATIO_PREFIX): value for key, value in weights.items()}
            )
        except RuntimeError as error:
            raise ValueError(f"{directory / WEIGHTS_NAME} does not fit layers {config.layers}: {error}") from error
        if not is_trainable:
            xmixup.requires_grad_(False)
            xmixup.eval()
        return xmixup


def _present(**tensors: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {name: value for name, value in tensors.items() if value is not None}


def _first_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    first = mask.long().argmax(dim=1)  # the first real token, whatever the padding side
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def _mean_over_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1)
