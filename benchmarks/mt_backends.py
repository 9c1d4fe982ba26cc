"""(d) MT backends: CTranslate2 (float32 and int8) against transformers on a random M2M100 (NLLB) and a random T5
(MADLAD-400's architecture), greedy outputs compared token for token; Apertium's throughput through the command
backend.

Both models are real architectures built from configs with random weights. At transformers' default init scale a random
decoder emits the same token for every input, which would make the output comparison trivial; the weight matrices are
therefore drawn at 2/sqrt(fan-in), so that outputs differ by text.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import M2M100ForConditionalGeneration, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from flare_xlt.mt import GenerationSettings, Translator
from flare_xlt.mt.backends import convert_to_ctranslate2

from .harness import median, paired_ratio, time_interleaved
from .models import Scale
from .report import Section, Table, Target
from .translation import SOURCE, TARGET, save_tiny_nllb, sentence, xnli_like_texts

REFERENCE = "transformers float32"
BACKENDS = {REFERENCE: ("transformers", "float32"), "ctranslate2 float32": ("ctranslate2", "float32")}
BACKENDS["ctranslate2 int8"] = ("ctranslate2", "int8")


def spread_weights(directory: Path, model_class: type) -> None:
    """Matrices redrawn at 2/sqrt(fan-in) (norms and biases kept), saved back in place."""
    model = model_class.from_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2 / parameter.shape[1] ** 0.5)
    model.save_pretrained(directory)


def save_tiny_t5(directory: Path, scale: Scale) -> None:
    """A random T5 of the NLLB model's sizes and a BPE tokenizer with MADLAD's `<2xx>` target tokens."""
    generator = random.Random(1)
    corpus = [sentence(generator, 4, 36) for _ in range(2000)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    bpe.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<pad>", "</s>", "<unk>", "<2en>", f"<2{TARGET}>"]  # T5's ids 0-2, then target tokens
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=scale.nllb_vocab, special_tokens=specials))
    bpe.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", additional_special_tokens=specials
    )
    sizes = scale.nllb_sizes
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=sizes["d_model"],
        d_kv=sizes["d_model"] // sizes["encoder_attention_heads"],
        d_ff=sizes["encoder_ffn_dim"],
        num_layers=sizes["encoder_layers"],
        num_decoder_layers=sizes["decoder_layers"],
        num_heads=sizes["encoder_attention_heads"],
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def recorded_tokens(translator: Translator) -> dict[tuple, list[int]]:
    """Wraps the backend's generate so that each input's output ids, special tokens left out, are kept."""
    recorded: dict[tuple, list[int]] = {}
    generate = translator.backend.generate
    specials = set(translator.tokenizer.all_special_ids)

    def record(batch, target):
        outputs = generate(batch, target)
        for ids, output in zip(batch, outputs, strict=True):
            recorded[tuple(ids)] = [token for token in output if token not in specials]
        return outputs

    translator.backend.generate = record
    return recorded


def model_table(name: str, folder: Path, texts: list[str], scale: Scale, repeats: int) -> tuple[Table, dict]:
    settings = GenerationSettings(
        num_beams=1, max_input_length=scale.naive_max_length, max_new_tokens=scale.mt_new_tokens
    )
    converted = convert_to_ctranslate2(str(folder), folder.with_name(folder.name + "-ct2"))
    translators = {
        label: Translator(
            converted if backend == "ctranslate2" else folder,
            settings,
            device="cpu",
            dtype=dtype,
            backend=backend,
            progress=False,
        )
        for label, (backend, dtype) in BACKENDS.items()
    }
    tokens = {label: recorded_tokens(translator) for label, translator in translators.items()}
    steps = {
        label: (lambda t=translator: t.translate(texts, SOURCE, TARGET)) for label, translator in translators.items()
    }
    seconds = time_interleaved(steps, repeats, scale.warmup, torch.device("cpu"))
    table = Table(
        f"{name}: {len(texts)} distinct texts, greedy, {scale.mt_new_tokens} new tokens, CPU",
        ["backend", "texts/s", "× transformers", "outputs differing from transformers (token for token)"],
    )
    ratios = {}
    for label in translators:
        ratios[label] = 1 / paired_ratio(seconds, label, REFERENCE)
        differing = sum(tokens[label][key] != ids for key, ids in tokens[REFERENCE].items())
        table.rows.append(
            [
                label,
                f"{len(texts) / median(seconds[label]):.1f}",
                f"{ratios[label]:.2f}×",
                f"{differing} of {len(texts)}",
            ]
        )
    return table, ratios


def apertium_table(texts: list[str], repeats: int) -> Table:
    table = Table(f"Apertium eng-spa through the command backend: {len(texts)} distinct texts", ["backend", "texts/s"])
    pairs = (
        subprocess.run(["apertium", "-l"], capture_output=True, text=True).stdout.split()
        if shutil.which("apertium")
        else []
    )
    if "eng-spa" not in pairs:
        table.notes.append("Not run: Apertium's eng-spa pair is not installed (`make apertium` installs it).")
        return table
    translator = Translator(backend="command", command="apertium eng-spa", progress=False)
    seconds = time_interleaved(
        {"apertium": lambda: translator.translate(texts, "en", "es")}, repeats, 1, torch.device("cpu")
    )
    table.rows.append(["apertium eng-spa (command)", f"{len(texts) / median(seconds['apertium']):.1f}"])
    table.notes.append("One apertium process per chunk of 1000 lines; rule-based, so it has no model size to compare.")
    return table


def backends_section(scale: Scale, repeats: int, device: torch.device) -> Section:
    """CPU only: CTranslate2's CPU kernels are what this compares; `device` is for the other sections."""
    texts = list(dict.fromkeys(xnli_like_texts(scale.mt_premises)))
    tables, targets = [], []
    with tempfile.TemporaryDirectory() as directory:
        for name, save, model_class in (
            ("M2M100 (NLLB)", save_tiny_nllb, M2M100ForConditionalGeneration),
            ("T5 (MADLAD-400)", save_tiny_t5, T5ForConditionalGeneration),
        ):
            folder = Path(directory) / name.split()[0].lower()
            save(folder, scale)
            spread_weights(folder, model_class)
            table, ratios = model_table(name, folder, texts, scale, repeats)
            tables.append(table)
            # The goal is speed at equal output: float32 gives transformers' tokens, int8 does not (counted above).
            targets.append(
                Target(
                    f"{name}: ctranslate2 float32 / transformers throughput", ratios["ctranslate2 float32"], ">=", 3.0
                )
            )
    tables[0].notes.append(
        "ctranslate2 converted once from the same checkpoint (`flare-xlt convert-mt`), run with as many threads as "
        "torch; the same HF tokenizer tokenizes for both. Every backend translates the same distinct texts without a "
        "cache, in the same length-sorted batches."
    )
    return Section("(d) MT backends", "Median of the repetitions, backends interleaved, CPU.", tables, targets)
