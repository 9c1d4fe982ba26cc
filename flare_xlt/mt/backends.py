"""MT backends behind `Translator`: each turns a list of distinct texts into translations, handing over every finished
batch or chunk so that the cache keeps it even when a later one fails.

- `transformers`: `model.generate()` on an NLLB-200 (M2M100) or MADLAD-400 (T5) checkpoint.
- `ctranslate2`: the same checkpoints converted once to CTranslate2 (`convert_to_ctranslate2`), several times faster
  on CPU and GPU, int8 included. The HF tokenizer still tokenizes: CTranslate2 takes and returns token strings.
- `command`: any program that reads one text per line on stdin and writes one translation per line, such as
  `apertium spa-eng`.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from .languages import LANGUAGE_SCHEMES, language_code

DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
# CTranslate2 compute types; "auto" keeps the type the model was converted to (CTranslate2's "default").
COMPUTE_TYPES = ("auto", *QUANTIZATIONS)
# A line-based command would read a line break inside a text as the end of that text.
LINE_BREAK = re.compile(r"\r\n|\r|\n")

Store = Callable[[dict[str, str]], None]


class TranslationInputWarning(UserWarning):
    """Some texts were not translated as given: empty ones are kept empty, long ones are cut, line breaks are joined
    for a line-based command (counted in the report)."""


class CommandTranslationError(RuntimeError):
    """The MT command failed, timed out or returned a different number of lines than it was given."""


class Backend(ABC):
    """An MT backend. A subclass declares its `name` and the Translator options it reads (`options`: the names of its
    constructor's parameters besides the generation settings); `make_backend` finds it by name."""

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]]
    uses_device: ClassVar[bool] = True  # runs a model on a device (a GPU when there is one)

    @classmethod
    def check_languages(cls, source: str, target: str, languages: str) -> None:
        """Refuse language codes this backend cannot map, before anything loads; by default every code passes."""
        return None

    @property
    @abstractmethod
    def label(self) -> str:
        """What translates, as the cache names it: the model, or the command."""

    @abstractmethod
    def identity(self) -> dict:
        """What decides the translations besides the texts and languages: the cache key holds it."""

    @abstractmethod
    def codes(self, source: str, target: str) -> tuple[str, str]:
        """The backend's codes of two task language codes; an unknown code raises before any work."""

    @abstractmethod
    def run(self, texts: list[str], source: str, target: str, store: Store, counts: dict, progress: bool) -> None:
        """Translate distinct non-empty `texts` (codes from `codes`), calling `store` with each finished part and
        adding to `counts` ("truncated", "line_breaks") what was changed in the input."""


class Seq2SeqBackend(Backend):
    """NLLB or MADLAD through the HF tokenizer: language tags, truncation, batches by token budget in length order."""

    @classmethod
    def check_languages(cls, source: str, target: str, languages: str) -> None:
        for language in (source, target):
            language_code("madlad" if languages == "madlad" or language.startswith("<2") else "nllb", language)

    def __init__(self, tokenizer, model_name: str, settings, tokens_per_batch: int, languages: str) -> None:
        if tokens_per_batch <= 0:
            raise ValueError(f"tokens_per_batch must be positive, got {tokens_per_batch}.")
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.settings = settings
        self.tokens_per_batch = tokens_per_batch
        self.scheme = detect_scheme(tokenizer, model_name) if languages == "auto" else languages
        if self.scheme not in LANGUAGE_SCHEMES:
            raise ValueError(f"Unknown languages {languages!r}; valid choices: auto, {', '.join(LANGUAGE_SCHEMES)}.")

    @property
    def label(self) -> str:
        return self.model_name

    def codes(self, source: str, target: str) -> tuple[str, str]:
        return language_code(self.scheme, source), language_code(self.scheme, target)

    def run(self, texts: list[str], source: str, target: str, store: Store, counts: dict, progress: bool) -> None:
        # MADLAD reads the source language itself, so only the target token is required of its tokenizer.
        for code in (source, target) if self.scheme == "nllb" else (target,):
            if self.tokenizer.convert_tokens_to_ids(code) == self.tokenizer.unk_token_id:
                raise ValueError(f"The tokenizer of {self.model_name} has no language token {code!r}.")
        if self.scheme == "nllb":
            self.tokenizer.src_lang = source
            encoded = self.tokenizer(texts, truncation=False)["input_ids"]
        else:
            encoded = self.tokenizer([f"{target} {text}" for text in texts], truncation=False)["input_ids"]
        limit = self.settings.max_input_length
        counts["truncated"] += sum(len(ids) > limit for ids in encoded)
        # Keep the language tag in front and </s> at the end when cutting, as the tokenizer's own truncation does.
        encoded = [ids if len(ids) <= limit else ids[: limit - 1] + ids[-1:] for ids in encoded]
        order = sorted(range(len(texts)), key=lambda index: -len(encoded[index]))
        bar = tqdm(total=len(texts), desc=f"translate {source}->{target}", unit="text", disable=not progress or None)
        with bar:
            for batch in self._batches(order, encoded):
                outputs = self.generate([encoded[index] for index in batch], target)
                decoded = self.tokenizer.batch_decode(outputs, skip_special_tokens=True)
                store({texts[index]: text.strip() for index, text in zip(batch, decoded, strict=True)})
                bar.update(len(batch))

    @abstractmethod
    def generate(self, batch: list[list[int]], target: str) -> list[list[int]]:
        """Output token ids of a batch of input ids (special tokens may be included)."""

    def target_prefix(self, target: str) -> list[str] | None:
        """NLLB's decoder starts with the target language token; MADLAD's source already names the target."""
        return [target] if self.scheme == "nllb" else None

    def _batches(self, order: list[int], encoded: list[list[int]]) -> Iterator[list[int]]:
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


def detect_scheme(tokenizer, model_name: str) -> str:
    """nllb when the tokenizer has NLLB's language tokens, madlad when it has `<2xx>` tokens."""
    for scheme, probe in (("nllb", "eng_Latn"), ("madlad", "<2en>")):
        if tokenizer.convert_tokens_to_ids(probe) != tokenizer.unk_token_id:
            return scheme
    raise ValueError(
        f"The tokenizer of {model_name} has neither NLLB language tokens (eng_Latn) nor MADLAD target tokens (<2en>); "
        f"give --languages, valid choices: {', '.join(LANGUAGE_SCHEMES)}."
    )


class TransformersBackend(Seq2SeqBackend):
    name = "transformers"
    options = ("model", "tokens_per_batch", "device", "dtype", "languages")

    def __init__(self, model: str, settings, tokens_per_batch: int, device: str, dtype: str, languages: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(
                f"Unknown dtype {dtype!r} for the transformers backend; valid choices: {', '.join(DTYPES)}."
            )
        from ..hub import model_config

        model_config(model)  # a missing model is named here, before the tokenizer fails on it
        super().__init__(AutoTokenizer.from_pretrained(model), model, settings, tokens_per_batch, languages)
        self.device = torch.device(device)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model, dtype=DTYPES[dtype]).to(self.device).eval()

    def identity(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "dtype": str(self.model.dtype).removeprefix("torch.")}

    def generate(self, batch: list[list[int]], target: str) -> list[list[int]]:
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
        prefix = self.target_prefix(target)
        forced = {"forced_bos_token_id": self.tokenizer.convert_tokens_to_ids(prefix[0])} if prefix else {}
        with torch.inference_mode():
            output = self.model.generate(
                **padded,
                **forced,
                num_beams=self.settings.num_beams,
                max_new_tokens=self.settings.max_new_tokens,
            )
        return output.tolist()


class CTranslate2Backend(Seq2SeqBackend):
    name = "ctranslate2"
    options = ("model", "tokens_per_batch", "device", "dtype", "languages", "converted")

    def __init__(
        self,
        model: str,
        settings,
        tokens_per_batch: int,
        device: str,
        dtype: str,
        languages: str,
        converted: str | Path | None = None,
    ) -> None:
        """`model`: a CTranslate2 folder made by `convert_to_ctranslate2` (tokenizer inside), or an HF checkpoint,
        converted once into `converted` (default: a folder under ~/.cache/flare-xlt/ctranslate2) and reused."""
        import ctranslate2

        if dtype not in COMPUTE_TYPES:
            raise ValueError(
                f"Unknown dtype {dtype!r} for the ctranslate2 backend; valid choices: {', '.join(COMPUTE_TYPES)}."
            )
        folder = Path(model)
        if not (folder / "model.bin").is_file():
            folder = Path(converted) if converted is not None else default_converted_folder(model)
            if not (folder / "model.bin").is_file():
                convert_to_ctranslate2(model, folder)
        super().__init__(AutoTokenizer.from_pretrained(folder), model, settings, tokens_per_batch, languages)
        device_type, _, index = device.partition(":")
        self.translator = ctranslate2.Translator(
            str(folder),
            device=device_type,
            device_index=int(index or 0),
            compute_type="default" if dtype == "auto" else dtype,
            intra_threads=torch.get_num_threads(),  # as many threads as torch would use, not CTranslate2's own 4
        )
        self.device = torch.device(device)

    def identity(self) -> dict:
        return {"backend": self.name, "model": self.model_name, "dtype": self.translator.compute_type}

    def generate(self, batch: list[list[int]], target: str) -> list[list[int]]:
        prefix = self.target_prefix(target)
        results = self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(ids) for ids in batch],
            target_prefix=[prefix] * len(batch) if prefix else None,
            beam_size=self.settings.num_beams,
            # The target prefix counts towards max_decoding_length as the forced token counts towards
            # transformers' max_new_tokens: the same number of tokens either way.
            max_decoding_length=self.settings.max_new_tokens,
            max_input_length=0,  # already cut to max_input_length, with the language tag and </s> kept
        )
        return [self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]


def default_converted_folder(model: str) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flare-xlt" / "ctranslate2"
    return cache / re.sub(r"[^A-Za-z0-9._-]+", "--", str(model).strip("/"))


def convert_to_ctranslate2(model: str, output: str | Path, quantization: str | None = None) -> Path:
    """Convert an NLLB/M2M100 or MADLAD/T5 checkpoint into a CTranslate2 folder with its tokenizer saved beside it.

    The folder appears only when complete (converted beside it, then renamed), so an interrupted conversion is
    redone rather than half used. `quantization` stores the weights as int8, float16, ...; any compute type can
    still be chosen when loading."""
    from ctranslate2.converters import TransformersConverter

    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; valid choices: {', '.join(QUANTIZATIONS)}.")
    output = Path(output)
    staging = output.with_name(f".{output.name}.converting")
    TransformersConverter(str(model)).convert(str(staging), quantization=quantization, force=True)
    AutoTokenizer.from_pretrained(model).save_pretrained(staging)
    staging.replace(output)
    return output


class CommandBackend(Backend):
    name = "command"
    options = ("command", "command_timeout", "chunk_size")
    uses_device = False

    def __init__(self, settings, command: str | None, command_timeout: float, chunk_size: int) -> None:
        """`command`: a program and its arguments (split like a shell would, but run without one), reading one text
        per line on stdin and writing one translation per line on stdout. Pipelines need `sh -c '...'`."""
        if not (command or "").strip():
            raise ValueError("The command backend needs --command, e.g. --command 'apertium spa-eng'.")
        if chunk_size <= 0 or command_timeout <= 0:
            raise ValueError(f"chunk_size and timeout must be positive, got {chunk_size} and {command_timeout}.")
        self.command, self.timeout, self.chunk_size = command, command_timeout, chunk_size
        self.arguments = shlex.split(command)

    @property
    def label(self) -> str:
        return self.command

    def identity(self) -> dict:
        return {"backend": self.name, "command": self.command}

    def codes(self, source: str, target: str) -> tuple[str, str]:
        # The command itself fixes the language pair; the codes only keep caches of different pairs apart.
        return source, target

    def run(self, texts: list[str], source: str, target: str, store: Store, counts: dict, progress: bool) -> None:
        lines = [LINE_BREAK.sub(" ", text) for text in texts]
        counts["line_breaks"] += sum(line != text for line, text in zip(lines, texts, strict=True))
        description = f"{self.command} {source}->{target}"
        bar = tqdm(total=len(texts), desc=description, unit="text", disable=not progress or None)
        with bar:
            for start in range(0, len(texts), self.chunk_size):
                chunk = lines[start : start + self.chunk_size]
                where = f"texts {start + 1}-{start + len(chunk)} of {len(texts)}"
                translations = self._call(chunk, where)
                store(dict(zip(texts[start : start + self.chunk_size], translations, strict=True)))
                bar.update(len(chunk))

    def _call(self, lines: list[str], where: str) -> list[str]:
        try:
            # A session of its own: a timeout kills the whole process group, including the stages of a script.
            process = subprocess.Popen(
                self.arguments,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            raise CommandTranslationError(f"MT command {self.command!r} could not start: {error}.") from error
        try:
            stdout, stderr = process.communicate("".join(line + "\n" for line in lines).encode(), self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise CommandTranslationError(
                f"MT command {self.command!r} did not finish {where} within {self.timeout:g} s (--command_timeout); "
                "it was killed. Earlier chunks are in the cache: re-running resumes after them."
            ) from None
        message = stderr.decode(errors="replace").strip()[-2000:] or "nothing on stderr"
        if process.returncode != 0:
            raise CommandTranslationError(
                f"MT command {self.command!r} failed on {where} with exit status {process.returncode}: {message}. "
                "Earlier chunks are in the cache: re-running resumes after them."
            )
        output = stdout.decode(errors="replace").removesuffix("\n").split("\n") if stdout else []
        if len(output) != len(lines):
            raise CommandTranslationError(
                f"MT command {self.command!r} wrote {len(output)} lines for the {len(lines)} lines of {where}; it must "
                "write exactly one translation per input line."
            )
        return [line.removesuffix("\r").strip() for line in output]


BACKEND_TYPES: dict[str, type[Backend]] = {
    backend.name: backend for backend in (TransformersBackend, CTranslate2Backend, CommandBackend)
}
BACKENDS = tuple(BACKEND_TYPES)


def backend_type(name: str) -> type[Backend]:
    if name not in BACKEND_TYPES:
        raise ValueError(f"Unknown backend {name!r}; valid choices: {', '.join(BACKENDS)}.")
    return BACKEND_TYPES[name]


def make_backend(name: str, settings, **options) -> Backend:
    """The backend `name`, built from the options it declares; the others (another backend's) are not read."""
    backend = backend_type(name)
    return backend(settings=settings, **{option: options[option] for option in backend.options if option in options})


def warn_changed_inputs(counts: dict, total: int, max_input_length: int) -> None:
    if counts["truncated"]:
        warnings.warn(
            f"{counts['truncated']} of {total} texts to translate are longer than max_input_length={max_input_length} "
            f"tokens; each is cut to its first {max_input_length - 1} tokens (language tag included) and </s>, and "
            "only that part is translated. Raise --max_input_length to keep more.",
            TranslationInputWarning,
            stacklevel=3,
        )
    if counts["line_breaks"]:
        warnings.warn(
            f"{counts['line_breaks']} of {total} texts to translate contain line breaks, which a line-based command "
            "would read as separate texts; each line break was replaced by a space.",
            TranslationInputWarning,
            stacklevel=3,
        )
