"""The flare-xlt command line: typed function signatures are the CLI (jsonargparse), YAML configs via --config."""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import difflib
import functools
import importlib.util
import inspect
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonargparse import CLI, ArgumentParser

from . import __version__
from .mt.languages import DEFAULT_MT_MODEL
from .pipeline import settings

# The commands import torch, transformers and peft (through the modules named in their bodies) only when they run:
# --help, --version and a wrong option answer without loading them.


def lazy_command(module: str, name: str, namespace: dict[str, Any]) -> Callable:
    """The function `name` of `module` as a command that imports its module when it runs.

    jsonargparse builds the options and their help from a function's signature and docstring; here they are read
    from the module's source without running it, and the annotations and defaults are evaluated in `namespace` (the
    light types and default values they name). tests/test_cli_ux.py checks that the result is the real signature.
    """
    source, tree = _parsed(module)
    definition = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)

    def evaluate(node: ast.expr) -> Any:
        return eval(compile(ast.Expression(node), str(source), "eval"), dict(namespace))

    arguments = definition.args.args
    defaults = [inspect.Parameter.empty] * (len(arguments) - len(definition.args.defaults))
    defaults += [evaluate(default) for default in definition.args.defaults]
    parameters = [
        inspect.Parameter(
            argument.arg,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=default,
            annotation=evaluate(argument.annotation),
        )
        for argument, default in zip(arguments, defaults, strict=True)
    ]

    def command(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    command.__name__ = command.__qualname__ = name
    command.__doc__ = ast.get_docstring(definition)
    command.__signature__ = inspect.Signature(parameters, return_annotation=evaluate(definition.returns))
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    command.__annotations__["return"] = command.__signature__.return_annotation
    return command


@functools.cache
def _parsed(module: str) -> tuple[Path, ast.Module]:
    """A module's source file and syntax tree, parsed once for all its commands."""
    source = Path(importlib.util.find_spec(module).origin)
    return source, ast.parse(source.read_text(encoding="utf-8"))


# What the signatures of the pipeline's commands name: their settings dataclasses and defaults, and Path.
PIPELINE_NAMES = {"Path": Path, **vars(settings)}


def translate(
    tgt: str,
    src: str = "en",
    task: str | None = None,
    fields: list[str] | None = None,
    splits: list[str] | None = None,
    input: Path | None = None,
    data: str = "hub",
    output: Path = Path("translations"),
    backend: str = "transformers",
    model: str = DEFAULT_MT_MODEL,
    languages: str = "auto",
    converted: Path | None = None,
    command: str | None = None,
    command_timeout: float = 600.0,
    chunk_size: int = 1000,
    num_beams: int = 4,
    max_input_length: int = 256,
    max_new_tokens: int = 256,
    tokens_per_batch: int = 8192,
    cache: Path | None = None,
    dtype: str = "auto",
    device: str = "auto",
    dataset_translation: bool = False,
) -> None:
    """Machine-translate a task's splits or a record file (translate-train and translate-test data).

    Re-running the same command resumes from the cache. Under torchrun or accelerate launch, the processes share the
    distinct texts and one of them writes the output.

    Args:
        tgt: Target language (task code such as sw, or the backend's own code such as swh_Latn or <2sw>).
        src: Source language of the data.
        task: A built-in task (xnli, tydiqa, nusax) or a task spec file (.yaml/.json).
        fields: Instead of a task: the fields of an --input file to translate (any JSONL/JSON/CSV/TSV).
        splits: Split roles to translate (train, validation, test). Default: train and validation.
        input: A file to translate instead of task splits: task records (with --task) or any rows (with --fields).
        data: Where task splits come from: "hub", or a folder with the original release files.
        output: Folder for the translated JSONL files and the report (a file path when --input is given).
        backend: transformers (model.generate), ctranslate2 (a converted model, see convert-mt) or command (any
            program translating stdin to stdout line by line, see --command).
        model: NLLB-200 or MADLAD-400 checkpoint name or local path; with ctranslate2 also a folder made by
            convert-mt. Unused by the command backend.
        languages: How the model is told the languages: auto (from its tokenizer), nllb or madlad.
        converted: ctranslate2 with a checkpoint as --model: the folder it is converted into once and reused
            (default: under ~/.cache/flare-xlt/ctranslate2).
        command: The MT program of the command backend, e.g. 'apertium spa-eng'; run without a shell.
        command_timeout: Seconds the command may take per chunk before it is killed.
        chunk_size: Texts per command call; every finished chunk is cached, so a failure loses one chunk at most.
        num_beams: Beam size.
        max_input_length: Input tokens kept per text; longer texts are cut and counted.
        max_new_tokens: Most tokens generated per text.
        tokens_per_batch: Token budget of a batch (texts are batched in length order).
        cache: SQLite translation cache; default: <output folder>/translation_cache.sqlite.
        dtype: transformers: auto, float32, float16 or bfloat16. ctranslate2: auto (as converted), int8,
            int8_float32, int8_float16, int8_bfloat16, int16, float16, bfloat16 or float32.
        device: auto, cpu, cuda, cuda:1, ...
        dataset_translation: XNLI only: take the train split the dataset ships machine-translated into --tgt
            instead of translating it; the other --splits are translated.
    """
    from .mt.backends import backend_type
    from .mt.data import translate_fields, translate_record_file, translate_task, write_dataset_translation
    from .mt.sharding import Shards
    from .mt.translator import GenerationSettings, Translator
    from .tasks import get_task

    if (task is None) == (fields is None):
        raise ValueError("Give exactly one of --task (a task's splits or records) or --fields (fields of any --input).")
    if fields is not None and input is None:
        raise ValueError("--fields translates the fields of an --input file; give --input.")
    task_spec = None
    if task is not None:
        task_spec = get_task(task)
        task_spec.check_language(src)
        task_spec.check_language(tgt)
    backend_type(backend).check_languages(src, tgt, languages)  # unknown codes fail here, before a model loads
    splits = splits or ["train", "validation"]
    if dataset_translation and (task_spec is None or input is not None or "train" not in splits):
        raise ValueError("--dataset_translation replaces the translation of a task's train split: give --task xnli.")
    if dataset_translation and data != "hub" and splits != ["train"]:
        raise ValueError(
            "--dataset_translation with --data reads the XNLI-MT-1.0 folder, which holds only train: give "
            "--splits '[train]' and translate the other splits from the XNLI-1.0 folder in a second call."
        )
    if dataset_translation:
        print(json.dumps(write_dataset_translation(task_spec, src, tgt, output, data), indent=2, ensure_ascii=False))
        splits = [split for split in splits if split != "train"]
        if not splits:
            return
    folder = output.parent if input is not None else output
    shards = Shards.from_environment()
    try:
        translator = Translator(
            model,
            GenerationSettings(num_beams, max_input_length, max_new_tokens),
            tokens_per_batch=tokens_per_batch,
            cache=cache or folder / "translation_cache.sqlite",
            device=device,
            dtype=dtype,
            progress=shards.main,
            backend=backend,
            languages=languages,
            converted=converted,
            command=command,
            command_timeout=command_timeout,
            chunk_size=chunk_size,
            shards=shards,
        )
        if task_spec is None:
            report = translate_fields(input, fields, src, tgt, translator, output)
        elif input is not None:
            report = translate_record_file(task_spec, input, src, tgt, translator, output)
        else:
            report = translate_task(task_spec, splits, src, tgt, translator, output, data)
    finally:
        shards.close()
    if shards.main:
        print(json.dumps(_summary(report), indent=2, ensure_ascii=False))


def convert_mt(model: str, output: Path, quantization: str | None = None) -> None:
    """Convert an NLLB-200 or MADLAD-400 checkpoint once for `translate --backend ctranslate2`.

    Writes the CTranslate2 model and the tokenizer into one folder, which --model then names.

    Args:
        model: Checkpoint name or local folder.
        output: The folder to create.
        quantization: Store the weights as int8, int8_float32, int8_float16, int8_bfloat16, int16, float16, bfloat16
            or float32 (default: as the checkpoint). Any compute type can still be chosen with --dtype.
    """
    from .mt.backends import convert_to_ctranslate2

    print(convert_to_ctranslate2(model, output, quantization))


def _summary(report: dict) -> dict:
    return {key: value for key, value in report.items() if key != "translation"} | {
        "translation": report["translation"]["summary"]
    }


def mt_states(
    input: Path,
    language: str,
    output: Path,
    task: str | None = None,
    reader: str | None = None,
    reader_architecture: str = "auto",
    reader_max_length: int = 256,
    template: str | None = None,
    model: str = DEFAULT_MT_MODEL,
    max_length: int = 256,
    batch_size: int = 32,
    shard_size: int = 1024,
    dtype: str = "auto",
    device: str = "auto",
) -> None:
    """Write the NLLB encoder states of target-language records that FLARE-MT reads (float16 safetensors shards).

    Args:
        input: Records (JSONL/JSON/CSV/TSV) with an id column, in `language`.
        language: The records' language (task code or NLLB code); the text is tagged with its own NLLB code.
        output: Folder of the state store (index.json + shards); FlareModel reads it as source_embeds.
        task: Encode the text a model reads for this task (with --reader): its prompt for decoders, its input for
            encoders, each window's question and context slice for encoder QA. What `flare-xlt transfer` needs.
        reader: With --task: the model (name or folder) that will read the states; its tokenizer decides windows.
        reader_architecture: With --reader: auto, encoder, decoder or seq2seq.
        reader_max_length: With --reader: the --train.max_length of the runs that read the states.
        template: Or a Python format string over the record's fields, e.g. "{premise} {hypothesis}", one state per
            record (for use outside the pipeline).
        model: NLLB checkpoint name or local path.
        max_length: NLLB tokens kept per text; longer texts are cut and counted.
        batch_size: Texts per encoder batch.
        shard_size: Records per safetensors shard.
        dtype: auto, float32, float16 or bfloat16.
        device: auto, cpu, cuda, ...
    """
    from .mt.data import template_texts, write_encoder_states
    from .mt.translator import Translator
    from .pipeline.loading import load_state_reader
    from .tasks import get_task, read_rows

    if (task is None) == (template is None):
        raise ValueError("Give exactly one of --task (with --reader) or --template.")
    if task is not None and reader is None:
        raise ValueError(
            "--task needs --reader, the model that will read the states: FLARE-MT states must cover the text it "
            "reads (a decoder's prompt, an encoder's QA windows)."
        )
    records = [row for _, row in read_rows(input)]
    metadata = {}
    if task is not None:
        state_reader = load_state_reader(reader, get_task(task), reader_architecture, reader_max_length)
        keyed_texts = state_reader.state_texts(records)
        metadata["reader"] = state_reader.state_signature()
    else:
        keyed_texts = template_texts(records, template)
        metadata["template"] = template
    translator = Translator(model, device=device, dtype=dtype)
    store = write_encoder_states(
        keyed_texts, language, output, translator, max_length, batch_size, shard_size, metadata=metadata
    )
    print(json.dumps({"records": len(records), "states": len(store), "d_model": store.d_model, "output": str(output)}))


def run(recipe: Path, set: dict[str, Any] | None = None, dry_run: bool = False) -> None:
    """Run a recipe's whole grid of languages, methods and seeds, then write the report and print its tables.

    Prints the plan first (what exists, what is to make); translations and FLARE-MT states are made where missing,
    then stage 1 and every transfer run per seed, each announced with its place in the grid and the time left.
    Finished runs are skipped.

    Args:
        recipe: A recipe YAML file (see configs/).
        set: Recipe values to override, by name: --set.seeds '[1]' --set.train.epochs 1 --set.languages '[id, sw]'.
        dry_run: Print the plan, one line per step, and stop.
    """
    from .pipeline.plans import describe_plan
    from .pipeline.recipe_file import load_recipe
    from .pipeline.recipes import run_recipe, step_status
    from .report import write_report

    recipe_settings = load_recipe(recipe, set)
    if dry_run:
        print(describe_plan(step_status(recipe_settings), every_step=True))
        return
    run_recipe(recipe_settings)
    for path in write_report(recipe_settings.output):
        print(f"wrote {path}")
        if path.suffix == ".md":
            print(path.read_text(encoding="utf-8"))


def report(directory: Path, output: Path | None = None, baseline: str = "lora") -> None:
    """Write paper-style tables and figures per task from the finished runs below a folder.

    Markdown, CSV, per-seed CSV and LaTeX tables, and a figure as PNG and PDF.

    Args:
        directory: Folder searched recursively for metrics.json.
        output: Folder for the report files (default: `directory`).
        baseline: The method every other is compared with (differences with paired 95% intervals).
    """
    from .report import write_report

    for path in write_report(directory, output, baseline=baseline):
        print(f"wrote {path}")


def demo(
    output: Path = Path("demo"),
    model_type: str = "decoder",
    target_resource: float = 0.05,
    mt_error_rate: float = 0.1,
    mt_error_rate_train: float | None = None,
    mt_error_rate_test: float | None = None,
    flare_mt: bool = True,
    seeds: list[int] | None = None,
    variants: Path | None = None,
    sweep: str | None = None,
    workers: int | None = None,
    size: str = "full",
) -> None:
    """Run the embedded benchmark on a CPU and print its table.

    A synthetic English/Tolan world, a tiny model pretrained on it from scratch, and every transfer method over 3
    seeds. Pretrained models, data and finished runs under `output` are reused, so a second run only adds what is
    missing.

    Args:
        output: Folder of the cached pretrained models, the world's data, the runs and the report.
        model_type: decoder (a tiny Llama) or encoder (a tiny XLM-R).
        target_resource: Tolan pretraining text per English sentence (0.05: one Tolan sentence per 20 English).
        mt_error_rate: Share of words the simulated MT drops or replaces, in both directions.
        mt_error_rate_train: The English -> Tolan rate alone (translate-train data, what LoRA and FLARE learn from).
        mt_error_rate_test: The Tolan -> English rate alone (what translate-test and FLARE read at test time).
        flare_mt: Also run FLARE-MT, with a pretrained tiny encoder standing in for the NLLB encoder.
        seeds: Seeds of every stage-1 and transfer run (default 1 2 3).
        variants: A YAML file of named method variants to run as well, each its own row, as a recipe's `variants`
            (e.g. configs/variants/ablation-pairing.yaml: FLARE with every pairing and unpaired setting).
        sweep: Run every method at several values of one setting, e.g. mt_error_rate_test=0,0.1,0.2,0.3
            (mt_error_rate, mt_error_rate_train, mt_error_rate_test or target_resource); writes a table and a plot
            of the score against the value.
        workers: Runs trained side by side, each in a process of its own with an equal share of the CPU threads
            (default: one per CPU core, at most 4; 1 on a GPU). The results do not depend on it.
        size: full (the measured benchmark, about 4 minutes on 2 cores) or tiny (the same kind of table in well
            under a minute, from a much smaller world and training: to try the command, not to compare methods).
    """
    from .demo.experiment import DemoConfig, demo_sizes, run_demo
    from .demo.sweep import parse_sweep, run_sweep
    from .pipeline.recipe_file import load_variants

    config = DemoConfig(
        output,
        model_type,
        target_resource,
        mt_error_rate,
        flare_mt,
        tuple(seeds or (1, 2, 3)),
        variants=load_variants(variants) if variants is not None else {},
        mt_error_rate_train=mt_error_rate_train,
        mt_error_rate_test=mt_error_rate_test,
        workers=workers,
        sizes=demo_sizes(size),
    )
    if sweep is not None:
        print(run_sweep(config, *parse_sweep(sweep)))
    else:
        print(run_demo(config))


def tasks() -> None:
    """List the built-in tasks: each task's kind, headline metric, languages and where its data comes from."""
    from .tasks.sources import DATA_SOURCES
    from .tasks.spec import TASKS

    for task in TASKS.values():
        print(f"{task.name}: {task.kind}, metric {task.metric}, source language {task.source_language}")
        print(f"  languages: {' '.join(task.languages)}")
        print(f"  data: {DATA_SOURCES[task.name]}")
    print("A custom task is a .yaml or .json spec file given as --task (docs/tasks.md, section 2).")


COMMANDS = {
    "translate": translate,
    "convert-mt": convert_mt,
    "mt-states": mt_states,
    "finetune": lazy_command("flare_xlt.pipeline.runs", "finetune", PIPELINE_NAMES),
    "transfer": lazy_command("flare_xlt.pipeline.runs", "transfer", PIPELINE_NAMES),
    "evaluate": lazy_command("flare_xlt.pipeline.finished_runs", "evaluate", PIPELINE_NAMES),
    "predict": lazy_command("flare_xlt.predictor", "predict", PIPELINE_NAMES),
    "run": run,
    "report": report,
    "demo": demo,
    "tasks": tasks,
}
# Errors a user can fix from the message (bad settings, missing files, models or packages): one line, exit 2.
USER_ERRORS = (ValueError, OSError)
# Also user errors: those of a diverging run and of a failing MT command. Their modules import torch, so they are
# looked up only where a command has loaded them (an error of a module never loaded cannot have been raised).
LOADED_USER_ERRORS = {
    "flare_xlt.pipeline.checkpoints": "NonFiniteTrainingError",
    "flare_xlt.mt.backends": "CommandTranslationError",
}
# Hugging Face Trainer and example-script names of options that are spelled otherwise here.
HF_OPTION_NAMES = {
    "output_dir": "output",
    "model_name_or_path": "model",
    "num_train_epochs": "train.epochs",
    "per_device_train_batch_size": "train.batch_size",
    "per_device_eval_batch_size": "train.eval_batch_size",
}
# An option's type in the words of a type error: "--train.epochs expects a number, got 'abc'".
TYPE_WORDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path",
    dict: "a mapping",
    type(None): "null",
}
# The flags of --print_config, which jsonargparse takes only after '=' (--print_config=skip_default).
PRINT_CONFIG_FLAGS = ("comments", "skip_default", "skip_null")


class FlareParser(ArgumentParser):
    """Boolean options also work as bare flags (--train.bf16), and a wrong command line is one line on stderr with
    exit code 2 that says what was meant: the option it most likely misspells, the type an option expects, the option
    that is missing. The usage is printed by --help only."""

    def format_help(self) -> str:
        # jsonargparse prints the type of a pathlib.Path option as <class 'Path'> (wrapped onto two lines where the
        # help is long), and Path | null otherwise; the help says path. The text is rewritten because the formatter's
        # type method is internal to jsonargparse.
        return re.sub(r"type:\s+[^,)]*", _lowercase_path, super().format_help())

    def add_argument(self, *args, **kwargs):
        if kwargs.get("type") is bool:
            kwargs.update(nargs="?", const=True)
        return super().add_argument(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse trying one way of parsing a value: it catches the error itself
            return super().error(message, ex)
        print(f"error: {_explain(message, self)}", file=sys.stderr)
        raise SystemExit(2)


def _explain(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's error message as one line that leads with what to type instead."""
    command = _COMMAND.get()
    see = f"flare-xlt {command} --help lists every option." if command else "flare-xlt --help lists the commands."
    if typed := re.match(r'Parser key "([\w.]+)":(.*)', message, flags=re.DOTALL):
        action = parser._option_string_actions.get(f"--{typed[1]}")
        value = re.findall(r"(?:Got value|Given value): (.*)", message)
        if action is not None and getattr(action, "_typehint", None) is not None and value:
            return f"--{typed[1]} expects {_type_words(action._typehint)}, got {value[-1]!r}."
        return f"--{typed[1]}: {_one_line(typed[2])}"
    if required := re.match(r"the following arguments are required: (.*)", message):
        names = [f"--{name.strip().partition('.')[2] or name.strip()}" for name in required[1].split(",")]
        return f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} required. {see}"
    if choice := re.match(r"argument subcommand: invalid choice: '([^']*)'", message):
        close = difflib.get_close_matches(choice[1], COMMANDS, n=1)
        meant = f"did you mean {close[0]}? " if close else ""
        return f"unknown command {choice[1]!r}: {meant}Commands: {', '.join(COMMANDS)}."
    if message.startswith("unrecognized arguments:"):
        known = _option_names(COMMANDS.get(command))
        unknown = re.findall(r"--([\w.]+)", message)
        if unknown:
            return " ".join(_hint(name, known) for name in unknown) + f" {see}"
    return _one_line(message)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _type_words(hint: Any) -> str:
    """A type annotation in words: int | None -> 'an integer or null'."""
    if hint in TYPE_WORDS:
        return TYPE_WORDS[hint]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_words(argument) for argument in typing.get_args(hint))
    if origin in (list, tuple):
        return "a list such as [a, b]"
    if origin is dict:
        return TYPE_WORDS[dict]
    return getattr(hint, "__name__", str(hint))


def _lowercase_path(type_text: re.Match) -> str:
    return re.sub(r"<class\s+'Path'>|Path", "path", type_text[0])


# The subcommand on the command line that main is parsing, whose options the did-you-mean hints search.
_COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("command", default=None)


def _option_names(command: Callable | None) -> list[str]:
    """The options of a subcommand, from its signature as jsonargparse turns it into options (a parameter's name, and
    section.field for each field of a dataclass parameter), or those of flare-xlt itself."""
    if command is None:
        return ["help", "version", "config", "print_config"]
    annotations = typing.get_type_hints(command)
    names = ["help", "config", "print_config"]
    for name in inspect.signature(command).parameters:
        names.append(name)
        if dataclasses.is_dataclass(annotations.get(name)):
            names += [f"{name}.{field.name}" for field in dataclasses.fields(annotations[name])]
    return names


def _hint(name: str, known: list[str]) -> str:
    """For an unknown option: the one it most likely meant (its Hugging Face equivalent, or the closest spelling of
    its last part: learning_rate and lerning_rate both mean train.learning_rate), else the valid names of its
    section."""
    if HF_OPTION_NAMES.get(name) in known:
        return f"--{name}: did you mean --{HF_OPTION_NAMES[name]}?"
    section, _, leaf = name.rpartition(".")
    leaves = [option.rpartition(".")[2] for option in known]
    for close in difflib.get_close_matches(leaf, leaves, n=1, cutoff=0.8):
        return f"--{name}: did you mean --{known[leaves.index(close)]}?"
    valid = [option.rpartition(".")[2] for option in known if option.startswith(f"{section}.") and section]
    return f"--{name}: valid {section} settings: {', '.join(valid)}." if valid else f"--{name}: no such option."


def _join_print_config(arguments: list[str]) -> list[str]:
    """--print_config skip_default as jsonargparse takes it, --print_config=skip_default."""
    joined: list[str] = []
    for argument in arguments:
        if joined and joined[-1] == "--print_config" and set(argument.split(",")) <= set(PRINT_CONFIG_FLAGS):
            joined[-1] = f"--print_config={argument}"
        else:
            joined.append(argument)
    return joined


def _is_user_error(error: Exception) -> bool:
    loaded = [
        getattr(sys.modules[module], name) for module, name in LOADED_USER_ERRORS.items() if module in sys.modules
    ]
    return isinstance(error, (*USER_ERRORS, *loaded))


def main(argv: list[str] | None = None) -> None:
    """The flare-xlt command. A user error prints one line and exits with code 2, Ctrl-C one line and 130;
    --debug (anywhere on the line) or FLARE_XLT_DEBUG=1 shows the traceback instead."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in arguments or os.environ.get("FLARE_XLT_DEBUG", "0") not in ("", "0")
    arguments = _join_print_config([argument for argument in arguments if argument != "--debug"])
    _COMMAND.set(next((argument for argument in arguments if argument in COMMANDS), None))
    try:
        result = CLI(
            COMMANDS,
            args=arguments,
            as_positional=False,
            parser_class=FlareParser,
            version=__version__,
            description="FLARE cross-lingual transfer: translate, fine-tune, transfer, evaluate, predict and report. "
            "--debug (or FLARE_XLT_DEBUG=1) shows tracebacks.",
        )
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        print(
            str(interrupt)
            or "interrupted; run the same command to continue: finished runs, translations and checkpoints are kept",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except Exception as error:
        if debug or not _is_user_error(error):
            raise
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        raise SystemExit(2) from None
    if isinstance(result, Path):  # the run folder, last, for scripts: STAGE1=$(flare-xlt finetune ... | tail -n 1)
        print(result)


if __name__ == "__main__":
    main()
