"""Translation with dedup, a persistent cache, and batches by token budget in length order, over any backend
(`backends.py`) and split over the processes of a distributed launch (`sharding.py`).

The authors' loop padded every text to max_length, kept no cache and translated repeated strings (XNLI premises
repeat about three times) again each time.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .backends import TranslationInputWarning, backend_type, make_backend, warn_changed_inputs
from .cache import TranslationCache
from .languages import DEFAULT_MT_MODEL
from .sharding import Shards

NLLB_MODELS = (DEFAULT_MT_MODEL, "facebook/nllb-200-distilled-1.3B", "facebook/nllb-200-1.3B", "facebook/nllb-200-3.3B")


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
    translated: int = 0  # distinct texts the backend translated in this call
    truncated: int = 0  # distinct texts over max_input_length
    line_breaks: int = 0  # distinct texts whose line breaks became spaces for a line-based command
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.translated / self.seconds if self.seconds else 0.0
        joined = f", {self.line_breaks} with line breaks joined" if self.line_breaks else ""
        return (
            f"{self.requested} texts: {self.unique} distinct ({self.requested - self.unique - self.empty} repeats "
            f"deduplicated, {self.empty} empty), {self.cached} from the cache, {self.translated} translated "
            f"({rate:.1f}/s), {self.truncated} cut to max_input_length{joined}"
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
        backend: str = "transformers",
        languages: str = "auto",
        converted: str | Path | None = None,
        command: str | None = None,
        command_timeout: float = 600.0,
        chunk_size: int = 1000,
        shards: Shards | None = None,
    ) -> None:
        """`model`: an NLLB-200 or MADLAD-400 checkpoint name or folder (a CTranslate2 folder or a checkpoint to
        convert with backend="ctranslate2"; unused with backend="command"). `languages`: auto (from the tokenizer),
        nllb or madlad. `cache`: the SQLite file that makes repeated and resumed runs translate only what is missing.
        `shards`: the processes that split the work (default: this one alone)."""
        self.settings = settings or GenerationSettings()
        self.tokens_per_batch = tokens_per_batch
        self.cache_path = Path(cache) if cache is not None else None
        self.shards = shards or Shards()
        if device == "auto":
            cuda = torch.cuda.is_available() and backend_type(backend).uses_device
            device = f"cuda:{self.shards.local_rank}" if cuda and self.shards.world > 1 else "cuda" if cuda else "cpu"
        self.device = torch.device(device)
        options = {"model": str(model), "tokens_per_batch": tokens_per_batch, "device": device, "dtype": dtype}
        options |= {"languages": languages, "converted": converted, "command": command}
        options |= {"command_timeout": command_timeout, "chunk_size": chunk_size}
        self.backend = make_backend(backend, self.settings, **options)
        # What rebuilds this translator elsewhere (flare-xlt predict, for text that arrives after the run): the
        # backend, the options it reads besides the device, and the generation settings. JSON-able.
        self.options = {
            "backend": self.backend.name,
            **{name: _plain(options[name]) for name in self.backend.options if name != "device"},
            **asdict(self.settings),
        }
        self.model_name = self.backend.label
        # FLARE-MT encoder states and the benchmarks use the transformers model and tokenizer directly.
        self.model = getattr(self.backend, "model", None)
        self.tokenizer = getattr(self.backend, "tokenizer", None)
        self.progress = progress

    def translate(self, texts: list[str], source: str, target: str) -> tuple[list[str], TranslationReport]:
        """Translations of `texts` (task language codes or the backend's own codes), in order, and what it took."""
        started = time.perf_counter()
        source_code, target_code = self.backend.codes(source, target)
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
            identity = {**self.backend.identity(), **asdict(self.settings)}
            cache = TranslationCache(self.cache_path, self.model_name, source_code, target_code, identity)
        share = self.shards.take(distinct)
        done = cache.lookup(share) if cache is not None else {}
        cached = len(done)
        missing = [text for text in share if text not in done]
        counts = {"truncated": 0, "line_breaks": 0}

        def store(translations: dict[str, str]) -> None:
            if cache is not None:
                cache.store(translations)
            done.update(translations)

        try:
            if missing:
                self.backend.run(missing, source_code, target_code, store, counts, self.progress)
        finally:
            if cache is not None:
                cache.close()
        parts = self.shards.gather({"done": done, "cached": cached, "translated": len(missing), **counts})
        done = {text: translation for part in parts for text, translation in part["done"].items()}
        report.cached = sum(part["cached"] for part in parts)
        report.translated = sum(part["translated"] for part in parts)
        report.truncated = sum(part["truncated"] for part in parts)
        report.line_breaks = sum(part["line_breaks"] for part in parts)
        warn_changed_inputs(vars(report), report.translated, self.settings.max_input_length)
        report.seconds = time.perf_counter() - started
        return [done[text] if text.strip() else "" for text in texts], report


def _plain(value):
    return str(value) if isinstance(value, Path) else value
