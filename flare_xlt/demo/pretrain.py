"""Pretraining from scratch on the synthetic world: a corpus with far more English than Tolan, a tokenizer trained
on it, and a tiny Llama-style decoder (causal LM) or XLM-R-style encoder (masked LM), cached under the output
folder so that later runs reuse it."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    DataCollatorForLanguageModeling,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    set_seed,
)

from .world import Lexicon, realise_english, realise_tolan, sample_meaning

MODEL_TYPES = ("decoder", "encoder")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]


@dataclass(frozen=True)
class PretrainingConfig:
    english_sentences: int = 12000
    target_resource: float = 0.05  # Tolan sentences per English sentence
    parallel_sentences: int = 300  # lines "English = Tolan"
    code_switched_sentences: int = 300  # English sentences with some words in Tolan
    vocab_size: int = 500
    hidden_size: int = 64
    layers: int = 4
    heads: int = 4
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 3e-3
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.target_resource <= 1.0:
            raise ValueError(f"target_resource must be in (0, 1], got {self.target_resource}.")


def pretraining_corpus(config: PretrainingConfig, lexicon: Lexicon) -> list[str]:
    """English and Tolan sentences in the ratio 1 : target_resource, plus a little parallel and code-switched text,
    which is what partly aligns the two languages (as parallel data and code-switching do for real models)."""
    rng = random.Random(config.seed)
    english = [realise_english(sample_meaning(rng)) for _ in range(config.english_sentences)]
    tolan = [
        realise_tolan(sample_meaning(rng), lexicon)
        for _ in range(round(config.english_sentences * config.target_resource))
    ]
    parallel = []
    for _ in range(config.parallel_sentences):
        meaning = sample_meaning(rng)
        parallel.append(f"{realise_english(meaning)} = {realise_tolan(meaning, lexicon)}")
    code_switched = []
    for _ in range(config.code_switched_sentences):
        words = realise_english(sample_meaning(rng)).split()
        code_switched.append(" ".join(lexicon.tolan.get(word, word) if rng.random() < 0.3 else word for word in words))
    corpus = english + tolan + parallel + code_switched
    rng.shuffle(corpus)
    return corpus


def train_tokenizer(corpus: list[str], model_type: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE over the corpus (Metaspace, as SentencePiece models do). English dominates the merges, so Tolan words
    are cut into more pieces: the segmentation gap of real under-represented languages. The task prompt joins the
    training text once, so that its characters are not unknown."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    prompt = ["Sentiment:\n"]
    # No progress bar: it is drawn on stderr in the middle of the demo's own output, and the training takes a second.
    bpe = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    backend.train_from_iterator(corpus + prompt, bpe)
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    if model_type == "decoder":
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
        padding_side = "left"
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
        )
        padding_side = "right"
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        mask_token="<mask>",
        padding_side=padding_side,
        model_input_names=["input_ids", "attention_mask"],
    )


def build_model(config: PretrainingConfig, model_type: str, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    sizes = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=4 * config.hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if model_type == "decoder":
        return LlamaForCausalLM(
            LlamaConfig(**sizes, max_position_embeddings=2 * config.max_length, tie_word_embeddings=True)
        )
    # XLM-R numbers positions from pad_token_id + 1.
    return XLMRobertaForMaskedLM(
        XLMRobertaConfig(
            **sizes, max_position_embeddings=2 * config.max_length + tokenizer.pad_token_id + 1, type_vocab_size=1
        )
    )


def cache_key(config: PretrainingConfig, model_type: str, world_seed: int) -> str:
    settings = json.dumps({"model_type": model_type, "world_seed": world_seed, **asdict(config)}, sort_keys=True)
    return f"{model_type}-{hashlib.sha256(settings.encode()).hexdigest()[:10]}"


def pretrained_model(
    cache: Path, config: PretrainingConfig, model_type: str, lexicon: Lexicon, world_seed: int
) -> Path:
    """The folder of a model and tokenizer pretrained with these settings: reused when present, else trained and
    moved into place in one rename, so an interrupted run never leaves a half-saved model that looks finished."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"Unknown model_type {model_type!r}; valid choices: {', '.join(MODEL_TYPES)}.")
    folder = Path(cache) / cache_key(config, model_type, world_seed)
    if (folder / "config.json").is_file():
        print(f"pretrained {model_type}: reusing {folder}")
        return folder
    set_seed(config.seed)
    corpus = pretraining_corpus(config, lexicon)
    tokenizer = train_tokenizer(corpus, model_type, config.vocab_size)
    model = build_model(config, model_type, tokenizer)
    features = [
        {"input_ids": ids}
        for ids in tokenizer(corpus, truncation=True, max_length=config.max_length, add_special_tokens=True)[
            "input_ids"
        ]
    ]
    if model_type == "decoder":  # the LM learns where a text ends
        features = [{"input_ids": feature["input_ids"] + [tokenizer.eos_token_id]} for feature in features]
    print(
        f"pretraining a {model_type} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
        f"{len(corpus)} sentences, vocabulary {len(tokenizer)}"
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as scratch:
        arguments = TrainingArguments(
            output_dir=str(Path(scratch) / "trainer"),
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            warmup_steps=0.05,
            lr_scheduler_type="linear",
            seed=config.seed,
            save_strategy="no",
            logging_steps=50,
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=model_type == "encoder")
        Trainer(model=model, args=arguments, train_dataset=features, data_collator=collator).train()
        staged = Path(scratch) / "model"
        model.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        if folder.exists():  # a concurrent run finished first; its model is the same
            shutil.rmtree(staged)
        else:
            staged.rename(folder)
    return folder
