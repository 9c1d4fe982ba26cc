"""A trained model on new target-language text: `FlarePredictor` and the `flare-xlt predict` command.

FLARE reads, besides the target text, its English translation at prediction time; so does translate-test, and the
ensemble reads both. A predictor rebuilds a finished run's model as `evaluate` does (the same base, stage-1 adapter
and run adapter), translates each input into English where its method reads a translation (with the MT that
translated the run's test set, as the report of `flare-xlt translate` records it, or with one it is given), through
the translation cache, and scores the pairs with the pipeline's `predict`: an input gets the prediction `evaluate`
gives the same example.

This module imports torch and transformers only when a predictor is built, so the command line reads `predict`'s
signature and help without them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .methods import Method
    from .mt.translator import Translator
    from .pipeline.settings import TrainConfig
    from .tasks import TaskSpec

INPUT_FORMATS = ("txt", "jsonl", "csv", "tsv")
# The Translator's generation settings, which an `mt` mapping may set beside its backend's own options.
GENERATION_SETTINGS = ("num_beams", "max_input_length", "max_new_tokens")
# The numeric MT options: the command line gives every value of a mapping option as text.
NUMERIC_MT_OPTIONS = {
    **dict.fromkeys(("num_beams", "max_input_length", "max_new_tokens", "tokens_per_batch", "chunk_size"), int),
    "command_timeout": float,
}
SHOWN_LINES = 5
# NLLB tokens of FLARE-MT's encoder states per input: the default of flare-xlt mt-states, which a store does not record.
STATE_MAX_LENGTH = 256


def default_cache() -> Path:
    """The translation cache of a predictor whose model records no translations folder (a saved adapter)."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "flare-xlt" / "predict_translation_cache.sqlite"


@dataclass
class PredictionCounts:
    """What prediction did to its inputs, summed over calls: nothing is cut, skipped or translated unseen."""

    inputs: int = 0
    cached: int = 0  # distinct texts per call whose English translation came from the cache
    translated: int = 0  # distinct texts per call that the MT translated
    truncated: int = 0  # texts cut to max_length tokens (a target text and its translation count apart)
    empty_lines: list[int] = field(default_factory=list)  # .txt lines skipped because they hold no text

    def summary(self, max_length: int, reads_translation: bool) -> str:
        parts = [f"{self.inputs} inputs"]
        if reads_translation:
            parts.append(f"translations: {self.cached} cached, {self.translated} new")
        parts.append(f"{self.truncated} cut to max_length={max_length} tokens")
        if self.empty_lines:
            shown = ", ".join(str(line) for line in self.empty_lines[:SHOWN_LINES])
            more = ", ..." if len(self.empty_lines) > SHOWN_LINES else ""
            parts.append(f"empty lines skipped: {len(self.empty_lines)} (line {shown}{more})")
        return "predict: " + "; ".join(parts)


class OutputRecorder:
    """Passes the pipeline's `predict` calls through to an encoder and keeps what each scored row gave, by the tokens
    the row read: found again whatever order and batches `predict` scores the features in. A classifier's rows keep
    their class probabilities (the softmax of the logits), an extractive QA model's the start and end logits of their
    tokens. It holds no weights of its own; any other attribute is the model's."""

    def __init__(self, model) -> None:
        self.model = model
        self.outputs: dict[tuple, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (a copy being built): no model to ask
            raise AttributeError(name)
        return getattr(self.model, name)

    def eval(self) -> OutputRecorder:
        self.model.eval()
        return self

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **batch):
        output = self.model(**batch)
        start_logits = getattr(output, "start_logits", None)
        for row in range(batch["input_ids"].shape[0]):
            if start_logits is None:
                kept = output.logits[row].float().softmax(-1).tolist()  # (C,)
            else:
                real = batch["attention_mask"][row].bool()
                kept = (start_logits[row][real].float().tolist(), output.end_logits[row][real].float().tolist())
            self.outputs[_batch_row_key(batch, row)] = kept
        return output

    def of(self, feature: dict) -> Any:
        return self.outputs[_feature_key(feature)]


def _batch_row_key(batch: dict, row: int) -> tuple:
    """The real tokens of one row of a padded batch: its input and, when paired, its English source."""
    key = []
    for ids, mask in (("input_ids", "attention_mask"), ("source_input_ids", "source_attention_mask")):
        if ids in batch:
            key.append(tuple(batch[ids][row][batch[mask][row].bool()].tolist()))
    return tuple(key)


def _feature_key(feature: dict) -> tuple:
    return tuple(tuple(feature[ids]) for ids in ("input_ids", "source_input_ids") if ids in feature)


class FlarePredictor:
    """A trained model as a function of target-language text, in the manner of `transformers.pipeline`:

        predictor = FlarePredictor.from_run("runs/latest-transfer")
        predictor("Filmnya bagus sekali")  # {"id": 1, "label": "positive", "probabilities": {...}, ...}
        predictor([{"premise": "...", "hypothesis": "..."}, ...])  # a task with two text fields: one dict each

    A string is the text of a task with one text field; a dict holds the task's text fields by name (for QA:
    question and context) and may carry an `id`. A list gives a list of rows. `counts` sums what was translated,
    taken from the cache, and cut to max_length over the calls.
    """

    def __init__(
        self,
        model,
        loaded,
        task: TaskSpec,
        method: Method | None,
        language: str,
        train: TrainConfig,
        translator: Translator | None = None,
    ) -> None:
        """`model`: the network a run scores (`finished_runs.run_model`), `loaded` its base's LoadedModel, `method`
        None for a stage-1 run (the target text alone), `train` the scoring settings (max_length, batch size)."""
        self.model, self.loaded, self.task, self.method = model, loaded, task, method
        self.language, self.train, self.translator = language, train, translator
        self.view = method.view if method is not None else "target"
        self.reads_translation = method is not None and method.reads_test_translation
        self.reads_states = method is not None and method.needs_mt_states
        if self.reads_translation and translator is None:
            raise ValueError(f"A {method.name} model reads the English translation of each input: give a translator.")
        if self.reads_states and translator is None:
            raise ValueError(f"A {method.name} model reads NLLB encoder states of each input: give a translator.")
        self.batch_size = train.eval_batch_size or train.batch_size
        self.counts = PredictionCounts()

    # ------------------------------------------------------------------ building one
    @classmethod
    def from_run(
        cls,
        run: str | Path,
        language: str | None = None,
        mt: dict | None = None,
        cache: str | Path | None = None,
        translator: Translator | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        model: str | None = None,
        task: str | None = None,
        stage1: str | Path | None = None,
        progress: bool = False,
    ) -> FlarePredictor:
        """The model of a finished run (a run folder or its adapter/), or of a saved FLARE adapter (then `model`, its
        base, and `task` are required, and `stage1` names the stage-1 run merged into the base first, if any).

        `language`: the inputs' language (default: the run's). `translator` or `mt` (a backend and its options, as
        `flare-xlt translate` takes them: {"backend": "command", "command": "apertium spa-eng"}) translates the
        inputs where the method reads English; default: the MT that translated the run's test set, as the report
        of `flare-xlt translate` in the run's translations folder records it. `cache`: the translation cache
        (default: the one that MT wrote, else translation_cache.sqlite in the run's translations folder).
        `max_length`, `batch_size`: default the run's. `progress`: the MT backend's bars."""
        from .methods import get_method
        from .pipeline.finished_runs import recorded_run, run_model, scoring_settings
        from .pipeline.run_data import load
        from .tasks import get_task

        run_dir, config = recorded_run(Path(run), model, task, Path(stage1) if stage1 is not None else None)
        spec = get_task(task or config["task"])
        method = get_method(config["method"]) if config["stage"] != "finetune" else None
        reads_translation = method is not None and method.reads_test_translation
        if language is None and reads_translation and config.get("language") is None:
            raise ValueError(
                f"{run_dir} records no language and its {method.name} model reads English translations: give the "
                f"language of the inputs; valid choices: {', '.join(spec.languages)}."
            )
        language = language or config.get("language") or spec.source_language
        spec.check_language(language)
        if reads_translation and translator is None:  # MT settings are checked before the model loads
            translator = run_translator(config, spec, language, mt, cache, progress)
        if method is not None and method.needs_mt_states and translator is None:
            translator = state_encoder(config, mt, progress)
        train = scoring_settings(config, max_length, batch_size=batch_size)
        model_name = model or config["model"]
        loaded = load(model_name, spec, config["architecture"], config["load_in_4bit"], train)
        network = run_model(loaded, run_dir, config, model_name, spec)
        return cls(network, loaded, spec, method, language, train, translator)

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | Path,
        base: str,
        task: str,
        stage1: str | Path | None = None,
        translator: Translator | None = None,
        language: str | None = None,
        revision: str | None = None,
        **options: Any,
    ) -> FlarePredictor:
        """A saved FLARE adapter (a folder FlareModel.save_pretrained wrote, or a Hub repository holding one, fetched
        through huggingface_hub's cache) on the base model `base`, for `task`; or a run folder. `options`: those of
        `from_run` (mt, cache, max_length, batch_size, progress)."""
        path = Path(repo_or_dir)
        if not path.exists():
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(repo_or_dir), revision=revision))
        return cls.from_run(
            path, language=language, translator=translator, model=base, task=task, stage1=stage1, **options
        )

    # ------------------------------------------------------------------ predicting
    def __call__(self, inputs: str | dict | list) -> dict | list[dict]:
        """One row for a string or a dict, a list of rows for a list of them (ids default to the position, from 1)."""
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        records = [self.record(item, position) for position, item in enumerate(items, start=1)]
        rows = []
        for start in range(0, len(records), self.batch_size):
            rows += self.predict_records(records[start : start + self.batch_size])
        return rows[0] if single else rows

    def record(self, item: str | dict, position: int) -> dict:
        """An input as a record: the task's text fields and an id (the item's own, else `position`)."""
        fields = self.task.text_fields
        if isinstance(item, str):
            if len(fields) != 1:
                raise ValueError(
                    f"{self.task.name} reads {len(fields)} texts per example ({', '.join(fields)}): give each input "
                    "as a dict of them, not as one string."
                )
            return {"id": position, fields[0]: item}
        if not isinstance(item, dict):
            raise ValueError(
                f"input {position}: expected a string or a dict of {list(fields)}, got {type(item).__name__}."
            )
        missing = [name for name in fields if not isinstance(item.get(name), str)]
        if missing:
            raise ValueError(
                f"input {position}: {', '.join(missing)} missing or not text; {self.task.name} reads {list(fields)}."
            )
        return {"id": item.get("id", position), **{name: item[name] for name in fields}}

    def predict_records(self, records: list[dict]) -> list[dict]:
        """One output row per record (`record`'s form), in order: classification: `label` (None where a generated
        answer names no class) and, for encoders, `probabilities` by label name; QA: `answer`. Every row holds `id`,
        `prediction` and `output` as evaluate's predictions.jsonl has them, and `translation` (the English text the
        model read) where the method reads one."""
        from .pipeline.predict import predict
        from .tasks import TaskEncoder

        if not records:
            return []
        pairs = self._pairs(records)
        encoder = TaskEncoder(
            self.task,
            self.loaded.tokenizer,
            self.loaded.architecture,
            self.view,
            self.train.max_length,
            for_generation=True,
        )
        features, report, windows = encoder.encode(pairs)
        self.counts.inputs += len(records)
        self.counts.truncated += report.truncated
        encoder_model = self.loaded.architecture == "encoder"
        model = OutputRecorder(self.model) if encoder_model else self.model
        predictions, outputs = predict(
            model,
            self.loaded.tokenizer,
            self.task,
            self.loaded.architecture,
            pairs,
            self.view,
            self.train.max_length,
            self.batch_size,
            source_embeds=self._encoder_states(encoder, pairs) if self.reads_states else None,
            progress=False,
        )
        spans = self._answer_spans(model, pairs, features, windows) if windows is not None else None
        rows = []
        for index, (pair, prediction, output) in enumerate(zip(pairs, predictions, outputs, strict=True)):
            row: dict[str, Any] = {"id": records[index]["id"]}
            if self.task.kind == "classification":
                row["label"] = self.task.label_names[prediction] if prediction is not None else None
                if encoder_model:
                    row["probabilities"] = dict(zip(self.task.label_names, model.of(features[index]), strict=True))
            else:
                row["answer"] = prediction
                if spans is not None:  # the answer's characters [start, end) in the context, start + end logit
                    span = spans[index]
                    row["span"] = [span.start, span.end] if span is not None else None
                    row["score"] = span.score if span is not None else None
            row.update(prediction=prediction, output=output)
            if self.reads_translation:
                row["translation"] = {name: pair[f"source_{name}"] for name in self.task.text_fields}
            rows.append(row)
        return rows

    @staticmethod
    def _answer_spans(recorder: OutputRecorder, pairs: list[dict], features: list[dict], windows) -> list:
        """Encoder QA: each example's best span over its windows, from the logits `predict` computed, as `predict`
        picks its answer."""
        from .qa import best_answer_spans

        logits = [recorder.of(feature) for feature in features]
        contexts = [pair["context"] for pair in pairs]
        return best_answer_spans(contexts, windows, [row[0] for row in logits], [row[1] for row in logits])

    def _encoder_states(self, encoder, pairs: list[dict]):
        """FLARE-MT: `source_embeds(keys)` over the NLLB encoder states of the text each feature reads, computed as
        `flare-xlt mt-states` computes them and kept in float16 as its store keeps them."""
        import torch

        from .mt.languages import nllb_code
        from .mt.states import encoder_states, padded_states

        keyed = encoder.state_texts(pairs)
        states = encoder_states(
            self.translator.model,
            self.translator.tokenizer,
            [text for _, text in keyed],
            nllb_code(self.language),
            STATE_MAX_LENGTH,
            self.batch_size,
        )
        by_key = {key: state.to(torch.float16) for (key, _), state in zip(keyed, states, strict=True)}
        width = self.translator.model.config.d_model
        return lambda keys: padded_states([by_key[key] for key in keys], width)

    def _pairs(self, records: list[dict]) -> list[dict]:
        """The records as the pipeline's pairs: the target fields, and as source_<field> their English translation
        (or the text itself where the method reads none). The label is a placeholder that `predict` drops."""
        fields = self.task.text_fields
        texts = [record[name] for record in records for name in fields]
        english = texts
        if self.reads_translation:
            english, report = self.translator.translate(texts, self.language, self.task.source_language)
            self.counts.cached += report.cached
            self.counts.translated += report.translated
        sources = iter(english)
        pairs = []
        for position, record in enumerate(records):
            # Ids by position: unique within the batch, as FLARE-MT's state keys must be (an input's own id may not).
            pair = {"id": str(position), "language": self.language, **{name: record[name] for name in fields}}
            pair.update({f"source_{name}": next(sources) for name in fields})
            pair.update(label=0, answers=None, source_answers=None)
            pairs.append(pair)
        return pairs


# ---------------------------------------------------------------------- the run's MT
def state_encoder(config: dict, mt: dict | None, progress: bool) -> Translator:
    """FLARE-MT: the NLLB model whose encoder states the run read (recorded in its test state store), or `mt`'s."""
    from .mt.states import EncoderStateStore

    if mt is None:
        if config.get("mt_states") is None:
            raise ValueError("This flare-mt model records no state store: give the NLLB model, --mt.model NAME.")
        mt = {"model": EncoderStateStore(Path(config["mt_states"]) / "test").metadata["model"]}
    return translator_from_options({"backend": "transformers", **mt}, None, progress)


def run_translator(
    config: dict, task: TaskSpec, language: str, mt: dict | None, cache: str | Path | None, progress: bool
) -> Translator:
    """The translator of a run's inputs: `mt` if given, else the MT recorded for the run's test set."""
    translations = config.get("translations")
    recorded = recorded_mt(Path(translations), task, language) if translations is not None else None
    if mt is None and recorded is None:
        where = f"{translations} holds no report of" if translations is not None else "this model records no"
        raise ValueError(
            f"{where} the MT that translated {task.name}'s {language} test set into {task.source_language} (reports "
            "from flare-xlt translate record it): give the MT, e.g. --mt.backend command --mt.command 'apertium "
            "spa-eng', or --mt.backend transformers --mt.model facebook/nllb-200-distilled-600M."
        )
    options = mt if mt is not None else {name: value for name, value in recorded.items() if name != "cache"}
    if cache is None:
        cache = (recorded or {}).get("cache")
    if cache is None:
        cache = Path(translations) / "translation_cache.sqlite" if translations is not None else default_cache()
    return translator_from_options(options, cache, progress)


def recorded_mt(translations: Path, task: TaskSpec, language: str) -> dict | None:
    """The MT settings in the newest report of `flare-xlt translate` that translated `task`'s test split from
    `language` into its source language in the folder `translations`, or None."""
    pattern = f"{task.name}_report_*_{language}-{task.source_language}.json"
    for path in sorted(translations.glob(pattern), key=lambda report: report.stat().st_mtime, reverse=True):
        report = json.loads(path.read_text(encoding="utf-8"))
        if "test" in report.get("splits", {}) and "mt" in report:
            return report["mt"]
    return None


def translator_from_options(options: dict, cache: str | Path | None, progress: bool = False) -> Translator:
    """A Translator from an MT mapping: `backend` (default transformers), the backend's own options and the
    generation settings; an option the backend does not read is refused with those it does."""
    from .mt.backends import backend_type
    from .mt.translator import GenerationSettings, Translator

    options = {name: _typed(name, value) for name, value in options.items()}
    backend = backend_type(options.pop("backend", "transformers"))
    generation = {name: options.pop(name) for name in GENERATION_SETTINGS if name in options}
    unknown = sorted(set(options) - set(backend.options))
    if unknown:
        raise ValueError(
            f"mt: {', '.join(unknown)} {'is not an option' if len(unknown) == 1 else 'are not options'} of the "
            f"{backend.name} backend; its options: {', '.join((*backend.options, *GENERATION_SETTINGS))}."
        )
    return Translator(
        settings=GenerationSettings(**generation), cache=cache, progress=progress, backend=backend.name, **options
    )


def _typed(name: str, value: Any) -> Any:
    number = NUMERIC_MT_OPTIONS.get(name)
    if number is None or not isinstance(value, str):
        return value
    try:
        return number(value)
    except ValueError:
        raise ValueError(f"mt.{name} expects {'an integer' if number is int else 'a number'}, got {value!r}.") from None


# ---------------------------------------------------------------------- input files and streams
def format_of(input: Path | None, given: str | None) -> str:
    """The format of an input: as given, else from the file's suffix; stdin is txt unless given."""
    if given is not None:
        if given not in INPUT_FORMATS:
            raise ValueError(f"Unknown input format {given!r}; valid choices: {', '.join(INPUT_FORMATS)}.")
        return given
    if input is None or str(input) == "-":
        return "txt"
    suffix = input.suffix.lstrip(".")
    if suffix not in INPUT_FORMATS:
        raise ValueError(
            f"{input}: cannot tell the format from the suffix {input.suffix!r}; give --input_format, valid "
            f"choices: {', '.join(INPUT_FORMATS)}."
        )
    return suffix


def read_inputs(stream: TextIO, fmt: str, task: TaskSpec, name: str, counts: PredictionCounts) -> Iterator[dict]:
    """Records (an id and the task's text fields) from a stream, read as they arrive.

    txt: one text per line, the line number its id; a line holding only whitespace is skipped and counted. jsonl:
    one object per line with the task's text fields (and an optional id; default: the line number); a line break
    inside a field stays in the text. csv/tsv: a header row, then the same fields as columns."""
    fields = task.text_fields
    if fmt == "txt":
        if len(fields) != 1:
            raise ValueError(
                f"{name}: a txt input holds one text per line, but {task.name} reads {len(fields)} texts per example "
                f"({', '.join(fields)}): give jsonl or csv with those fields."
            )
        for line, text in enumerate(stream, start=1):
            text = text.removesuffix("\n").removesuffix("\r")
            if not text.strip():
                counts.empty_lines.append(line)
                continue
            yield {"id": line, fields[0]: text}
        return
    from .tasks import read_stream_rows

    for line, row in read_stream_rows(stream, fmt, name):
        missing = [field_name for field_name in fields if not isinstance(row.get(field_name), str)]
        if missing:
            raise ValueError(
                f"{name} line {line}: {', '.join(missing)} missing or not text; {task.name} reads the fields "
                f"{', '.join(fields)} (and an optional id); present: {', '.join(sorted(row))}."
            )
        yield {"id": row.get("id", line), **{field_name: row[field_name] for field_name in fields}}


def _chunks(records: Iterator[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def stream_predictions(predictor: FlarePredictor, source: TextIO, fmt: str, name: str, sink: TextIO) -> None:
    """Read, translate, predict and write a batch of inputs at a time, flushing after each: a pipe sees every row
    as soon as its batch is scored. A bar on a terminal counts the inputs."""
    from tqdm.auto import tqdm

    records = read_inputs(source, fmt, predictor.task, name, predictor.counts)
    with tqdm(desc=f"predict {predictor.task.name}", unit="text", disable=None, file=sys.stderr) as bar:
        for chunk in _chunks(records, predictor.batch_size):
            for row in predictor.predict_records(chunk):
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(len(chunk))


def predict(
    run: Path,
    input: Path | None = None,
    output: Path | None = None,
    input_format: str | None = None,
    language: str | None = None,
    mt: dict | None = None,
    cache: Path | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    model: str | None = None,
    task: str | None = None,
    stage1: Path | None = None,
) -> None:
    """Predict on new target-language text with a finished run's model (or a saved FLARE adapter): JSON lines.

    Each input is translated into English where the run's method reads a translation (translate-test, input-fusion,
    x-mixup, ensemble, flare), through the translation cache, or encoded by NLLB for flare-mt, and scored as evaluate
    scores a test example. Rows
    are written a batch at a time: `cat new.txt | flare-xlt predict --run runs/latest-transfer > out.jsonl` streams.
    The last line on stderr counts the inputs, the translations taken from the cache and made anew, the texts cut
    to max_length and the empty lines skipped.

    Args:
        run: A run folder that flare-xlt finetune or transfer wrote (or its adapter/), or a folder that
            FlareModel.save_pretrained wrote (then give --model and --task, and --stage1 if it was trained on one).
        input: A file of inputs: .txt (one text per line; empty lines are skipped and counted), .jsonl (one object
            per line with the task's text fields, e.g. text, premise and hypothesis, question and context, and an
            optional id), .csv or .tsv (a header row, the same fields as columns). Default: stdin, as txt unless
            --input_format says otherwise.
        output: A file for the JSON lines, written whole or not at all (a failure leaves none). Default: stdout.
        input_format: txt, jsonl, csv or tsv; default: from the --input suffix (txt for stdin).
        language: The inputs' language; default: the run's.
        mt: The MT that translates the inputs, as `flare-xlt translate` takes it: --mt.backend command --mt.command
            'apertium spa-eng', or --mt.backend transformers --mt.model NAME (and --mt.num_beams, ...). Default: the
            MT that translated the run's test set, as recorded in the report flare-xlt translate wrote beside it.
            For flare-mt: --mt.model names the NLLB model of the encoder states (default: the run's).
        cache: The SQLite translation cache, read and extended; default: the cache that MT wrote (for a saved
            adapter: ~/.cache/flare-xlt/predict_translation_cache.sqlite).
        batch_size: Inputs per batch, read, translated, scored and written together; default: the run's.
        max_length: Tokens per input; longer inputs are cut as evaluate cuts them, and counted. Default: the run's.
        model: The base model; default: the run's. Required for a saved adapter.
        task: A built-in task or a task spec file; default: the run's. Required for a saved adapter.
        stage1: A saved adapter: the stage-1 run folder whose adapter is merged into the base first, if any.
    """
    from .io import replace_atomically

    fmt = format_of(input, input_format)
    if output is not None and output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name for the JSON lines.")
    if input is not None and str(input) != "-" and not input.is_file():
        raise FileNotFoundError(f"--input {input} not found.")
    predictor = FlarePredictor.from_run(
        run, language, mt, cache, max_length=max_length, batch_size=batch_size, model=model, task=task, stage1=stage1
    )
    name = "stdin" if input is None or str(input) == "-" else str(input)

    def write(sink: TextIO) -> None:
        if name == "stdin":
            stream_predictions(predictor, sys.stdin, fmt, name, sink)
        else:
            with open(input, encoding="utf-8", newline="" if fmt in ("csv", "tsv") else None) as source:
                stream_predictions(predictor, source, fmt, name, sink)

    if output is None:
        write(sys.stdout)
    else:

        def fill(temporary: str) -> None:
            with open(temporary, "w", encoding="utf-8") as sink:
                write(sink)

        replace_atomically(output, fill)
    print(predictor.counts.summary(predictor.train.max_length, predictor.reads_translation), file=sys.stderr)
