"""How an encoder's sequence-classification head reads the sequence: the setting, how `auto` resolves it, and the
head that pools the tokens itself.

`cls` is the architecture's own head (AutoModelForSequenceClassification), which in BERT/XLM-R-style encoders reads
the first token ([CLS] / <s>). `mean` averages the final hidden states over the real tokens (attention_mask 1),
the way sentence-embedding encoders such as e5 were trained to be read; `last` takes the last real token. Both wrap
the bare encoder (AutoModel) in `PooledEncoderForSequenceClassification`, whose linear head is called `classifier`,
so that the pipeline trains and saves it as it does the architecture's own head (modules_to_save).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .settings import POOLINGS

# sentence-transformers' model folder layout: modules.json lists the modules, the Pooling module's folder holds its
# config.json with one pooling_mode_* flag set. The first flag set, in this order, names the pooling.
SENTENCE_TRANSFORMERS_MODULES = "modules.json"
SENTENCE_TRANSFORMERS_POOLING = "sentence_transformers.models.Pooling"
POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}


def resolve_pooling(pooling: str, model_name: str, task_kind: str, architecture: str) -> str | None:
    """The pooling a run uses: None where there is no sequence-classification head to pool for (QA, decoders,
    encoder-decoders), which any other value than auto is refused on. auto: the pooling the model folder's
    sentence-transformers config names (mean for e5), else cls (the architecture's own head)."""
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; valid choices: {', '.join(POOLINGS)}.")
    if task_kind != "classification" or architecture != "encoder":
        if pooling != "auto":
            reader = (
                f"{task_kind.replace('_qa', ' QA').replace('_', ' ')} tasks"
                if task_kind != "classification"
                else f"{architecture} models (they classify by generating an answer)"
            )
            raise ValueError(
                f"pooling={pooling} applies to the classification heads of encoders, not to {reader}; leave pooling "
                "auto."
            )
        return None
    if pooling != "auto":
        return pooling
    return sentence_transformers_pooling(model_name) or "cls"


def sentence_transformers_pooling(model_name: str) -> str | None:
    """The pooling that a sentence-transformers model folder (or hub repository) declares, or None when it has no
    modules.json with a Pooling module. A hub model's modules.json is fetched (or read from the hub cache); one that
    cannot be fetched counts as absent."""
    modules = _model_file(model_name, SENTENCE_TRANSFORMERS_MODULES)
    if modules is None:
        return None
    entries = json.loads(modules.read_text(encoding="utf-8"))
    folder = next(
        (entry.get("path", "") for entry in entries if entry.get("type") == SENTENCE_TRANSFORMERS_POOLING), None
    )
    if folder is None:
        return None
    config_path = _model_file(model_name, f"{folder}/config.json" if folder else "config.json")
    if config_path is None:
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return next((pooling for flag, pooling in POOLING_FLAGS.items() if config.get(flag)), None)


def _model_file(model_name: str, filename: str) -> Path | None:
    if os.path.isdir(model_name):
        path = Path(model_name) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(hf_hub_download(model_name, filename))
    except (OSError, HFValidationError, ValueError):  # not on the hub, not cached offline, not a repository name
        return None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, D) summary of (B, L, D) hidden states over the real tokens of (B, L) attention_mask, padded on either
    side: their mean, or the last one."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
    if pooling == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)  # (L,)
        last = (attention_mask.bool() * positions).amax(-1)  # (B,) index of the last real token
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)
    raise ValueError(
        f"A pooled head reads the mean or the last token, not {pooling!r} (cls is the architecture's own head)."
    )


class PooledEncoderForSequenceClassification(nn.Module):
    """A sequence classifier from a bare encoder: the pooled final hidden states, dropout, then a linear
    `classifier`. It answers like a transformers model (config, base_model, logits and loss), so that PEFT, FLARE,
    X-Mixup and the Trainer treat it as one."""

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str) -> None:
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"PooledEncoderForSequenceClassification pools mean or last, not {pooling!r}.")
        self.backbone, self.pooling = encoder, pooling
        self.config = encoder.config
        self.config.num_labels = num_labels
        dropout = getattr(self.config, "classifier_dropout", None)
        self.dropout = nn.Dropout(dropout if dropout is not None else getattr(self.config, "hidden_dropout_prob", 0.0))
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)
        # Initialised as transformers initialises a new head; on the encoder's device (a 4-bit encoder is placed on
        # the GPU as it loads).
        nn.init.normal_(self.classifier.weight, std=getattr(self.config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)
        self.classifier.to(next(encoder.parameters()).device)

    @property
    def base_model(self) -> nn.Module:
        """The backbone without its head, as transformers names it (the FLARE source pass and X-Mixup read it)."""
        return self.backbone

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.activation_checkpointing_enable(**kwargs)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            reference = input_ids if input_ids is not None else kwargs["inputs_embeds"][..., 0]
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = pool(outputs.last_hidden_state, attention_mask, self.pooling)  # (B, D)
        logits = self.classifier(self.dropout(pooled).to(self.classifier.weight.dtype))  # (B, C)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.to(logits.device).view(-1))
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
