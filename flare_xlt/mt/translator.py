"""NLLB translation with dedup, a persistent cache, and batches by token budget in length order.

The authors' loop padded every text to max_length, kept no cache and translated repeated strings (XNLI premises
repeat about three times) again each time.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from .cache import TranslationCache
from .languages import nllb_code

DEFAULT_MT_MODEL = "facebook/nllb-200-distilled-600M"
NLLB_MODELS = (DEFAULT_MT_MODEL, "facebook/nllb-200-distilled-1.3B", "facebook/nllb-200-1.3B", "facebook/nllb-200-3.3B")
DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TranslationInputWarning(UserWarning):
    """Some texts were not translated as given: empty ones are kept empty, long ones are cut (counted in the report)."""


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = field(default=4, metadata={"help": "Beam size (1: greedy)."})
    max_input_length: int = field(
        default=256, metadata={"help": "Input tokens kept per text; longer ones are cut and counted."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens generated per text."})


@dataclass
class TranslationReport:
    requested: int = 0  # texts asked for, repeats included
    empty: int = 0  # empty or blank texts: translated as "" without the model
    unique: int = 0  # distinct non-empty texts
    cached: int = 0  # distinct texts found in the cache
    translated: int = 0  # distinct texts the model translated in this call
    truncated: int = 0  # distinct texts over max_input_length
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.translated / self.seconds if self.seconds else 0.0
        return (
            f"{self.requested} texts: {self.unique} distinct ({self.requested - self.unique - self.empty} repeats "
            f"deduplicated, {self.empty} empty), {self.cached} from the cache, {self.translated} translated "
            f"({rate:.1f}/s), {self.truncated} cut to max_input_length"
        )


class Translator:
    def __init__(
        self,
        model: str = DEFAULT_MT_MODEL,
        settings: GenerationSettings | None = None,
        tokens_per_batch: int = 8192,
        cache: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: bool = True,
    ) -> None:
        """`model`: an NLLB-200 checkpoint name or a local directory with an M2M100-architecture model and its NLLB
        tokenizer. `cache`: the SQLite file that makes repeated and resumed runs translate only what is missing."""
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; valid choices: {', '.join(DTYPES)}.")
        if tokens_per_batch <= 0:
            raise ValueError(f"tokens_per_batch must be positive, got {tokens_per_batch}.")
        self.model_name = str(model)
        self.settings = settings or GenerationSettings()
        self.tokens_per_batch = tokens_per_batch
        self.cache_path = Path(cache) if cache is not None else None
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device
        )
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(self.model_name, dtype=DTYPES[dtype]).to(self.device).eval()
        self.progress = progress

    def translate(self, texts: list[str], source: str, target: str) -> tuple[list[str], TranslationReport]:
        """Translations of `texts` (task language codes or NLLB codes), in order, and what it took."""
        started = time.perf_counter()
        source_code, target_code = nllb_code(source), nllb_code(target)
        report = TranslationReport(requested=len(texts))
        distinct = list(dict.fromkeys(text for text in texts if text.strip()))
        report.empty = sum(1 for text in texts if not text.strip())
        report.unique = len(distinct)
        if report.empty:
            warnings.warn(
                f"{report.empty} of {report.requested} texts are empty or blank; they stay empty, without the model.",
                TranslationInputWarning,
                stacklevel=2,
            )

        cache = None
        if self.cache_path is not None:
            cache = TranslationCache(self.cache_path, self.model_name, source_code, target_code, asdict(self.settings))
        done = cache.lookup(distinct) if cache is not None else {}
        report.cached = len(done)
        missing = [text for text in distinct if text not in done]
        try:
            done.update(self._generate(missing, source_code, target_code, cache, report))
        finally:
            if cache is not None:
                cache.close()
        report.translated = len(missing)
        report.seconds = time.perf_counter() - started
        return [done[text] if text.strip() else "" for text in texts], report

    def _generate(self, texts, source_code, target_code, cache, report) -> dict[str, str]:
        if not texts:
            return {}
        self.tokenizer.src_lang = source_code
        target_id = self.tokenizer.convert_tokens_to_ids(target_code)
        for code in (source_code, target_code):
            if self.tokenizer.convert_tokens_to_ids(code) == self.tokenizer.unk_token_id:
                raise ValueError(f"The tokenizer of {self.model_name} has no language token {code!r}.")
        encoded = self.tokenizer(texts, truncation=False)["input_ids"]
        limit = self.settings.max_input_length
        report.truncated = sum(len(ids) > limit for ids in encoded)
        if report.truncated:
            warnings.warn(
                f"{report.truncated} of {len(texts)} texts to translate are longer than max_input_length={limit} "
                f"tokens; each is cut to its first {limit - 1} tokens (language tag included) and </s>, and only that "
                "part is translated. Raise --max_input_length to keep more.",
                TranslationInputWarning,
                stacklevel=3,
            )
        # Keep the language tag in front and </s> at the end when cutting, as the tokenizer's own truncation does.
        encoded = [ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:] for ids in encoded]
        order = sorted(range(len(texts)), key=lambda index: -len(encoded[index]))
        results = {}
        bar = tqdm(
            total=len(texts),
            desc=f"translate {source_code}->{target_code}",
            unit="text",
            disable=not self.progress or None,
        )
        with bar:
            for batch in self._batches(order, encoded):
                padded = self.tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt").to(
                    self.device
                )
                with torch.inference_mode():
                    output = self.model.generate(
                        **padded,
                        forced_bos_token_id=target_id,
                        num_beams=self.settings.num_beams,
                        max_new_tokens=self.settings.max_new_tokens,
                    )
                decoded = self.tokenizer.batch_decode(output, skip_special_tokens=True)
                translated = {texts[i]: text.strip() for i, text in zip(batch, decoded, strict=True)}
                if cache is not None:
                    cache.store(translated)
                results.update(translated)
                bar.update(len(batch))
        return results

    def _batches(self, order: list[int], encoded: list[list[int]]):
        """Consecutive texts in length order while (longest length x count) fits the token budget."""
        batch: list[int] = []
        for index in order:
            longest = len(encoded[batch[0]]) if batch else len(encoded[index])
            if batch and longest * (len(batch) + 1) > self.tokens_per_batch:
                yield batch
                batch = []
            batch.append(index)
        if batch:
            yield batch
