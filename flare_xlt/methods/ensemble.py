"""Translate-train + translate-test ensemble: the class probabilities of the translate-train LoRA on the target text,
averaged with those of the stage-1 model on the test input's English translation.

It trains nothing: it reads the finished `lora` run with the same settings (running it first if missing). It asks
FLARE the sharpest question, since FLARE also reads the target text and its English translation at test time but
fuses them inside the network (Artetxe et al., Revisiting Machine Translation for Cross-lingual Classification,
EMNLP 2023, argue that such MT ensembles deserve more attention).

A class's probability is, for an encoder, the softmax of its logits; for a decoder or an encoder-decoder model, the
softmax over classes of the summed log-probability of the class's answer as the model learned to write it (its
answer word and EOS, teacher-forced after the prompt). Extractive QA has no fixed set of classes to average over,
so the ensemble runs for classification only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from types import SimpleNamespace
from typing import TYPE_CHECKING

from .base import LORA_SETTINGS, Method

if TYPE_CHECKING:
    import torch
    from torch import nn


class ProbabilityEnsemble:
    """Scores a paired batch as a model would: the target model reads input_ids, the source model source_input_ids.
    A call gives the log of the averaged class probabilities as logits; generate writes the chosen class's answer.
    It holds no weights of its own, so it is no torch module (and this file imports torch only when it runs)."""

    def __init__(
        self,
        target: nn.Module,
        source: nn.Module,
        architecture: str,
        answers: list[list[int]] | None,
        pad_token_id: int | None,
        decoder_start_token_id: int | None = None,
    ) -> None:
        self.target, self.source, self.architecture = target, source, architecture
        self.answers, self.pad_token_id, self.decoder_start_token_id = answers, pad_token_id, decoder_start_token_id

    def eval(self) -> ProbabilityEnsemble:
        self.target.eval()
        self.source.eval()
        return self

    def parameters(self):
        return chain(self.target.parameters(), self.source.parameters())

    def class_log_probs(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, C) log-probabilities over the classes."""
        import torch

        if self.architecture == "encoder":
            return model(input_ids=input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
        scores = [self._answer_log_prob(model, input_ids, attention_mask, answer) for answer in self.answers]
        return torch.stack(scores, -1).log_softmax(-1)  # (B, C)

    def _answer_log_prob(self, model, input_ids, attention_mask, answer: list[int]) -> torch.Tensor:
        """(B,) summed log-probability of `answer` after each prompt, teacher-forced."""
        import torch

        answer_ids = torch.tensor(answer, device=input_ids.device).repeat(input_ids.shape[0], 1)  # (B, A)
        if self.architecture == "seq2seq":
            logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=answer_ids).logits  # (B, A, V)
        else:  # a decoder's prompt is left-padded: the answer follows its last token
            full = torch.cat([input_ids, answer_ids], 1)
            mask = torch.cat([attention_mask, torch.ones_like(answer_ids)], 1)
            logits = model(input_ids=full, attention_mask=mask).logits[:, input_ids.shape[1] - 1 : -1]  # (B, A, V)
        return logits.float().log_softmax(-1).gather(-1, answer_ids.unsqueeze(-1)).squeeze(-1).sum(-1)

    def __call__(self, input_ids, attention_mask, source_input_ids, source_attention_mask, **_) -> SimpleNamespace:
        import torch

        target = self.class_log_probs(self.target, input_ids, attention_mask)  # (B, C)
        source = self.class_log_probs(self.source, source_input_ids, source_attention_mask)  # (B, C)
        return SimpleNamespace(logits=torch.logsumexp(torch.stack([target, source]), 0) - math.log(2))

    def generate(self, input_ids, attention_mask, source_input_ids, source_attention_mask, **_) -> torch.Tensor:
        """The chosen class's answer after the prompt (decoder) or after the decoder start token (encoder-decoder),
        right-padded: what the workflow's generation scoring reads back as that class."""
        import torch

        choices = self(input_ids, attention_mask, source_input_ids, source_attention_mask).logits.argmax(-1)
        length = max(len(answer) for answer in self.answers)
        written = torch.full((input_ids.shape[0], length), self.pad_token_id, device=input_ids.device)
        for row, choice in enumerate(choices.tolist()):
            written[row, : len(self.answers[choice])] = torch.tensor(self.answers[choice])
        if self.architecture == "seq2seq":
            return torch.cat([torch.full_like(written[:, :1], self.decoder_start_token_id), written], 1)
        return torch.cat([input_ids, written], 1)


@dataclass(frozen=True)
class Ensemble(Method):
    def combine(self, stage1: nn.Module, reused: nn.Module, encoder) -> ProbabilityEnsemble:
        """The stage-1 model reads the English translation, the reused LoRA run's model the target text."""
        network = stage1.get_base_model() if hasattr(stage1, "get_base_model") else stage1
        return ProbabilityEnsemble(
            target=reused,
            source=stage1,
            architecture=encoder.architecture,
            answers=encoder.class_answer_ids() if encoder.architecture != "encoder" else None,
            pad_token_id=encoder.tokenizer.pad_token_id,
            decoder_start_token_id=getattr(network.config, "decoder_start_token_id", None),
        )


ENSEMBLE = Ensemble(
    name="ensemble",
    summary="translate-train LoRA on the target text and the stage-1 model on its English translation, averaged",
    view="paired",
    reads_test_translation=True,
    trains=False,
    adapter_settings=LORA_SETTINGS,
    task_kinds=("classification",),
    unfit_reason="the ensemble averages class probabilities, and extractive QA has no fixed set of classes.",
    reuses="lora",
)
