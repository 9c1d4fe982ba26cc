"""The lm-evaluation-harness model `flare`: a FLARE decoder scored on any lm-eval task, with fusion.

Install the extra (`pip install "flare-xlt[lm-eval]"`) and run lm-eval through this module, which registers the
model before lm-eval's own command line starts:

    python -m flare_xlt.harness --model flare \\
        --model_args run=runs/latest-transfer,backend=transformers,model=facebook/nllb-200-distilled-600M \\
        --tasks xnli_sw

Or from Python: `lm_eval.simple_evaluate(model=FlareLM(run=...), tasks=[...])`.

Every request's context is in the target language. It is machine-translated into English (each distinct context once,
cached in memory and, with `cache=`, on disk), and the fused model reads the target tokens with that translation as
the source side, as the workflow pairs a decoder's prompt with its English prompt (docs/method.md, sections 6-7):

- loglikelihood(context, continuation): target = context + continuation, source = the translated context; the
  continuation's tokens carry labels, so the context is the prompt that FLARE pairs (any `pairing` mode), and the
  score is the sum of their teacher-forced log-probabilities.
- generate_until(context, gen_kwargs): greedy FLARE generation after the context, source = the translated context,
  cut at the first stop string.
- loglikelihood_rolling(text): lm-eval's rolling windows over the text, each scored as above with the translation of
  the whole text as the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from .adapter.model import FlareModel
from .methods import get_method
from .pipeline.finished_runs import recorded_run, run_model, scoring_settings
from .pipeline.run_data import load
from .predictor import translator_from_options
from .tasks import PairedCollator, get_task
from .tasks.formatting import IGNORE_INDEX

# The MT generation settings a --model_args may name (mt_num_beams=1, mt_max_input_length=512, ...).
# lm-eval's options for generate_until that greedy FLARE generation honours; any other one is refused.
GENERATION_OPTIONS = ("until", "max_gen_toks", "do_sample", "temperature")


@dataclass
class HarnessReport:
    """What the harness did: requests, distinct contexts translated, and truncations, all counted."""

    requests: int = 0
    contexts: int = 0  # distinct texts sent to translation
    translated: int = 0  # of them, translated by the MT backend (the rest came from its cache)
    truncated: int = 0  # target or source sequences cut from the left to max_length
    empty_contexts: int = 0  # requests whose context is empty: no English to fuse


@register_model("flare")
class FlareLM(LM):
    """A FLARE decoder for lm-evaluation-harness.

    Args (lm-eval's --model_args, or keywords):
        run: A finished `flare-xlt transfer` run of a decoder with method flare (or its adapter/ folder).
        adapter: Or a saved FLARE adapter folder, with `pretrained` (the base), `task` and optionally `stage1`.
        pretrained: The base model of a saved adapter.
        task: The task the saved adapter (and its stage-1 run) was trained on; for a run of a custom task, its spec
            file (a run records the task's name).
        stage1: The stage-1 run folder whose adapter is merged into the base first, for a saved adapter.
        language: The target language of the requests (its code for the MT backend); default: the run's.
        source_language: The language the contexts are translated into; default: the task's (en).
        backend, model, command, languages, ...: the MT backend, as `flare-xlt translate` takes it (transformers with
            an NLLB or MADLAD model, ctranslate2, or command), the backend's own options and the generation settings
            (num_beams, max_input_length, max_new_tokens), as `flare-xlt predict --mt.*` reads them (an option the
            backend does not read is refused, naming those it does); mt_<name> is <name>, e.g. mt_device, the MT
            model's device apart from `device`, the scored model's.
        cache: SQLite translation cache, reused across runs.
        max_length: Tokens per sequence (context and continuation); longer contexts are cut from the left, BOS kept,
            and counted. Default: the run's train.max_length.
        batch_size: Requests per forward (lm-eval's --batch_size; "auto" reads as 8).
        device: lm-eval's --device: cpu, cuda, ...; default: the GPU when there is one (a cuda device on a machine
            without one, as lm-eval's command line asks by default, leaves the model on the CPU).
    """

    def __init__(
        self,
        run: str | None = None,
        adapter: str | None = None,
        pretrained: str | None = None,
        task: str | None = None,
        stage1: str | None = None,
        language: str | None = None,
        source_language: str | None = None,
        backend: str = "transformers",
        model: str | None = None,
        command: str | None = None,
        languages: str = "auto",
        cache: str | None = None,
        max_length: int | None = None,
        batch_size: int | str = 8,
        max_batch_size: int | None = None,
        device: str | None = None,
        **mt_options,
    ) -> None:
        super().__init__()
        if (run is None) == (adapter is None):
            raise ValueError(
                "Give exactly one of run=<a finished flare-xlt transfer run> or adapter=<a FLARE adapter>."
            )
        if adapter is not None and pretrained is None:
            raise ValueError("adapter= is a saved FLARE adapter: give pretrained=<its base model> and task=<its task>.")
        run_dir, config = recorded_run(Path(run or adapter), pretrained, task, Path(stage1) if stage1 else None)
        method = get_method(config["method"])
        if not method.fuses or method.needs_mt_states:
            raise ValueError(
                f"{run_dir} is a {config['method']} run; the flare model scores FLARE runs (method flare), whose "
                "adapter fuses the English translation of each context."
            )
        spec = get_task(task or config["task"])
        train = scoring_settings(config, max_length)
        self.loaded = load(config["model"], spec, config["architecture"], config["load_in_4bit"], train)
        if self.loaded.architecture != "decoder":
            raise ValueError(
                f"{config['model']} is an {self.loaded.architecture} model; lm-eval scores decoders (causal LMs)."
            )
        self.network = run_model(self.loaded, run_dir, config, config["model"], spec)
        if not isinstance(self.network, FlareModel):
            raise ValueError(f"{run_dir} did not load as a FLARE model (got {type(self.network).__name__}).")
        if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise; without a GPU the model stays on the CPU.
            print(f"flare: no GPU for device={device}; running on the CPU")
        elif device is not None:
            self.network.to(device)
        self.network.eval()
        self._device = next(self.network.parameters()).device
        self.tokenizer = self.loaded.tokenizer
        self.max_length = train.max_length
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.target_language = language or config.get("language")
        if self.target_language is None:
            raise ValueError(f"{run_dir} records no target language: give language=<the requests' language>.")
        self.source_language = source_language or spec.source_language
        options = {key.removeprefix("mt_"): value for key, value in mt_options.items()}
        named = {"model": model, "command": command, "languages": None if languages == "auto" else languages}
        options.update({name: value for name, value in named.items() if value is not None})
        self.translator = translator_from_options({"backend": backend, **options}, cache)
        self.translations: dict[str, str] = {}  # context -> English, across every call
        self.report = HarnessReport()
        self.collate = PairedCollator.for_tokenizer(self.tokenizer)

    # ------------------------------------------------------------------ translation
    def english(self, texts: list[str]) -> list[str]:
        """The English translation of each text: the distinct texts not yet translated go to the MT backend at once."""
        empty = sum(1 for text in texts if not text.strip())
        if empty:
            self.report.empty_contexts += empty
            print(
                f"flare: {empty} of {len(texts)} requests have an empty context, so FLARE reads no English for them "
                "and scores them as its plain LoRA (lm-eval tasks that put the whole input into the choices, such as "
                "xnli_*, do this); see docs/lm-eval.md"
            )
        missing = list(dict.fromkeys(text for text in texts if text not in self.translations and text.strip()))
        if missing:
            translated, report = self.translator.translate(missing, self.target_language, self.source_language)
            self.translations.update(zip(missing, translated, strict=True))
            self.report.contexts += len(missing)
            self.report.translated += report.translated
        return [self.translations.get(text, "") for text in texts]

    # ------------------------------------------------------------------ tokens
    def _tokens(self, text: str) -> list[int]:
        """A prompt's tokens as the workflow encodes it (the tokenizer's special tokens included); an empty prompt is
        the BOS (or EOS) token alone, so that the first continuation token has a position to be predicted from."""
        ids = self.tokenizer(text)["input_ids"]
        return ids or [self._start_token()]

    def _start_token(self) -> int:
        """What an empty prompt reads, and what lm-eval's rolling windows start with: BOS, or EOS without one."""
        return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id

    def _fit(self, ids: list[int], length: int) -> list[int]:
        """`ids` cut from the left to `length`, its BOS kept, and counted (as the workflow cuts decoder prompts)."""
        if len(ids) <= length:
            return ids
        self.report.truncated += 1
        keep = ids[:1] if ids[0] == self.tokenizer.bos_token_id else []
        return keep + ids[len(ids) - length + len(keep) :]

    def _split(self, context: str, continuation: str) -> tuple[str, str]:
        """lm-eval's convention: a space between context and continuation belongs to the continuation."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation, context = context[-spaces:] + continuation, context[:-spaces]
        return context, continuation

    # ------------------------------------------------------------------ scoring
    def score(self, rows: list[tuple[list[int], list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(summed log-probability, greedy) of each continuation, for rows (context ids, continuation ids, source
        ids): one fused teacher-forced forward per batch, longest rows first."""
        order = sorted(range(len(rows)), key=lambda index: -len(rows[index][0]) - len(rows[index][1]))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        device = next(self.network.parameters()).device
        for start in tqdm(range(0, len(order), self.batch_size), desc="flare loglikelihood", disable=None):
            chunk = order[start : start + self.batch_size]
            features = []
            for index in chunk:
                context, continuation, source = rows[index]
                context = self._fit(context, self.max_length - len(continuation))
                source = self._fit(source, self.max_length - len(continuation))
                features.append(
                    {
                        "input_ids": context + continuation,
                        "attention_mask": [1] * (len(context) + len(continuation)),
                        "labels": [IGNORE_INDEX] * len(context) + continuation,
                        "source_input_ids": source,
                        "source_attention_mask": [1] * len(source),
                    }
                )
            batch = {key: value.to(device) for key, value in self.collate(features).items()}
            labels = batch["labels"]
            with torch.no_grad():
                logits = self.network(**batch).logits  # (B, T, V)
            # Token t is predicted at position t - 1; continuation tokens are the labelled ones.
            log_probs = logits[:, :-1].float().log_softmax(-1)  # (B, T-1, V)
            targets = labels[:, 1:]  # (B, T-1)
            scored = targets != IGNORE_INDEX
            picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
            greedy = (log_probs.argmax(-1) == targets) | ~scored
            for row, index in enumerate(chunk):
                results[index] = (picked[row][scored[row]].sum().item(), bool(greedy[row].all()))
        return results

    def _check_continuation(self, continuation: list[int]) -> None:
        if len(continuation) >= self.max_length:
            raise ValueError(
                f"A continuation of {len(continuation)} tokens leaves no room for its context within max_length="
                f"{self.max_length}; raise max_length in --model_args."
            )

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._split(*request.args) for request in requests]
        sources = self.english([context for context, _ in pairs])
        rows = []
        for (context, continuation), source in zip(pairs, sources, strict=True):
            continuation_ids = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            self._check_continuation(continuation_ids)
            rows.append((self._tokens(context), continuation_ids, self._tokens(source)))
        self.report.requests += len(requests)
        results = self.score(rows)
        for request, result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        texts = [request.args[0] for request in requests]
        sources = self.english(texts)
        start = self._start_token()
        rows, owners = [], []
        for number, (text, source) in enumerate(zip(texts, sources, strict=True)):
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            windows = get_rolling_token_windows(tokens, start, self.max_length, context_len=1)
            for context, continuation in map(make_disjoint_window, windows):
                rows.append((context, continuation, self._tokens(source)))
                owners.append(number)
        self.report.requests += len(requests)
        totals = [0.0] * len(texts)
        for owner, (log_prob, _) in zip(owners, self.score(rows), strict=True):
            totals[owner] += log_prob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests) -> list[str]:
        contexts = [request.args[0] for request in requests]
        sources = self.english(contexts)
        outputs: list[str | None] = [None] * len(requests)
        device = next(self.network.parameters()).device
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        for indices in groups.values():
            options = dict(requests[indices[0]].args[1])
            unknown = sorted(set(options) - set(GENERATION_OPTIONS))
            if unknown or options.get("do_sample") or options.get("temperature", 0):
                raise ValueError(
                    f"The flare model generates greedily; unsupported generation options {unknown or options}. "
                    f"Valid: {', '.join(GENERATION_OPTIONS)} (do_sample false, temperature 0)."
                )
            until = options.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            new_tokens = int(options.get("max_gen_toks", 256))
            length = self.max_length - new_tokens
            if length < 1:
                raise ValueError(
                    f"max_gen_toks={new_tokens} leaves no room for a context in max_length={self.max_length}."
                )
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                features = []
                for index in chunk:
                    context = self._fit(self._tokens(contexts[index]), length)
                    source = self._fit(self._tokens(sources[index]), length)
                    features.append(
                        {
                            "input_ids": context,
                            "attention_mask": [1] * len(context),
                            "source_input_ids": source,
                            "source_attention_mask": [1] * len(source),
                        }
                    )
                batch = {key: value.to(device) for key, value in self.collate(features).items()}
                with torch.no_grad():
                    generated = self.network.generate(
                        **batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
                    )
                texts = self.tokenizer.batch_decode(
                    generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
                )
                for index, text in zip(chunk, texts, strict=True):
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    outputs[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
        self.report.requests += len(requests)
        return outputs


def main() -> None:
    """lm-eval's command line with the `flare` model registered: python -m flare_xlt.harness --model flare ..."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
