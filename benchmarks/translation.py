"""(c) MT throughput: the translate pipeline (flare_xlt.mt.Translator) against a naive loop, on XNLI-like data.

The model is a random M2M100 (NLLB's architecture) with an NLLB tokenizer over a BPE trained in-process, saved to a
temporary directory that the Translator loads like a checkpoint. Both sides use that one model and tokenizer, greedy
decoding and the same number of new tokens.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

from flare_xlt.mt import GenerationSettings, Translator, nllb_code

from .harness import median, paired_ratio, profile_table, time_interleaved
from .models import Scale
from .report import Section, Table, Target

WORDS = (
    "the a one man woman child dog cat house city river market road school teacher farmer doctor walks runs sits "
    "sleeps eats reads writes builds sees buys sells under near over before after during quickly slowly red green "
    "old new big small and but because while every morning evening friend family village water bread"
).split()
SOURCE, TARGET = "en", "sw"
PIPELINE, NAIVE = "translate pipeline", "naive loop"


def sentence(generator: random.Random, shortest: int, longest: int) -> str:
    return " ".join(generator.choice(WORDS) for _ in range(generator.randint(shortest, longest))).capitalize() + "."


def xnli_like_texts(premises: int, seed: int = 0) -> list[str]:
    """Premise and hypothesis of every record, in record order: each premise has three hypotheses, as in XNLI."""
    generator = random.Random(seed)
    texts = []
    for _ in range(premises):
        premise = sentence(generator, 12, 36)
        for _ in range(3):
            texts += [premise, sentence(generator, 4, 14)]
    return texts


def save_tiny_nllb(directory: Path, scale: Scale) -> None:
    """A random M2M100 and an NllbTokenizer over a BPE trained on sentences of the benchmark's vocabulary."""
    generator = random.Random(1)
    corpus = [sentence(generator, 4, 36) for _ in range(2000)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # NLLB's ids 0-3
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=scale.nllb_vocab, special_tokens=specials))
    state = json.loads(bpe.to_str())["model"]
    tokenizer = NllbTokenizer(
        vocab=state["vocab"], merges=[tuple(pair) for pair in state["merges"]], src_lang="eng_Latn"
    )
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=len(tokenizer),
        **scale.nllb_sizes,
        max_position_embeddings=max(256, scale.naive_max_length + scale.mt_new_tokens + 2),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    M2M100ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def naive_translate(translator: Translator, texts: list[str], batch_size: int, max_length: int) -> list[str]:
    """The authors' loop: texts in their given order, fixed batches, padding to max_length, every repeat again."""
    tokenizer, model = translator.tokenizer, translator.model
    tokenizer.src_lang = nllb_code(SOURCE)
    target_id = tokenizer.convert_tokens_to_ids(nllb_code(TARGET))
    outputs = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(
            texts[start : start + batch_size],
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(translator.device)
        with torch.inference_mode():
            generated = model.generate(
                **encoded,
                forced_bos_token_id=target_id,
                num_beams=1,
                max_new_tokens=translator.settings.max_new_tokens,
            )
        outputs += [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return outputs


def translation_section(scale: Scale, repeats: int, device: torch.device) -> Section:
    texts = xnli_like_texts(scale.mt_premises)
    with tempfile.TemporaryDirectory() as directory:
        save_tiny_nllb(Path(directory), scale)
        settings = GenerationSettings(
            num_beams=1, max_input_length=scale.naive_max_length, max_new_tokens=scale.mt_new_tokens
        )
        translator = Translator(directory, settings, cache=None, device=device.type, progress=False)
    outputs: dict[str, list[str]] = {}
    steps = {
        PIPELINE: lambda: outputs.__setitem__(PIPELINE, translator.translate(texts, SOURCE, TARGET)[0]),
        NAIVE: lambda: outputs.__setitem__(
            NAIVE, naive_translate(translator, texts, scale.naive_batch_size, scale.naive_max_length)
        ),
    }
    seconds = time_interleaved(steps, repeats, scale.warmup, device)
    speedup = 1 / paired_ratio(seconds, PIPELINE, NAIVE)
    distinct = len(set(texts))
    agreement = sum(a == b for a, b in zip(outputs[PIPELINE], outputs[NAIVE], strict=True)) / len(texts)
    table = Table(
        f"{len(texts)} texts ({distinct} distinct): {scale.mt_premises} premises × 3 hypotheses, premise and "
        f"hypothesis of each record; random M2M100 (d_model {scale.nllb_sizes['d_model']}), greedy, "
        f"{scale.mt_new_tokens} new tokens",
        ["method", "texts/s", "× naive throughput"],
    )
    for name in steps:
        table.rows.append(
            [
                name,
                f"{len(texts) / median(seconds[name]):.1f}",
                f"{1 / paired_ratio(seconds, name, NAIVE):.2f}×",
            ]
        )
    table.notes += [
        f"Pipeline: dedup, length-sorted batches of at most {translator.tokens_per_batch} padded tokens, dynamic "
        f"padding. Naive loop: batches of {scale.naive_batch_size} in the given order, padded to max_length "
        f"{scale.naive_max_length}, repeats translated again (the authors' defaults).",
        f"Identical outputs on {agreement:.0%} of the texts. A batch stops when all its texts have emitted </s>, which "
        "random weights rarely do, so both methods mostly decode every new token: the pipeline gets little credit "
        "for grouping texts of similar output length, as it would with a trained model.",
    ]
    target = Target("Translate pipeline / naive loop throughput", speedup, ">=", 3.0)
    if not target.holds:
        target.profiles = {name: profile_table(step) for name, step in steps.items()}
    return Section("(c) MT throughput", "Median of the repetitions, methods interleaved.", [table], [target])
