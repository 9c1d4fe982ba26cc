"""Loading a base model with the head a task needs, its tokenizer, and the modules each stage trains."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as transformers_logging

from ..hub import model_config
from ..tasks import TaskEncoder, TaskSpec
from .pooling import PooledEncoderForSequenceClassification

ARCHITECTURES = ("auto", "encoder", "decoder", "seq2seq")
TRAINABLE = ("lora", "lora+head", "lora+head+embeddings")
# Task heads, trained in full in stage 1 (and kept trainable in stage 2) as modules_to_save.
ENCODER_HEADS = {"classification": ["classifier", "score"], "extractive_qa": ["qa_outputs"]}
ENCODER_EMBEDDINGS = "word_embeddings"  # BERT, XLM-R, DeBERTa: the token embeddings (positions stay frozen)
DECODER_HEADS = {"lora": None, "lora+head": ["lm_head"], "lora+head+embeddings": ["lm_head", "embed_tokens"]}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    architecture: str  # "encoder" or "decoder"
    # Weights the checkpoint lacks, newly initialized on load (a task head the base model has not got).
    newly_initialized: list[str] = field(default_factory=list)

    def head_modules(self, task: TaskSpec, trainable: str) -> list[str] | None:
        """modules_to_save: the encoder's task head always, plus its token embeddings with 'lora+head+embeddings'.
        Decoders: none with 'lora'; lm_head with 'lora+head'; lm_head and embed_tokens with 'lora+head+embeddings'
        (the authors' Llama setting). Embeddings and lm_head are vocabulary-sized matrices trained in full, which
        the 'parameter-efficient' label does not cover."""
        if trainable not in TRAINABLE:
            raise ValueError(f"Unknown trainable {trainable!r}; valid choices: {', '.join(TRAINABLE)}.")
        names = {name.rsplit(".", 1)[-1] for name, _ in self.model.named_modules()}
        if self.architecture == "encoder":
            heads = [head for head in ENCODER_HEADS[task.kind] if head in names]
            if trainable == "lora+head+embeddings":
                if ENCODER_EMBEDDINGS not in names:
                    raise ValueError(
                        f"trainable='lora+head+embeddings' trains the encoder's {ENCODER_EMBEDDINGS!r} module, which "
                        f"{type(self.model).__name__} does not have; use 'lora' or 'lora+head'."
                    )
                heads.append(ENCODER_EMBEDDINGS)
            return heads
        return DECODER_HEADS[trainable]


def detect_architecture(model_name: str) -> str:
    config = model_config(model_name)
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    return "encoder" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "decoder"


def load_model(
    model_name: str, task: TaskSpec, architecture: str = "auto", load_in_4bit: bool = False, pooling: str | None = None
) -> LoadedModel:
    """The base model with the head for `task`: sequence classification or QA for encoders, the LM for decoders.
    `pooling` (resolved, see pooling.py) is how an encoder's classification head reads the sequence: None or cls,
    the architecture's own head; mean or last, a PooledEncoderForSequenceClassification around the bare encoder."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; valid choices: {', '.join(ARCHITECTURES)}.")
    if architecture == "auto":
        architecture = detect_architecture(model_name)
    else:
        model_config(model_name)  # a missing model is named here, before the tokenizer fails on it
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    if architecture == "decoder" and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # decoders pad on the left, where EOS is never attended to
    if tokenizer.pad_token is None:
        raise ValueError(
            f"The tokenizer of {model_name} has no pad token{' and no EOS token' if architecture == 'decoder' else ''}"
            f", which {architecture} batches need. Give it one (tokenizer.pad_token = ..., then "
            "tokenizer.save_pretrained) in the model folder."
        )
    kwargs = {}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    if architecture == "encoder":
        tokenizer.padding_side = "right"
        if task.kind == "classification" and pooling in ("mean", "last"):
            encoder, missing = _without_load_report(AutoModel, model_name, **kwargs)
            model = PooledEncoderForSequenceClassification(encoder, len(task.label_names), pooling)
            # The head reads the final hidden states, never the encoder's pooler (BERT's dense + tanh over [CLS]):
            # pooler weights the checkpoint lacks (e5 has none) are no untrained part of this model.
            unread = [key for key in missing if key.startswith("pooler.")]
            missing = [f"backbone.{key}" for key in missing if key not in unread] + [
                "classifier.weight",
                "classifier.bias",
            ]
        elif task.kind == "classification":
            model, missing = _without_load_report(
                AutoModelForSequenceClassification, model_name, num_labels=len(task.label_names), **kwargs
            )
        else:
            model, missing = _without_load_report(AutoModelForQuestionAnswering, model_name, **kwargs)
    elif architecture == "seq2seq":  # classification and QA by generation (mT5)
        tokenizer.padding_side = "right"
        model, missing = _without_load_report(AutoModelForSeq2SeqLM, model_name, **kwargs)
    else:
        tokenizer.padding_side = "left"  # generation appends on the right
        model, missing = _without_load_report(AutoModelForCausalLM, model_name, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, architecture, missing)


def _without_load_report(auto_class, model_name: str, **kwargs) -> tuple[torch.nn.Module, list[str]]:
    """The model, and the weights its checkpoint lacks, without transformers' LOAD REPORT.

    A base checkpoint has no task head, so every load logs a banner listing the head as MISSING, "newly initialized".
    Stage 1 trains that head and stage 2 loads it from the stage-1 adapter right after, so the banner made zero-shot
    look as if it used a random head. It is silenced for this one call (errors still show), and the missing keys
    come back instead: the pipeline reports those no adapter provides (runs.report_untrained)."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, loading_info = auto_class.from_pretrained(model_name, output_loading_info=True, **kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)
    return model, sorted(loading_info["missing_keys"])


def load_state_reader(model_name: str, task: TaskSpec, architecture: str, max_length: int) -> TaskEncoder:
    """The features `model_name` reads for `task`, from its tokenizer alone: what FLARE-MT states must cover."""
    if architecture == "auto":
        architecture = detect_architecture(model_name)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    return TaskEncoder(task, tokenizer, architecture, max_length=max_length, for_generation=True)


def check_max_length(loaded: LoadedModel, max_length: int) -> None:
    """A max_length beyond the position table would fail deep inside the model; say so up front."""
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if positions is None:
        return
    # RoBERTa-style models (XLM-R) start their positions after the padding index.
    offset = loaded.model.config.pad_token_id + 1 if "roberta" in loaded.model.config.model_type else 0
    if max_length > positions - offset:
        raise ValueError(
            f"max_length={max_length} exceeds the {positions - offset} positions this model can encode; "
            f"lower --train.max_length."
        )
