"""The command line as a user meets it: logs that outlive the run, refusals before anything is written, one-line
errors with exit code 2, help for every option, plans and progress of a recipe. Commands run in-process through
cli.main, and each test checks the messages, exit codes and files left behind."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import re
import subprocess
import sys
import tomllib
from logging.handlers import BufferingHandler
from pathlib import Path

import pytest
import torch
import yaml
from conftest import NUSAX_DATA
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as transformers_logging

from flare_xlt import __version__
from flare_xlt.adapter.config import SOURCE_SITES, UNPAIRED_MODES
from flare_xlt.adapter.fusion import FUSION_NAMES
from flare_xlt.adapter.token_pairing import PAIRING_MODES
from flare_xlt.cli import COMMANDS, FlareParser, main
from flare_xlt.methods import METHODS
from flare_xlt.pipeline import TrainConfig, evaluate, finetune, transfer
from flare_xlt.pipeline.checkpoints import ResumableTrainer
from flare_xlt.pipeline.loading import ARCHITECTURES, TRAINABLE
from flare_xlt.pipeline.settings import LOGGER_PACKAGES, STAGE1_MODES
from flare_xlt.tasks import TASKS, get_task, load_original_view
from flare_xlt.tasks.sources import NUSAX_HUB, TYDIQA_HUB, XNLI_HUB

ROOT = Path(__file__).resolve().parents[1]
MT_STUB = Path(__file__).parent / "mt_command_stub.py"
TINY_TRAIN = ["--train.batch_size", "2", "--train.max_steps", "2", "--train.max_length", "48", "--train.seed", "3"]


def call(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `flare-xlt argv`."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(argument) for argument in argv])
        except SystemExit as exit:
            code = exit.code
    return code, out.getvalue(), err.getvalue()


def finetune_args(workspace, output) -> list[str]:
    return ["finetune", "--model", workspace / "encoder", "--task", "nusax", "--data", NUSAX_DATA, "--output", output]


@pytest.fixture(scope="module")
def stage1(workspace, tmp_path_factory):
    """A stage-1 run made through the command line, logging every step: (its folder, what the command printed)."""
    output = tmp_path_factory.mktemp("cli") / "runs"
    limits = ["--train.max_train_samples", "2", "--train.max_eval_samples", "2"]
    code, printed, errors = call(*finetune_args(workspace, output), *TINY_TRAIN, *limits, "--train.logging_steps", "1")
    assert code == 0, errors
    return output, printed


# ------------------------------------------------------------------------------------------ 1: logs that survive
def test_loss_history_is_kept_and_loggers_stay_out_of_the_run_hash(workspace, stage1, monkeypatch):
    output, printed = stage1
    monkeypatch.setitem(LOGGER_PACKAGES, "tensorboard", ("json",))  # as if tensorboard were installed
    run_dir = output / printed.splitlines()[-1].rsplit("/", 1)[-1]
    assert printed.splitlines()[-1] == str(run_dir)  # the last line names the run folder, for scripts
    assert (output / "latest-finetune").resolve() == run_dir.resolve()
    assert not (run_dir / "checkpoints").exists()
    history = json.loads((run_dir / "logs" / "trainer_state.json").read_text())["log_history"]
    # a loss per step; 2 training examples in batches of 2: each step is an epoch
    assert [(entry["step"], entry["epoch"]) for entry in history if "loss" in entry] == [(1, 1.0), (2, 2.0)]
    assert json.loads((run_dir / "metrics.json").read_text())["scores"]["average"]["count"] == 2
    # Settings that do not change the result find the same, finished run instead of training a second one.
    code, again, _ = call(
        *finetune_args(workspace, output),
        *TINY_TRAIN,
        *("--train.max_train_samples", "2", "--train.max_eval_samples", "2"),
        *("--train.report_to", "tensorboard", "--train.logging_steps", "7", "--train.eval_batch_size", "1"),
        *("--train.dataloader_num_workers", "1"),
    )
    assert code == 0 and "finished earlier, skipped" in again and again.splitlines()[-1] == str(run_dir)
    assert sorted(path.name for path in output.iterdir()) == ["latest-finetune", run_dir.name]


# ------------------------------------------------------------------------------- 2: wrong bases and empty runs
def test_stage1_must_be_a_stage1_run_of_the_same_model_and_task(workspace, stage1, tmp_path):
    run_dir = stage1[1].splitlines()[-1]
    transfer_run = tmp_path / "nusax-id-flare-seed3-0123abcd"
    (transfer_run / "adapter").mkdir(parents=True)
    (transfer_run / "adapter" / "adapter_config.json").write_text("{}")
    (transfer_run / "config.json").write_text(json.dumps({"stage": "transfer", "method": "flare"}))
    transfer = ["transfer", "--task", "nusax", "--language", "id", "--method", "zero-shot", "--output", tmp_path / "o"]
    code, _, errors = call(*transfer, "--model", workspace / "encoder", "--stage1", transfer_run)
    assert code == 2 and f"--stage1 {transfer_run} is a transfer run (flare), not a stage-1 run" in errors
    code, _, errors = call(*transfer, "--model", workspace / "decoder", "--stage1", run_dir)
    assert code == 2 and f"was trained with model '{workspace / 'encoder'}', not '{workspace / 'decoder'}'" in errors
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--train.epochs", "0"], "epochs must be positive (or max_steps set), got epochs=0.0: nothing would train."),
        (["--train.batch_size", "0"], "batch_size=0: must be a positive integer."),
    ],
)
def test_settings_that_train_nothing_are_refused_before_anything_is_written(workspace, tmp_path, option, message):
    code, _, errors = call(*finetune_args(workspace, tmp_path / "runs"), *option)
    assert (code, errors.strip()) == (2, f"error: {message}")
    assert not (tmp_path / "runs").exists()


def test_a_failed_start_leaves_nothing_and_an_interrupted_run_keeps_its_checkpoint(workspace, tmp_path, monkeypatch):
    output = tmp_path / "runs"
    code, _, errors = call(*finetune_args(workspace, output), *TINY_TRAIN, "--train.optim", "no_such_optimizer")
    assert code == 2 and "no_such_optimizer" in errors
    assert list(output.iterdir()) == []  # config.json was written, then removed with its run folder

    train_step = ResumableTrainer.training_step

    def interrupted_at_step_2(self, *args, **kwargs):
        if self.state.global_step == 1:
            raise KeyboardInterrupt
        return train_step(self, *args, **kwargs)

    monkeypatch.setattr(ResumableTrainer, "training_step", interrupted_at_step_2)
    code, _, errors = call(*finetune_args(workspace, output), *TINY_TRAIN, "--train.save_steps", "1")
    [run_dir] = output.iterdir()
    assert (code, errors.splitlines()[-1]) == (
        130,
        f"interrupted; run the same command to resume {run_dir.name} from checkpoint-1",
    )
    assert (run_dir / "checkpoints" / "checkpoint-1").is_dir() and (run_dir / "config.json").is_file()
    code, _, errors = call(
        *finetune_args(workspace, output), *TINY_TRAIN, "--train.save_steps", "0", "--train.seed", "4"
    )
    assert code == 130 and "interrupted before nusax-en-finetune-seed4-" in errors
    assert list(output.iterdir()) == [run_dir]  # nothing to resume: the seed-4 folder is gone


# ------------------------------------------------------------------------------------- 4: errors without tracebacks
def test_user_errors_are_one_line_with_exit_code_2_and_debug_shows_the_traceback(
    workspace, stage1, tmp_path, monkeypatch
):
    _, printed = stage1
    code, _, errors = call(*finetune_args(workspace, tmp_path), "--task", "xx")
    assert (code, errors) == (
        2,
        "error: Unknown task 'xx'; valid choices: xnli, tydiqa, nusax or the path of a task spec file.\n",
    )
    with pytest.raises(ValueError, match="Unknown task 'xx'"):
        main(["finetune", "--model", "m", "--task", "xx", "--debug"])
    monkeypatch.setenv("FLARE_XLT_DEBUG", "1")
    with pytest.raises(ValueError, match="Unknown task 'xx'"):
        main(["finetune", "--model", "m", "--task", "xx"])
    monkeypatch.delenv("FLARE_XLT_DEBUG")

    # a missing translation names the command that writes it
    code, _, errors = call(
        "transfer",
        "--model",
        workspace / "encoder",
        "--task",
        "nusax",
        "--language",
        "id",
        "--method",
        "flare",
        "--stage1",
        printed.splitlines()[-1],
        "--translations",
        tmp_path / "none",
        "--output",
        tmp_path / "o",
    )
    assert code == 2 and errors.count("\n") == 1
    assert "Write it with: flare-xlt translate --task nusax --src id --tgt en --splits '[test]' --output" in errors
    # a model that is not there offline is named, by translate as by the pipeline
    code, _, errors = call(
        "translate", "--task", "nusax", "--tgt", "id", "--model", "no-such/model", "--output", tmp_path
    )
    assert code == 2 and errors.startswith("error: Model 'no-such/model' is neither a local model folder")
    assert errors.count("\n") == 1  # the hub library's message, several lines, joined into the one


def test_recipe_settings_are_checked_by_name_and_shape(tmp_path):
    recipe = {"model": "m", "task": "nusax", "languages": "id", "methods": ["flare"]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, _, errors = call("run", "--recipe", tmp_path / "recipe.yaml")
    assert (code, errors) == (
        2,
        "error: recipe settings that take a list were given one value; write languages: [id].\n",
    )
    code, _, errors = call(
        "run", "--recipe", tmp_path / "recipe.yaml", "--set.languages", "[id]", "--set.train.lr", "1"
    )
    assert code == 2 and "Unknown train settings ['lr']; valid settings: ['batch_size', 'bf16'," in errors


# ------------------------------------------------------------------------------------------------------ 5: noise
def test_stage1_then_transfer_is_quiet_and_a_missing_head_is_still_reported(workspace, stage1, tmp_path, recwarn):
    transformers_log = BufferingHandler(capacity=10_000)
    transformers_logging.add_handler(transformers_log)
    try:
        quick = TrainConfig(batch_size=2, max_steps=1, max_length=48, seed=3, max_eval_samples=2)
        options = {"output": tmp_path / "runs", "data": NUSAX_DATA, "train": quick}
        # The encoder checkpoint has no classifier: stage 1 trained one, which the transfer loads from its adapter.
        transfer(str(workspace / "encoder"), "nusax", "id", "zero-shot", Path(stage1[1].splitlines()[-1]), **options)
        # A decoder with tied embeddings whose stage 1 trains lm_head and embed_tokens apart, merged for zero-shot.
        tied = tmp_path / "tied"
        config = LlamaConfig.from_pretrained(workspace / "decoder")
        config.tie_word_embeddings = True
        LlamaForCausalLM(config).save_pretrained(tied)
        AutoTokenizer.from_pretrained(workspace / "decoder").save_pretrained(tied)
        both = "lora+head+embeddings"
        tied_stage1 = finetune(str(tied), "nusax", options["output"], NUSAX_DATA, trainable=both, train=quick)
        transfer(str(tied), "nusax", "id", "zero-shot", tied_stage1, trainable=both, **options)
        assert not [record for record in transformers_log.buffer if "LOAD REPORT" in record.getMessage()]
        assert [str(warning.message) for warning in recwarn if "tie" in str(warning.message)] == []
        # The banner where the base is loaded outside the pipeline: the log would have shown it above.
        base = AutoModelForSequenceClassification.from_pretrained(workspace / "encoder", num_labels=3)
        assert any("LOAD REPORT" in record.getMessage() for record in transformers_log.buffer)
    finally:
        transformers_logging.remove_handler(transformers_log)
    # A stage-1 adapter without the head: the transfer would score a random classifier, and says so.
    headless = tmp_path / "headless"
    get_peft_model(base, LoraConfig(r=2, target_modules=["query"])).save_pretrained(headless / "adapter")
    with pytest.warns(UserWarning, match=r"has no classifier\.dense\.bias, .* no adapter trains or holds them"):
        transfer(str(workspace / "encoder"), "nusax", "id", "zero-shot", headless, **options)


# ------------------------------------------------------------------------------------------ 3: help that explains
def test_every_option_of_every_command_is_explained(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        options = text[text.index("\n  -h, --help") :]
        entries = [" ".join(entry.split()) for entry in re.split(r"\n(?=  --)", options)]
        for entry in entries:
            words = entry.split(" (")[0].split()
            described = [word for word in words if not (word.startswith(("-", "[", "{")) or word.isupper())]
            assert described, f"{command}: {entry} has no description"
        assert "<class" not in text, f"{command}: a type printed as a class"
    with pytest.raises(SystemExit):
        main(["transfer", "--help"])
    text = " ".join(capsys.readouterr().out.split("\noptions:", 1)[1].split())
    assert "--train.learning_rate LEARNING_RATE Peak learning rate" in text and "(type: path, default: runs)" in text
    for option, choices in {
        "method": METHODS,
        "stage1_mode": STAGE1_MODES,
        "architecture": ARCHITECTURES,
        "trainable": TRAINABLE,
        "adapter.fusion": FUSION_NAMES,
        "adapter.pairing": PAIRING_MODES,
        "adapter.unpaired": UNPAIRED_MODES,
        "adapter.source_site": SOURCE_SITES,
    }.items():
        help_text = re.search(rf"--{option} \S+ (.*?) \((?:required|type):", text).group(1)
        assert all(choice in help_text for choice in choices), f"--{option}: {help_text}"
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out.split("Available subcommands:")[1]
    summaries = {entry.split()[0]: " ".join(entry.split()[1:]) for entry in re.split(r"\n    (?=\S)", listing)[1:]}
    assert set(summaries) == set(COMMANDS) and all(summary.endswith(".") for summary in summaries.values())


def test_unknown_options_get_a_hint_and_version_prints(capsys):
    code, printed, _ = call("--version")
    assert (code, printed.split()[-1]) == (0, __version__)


SEE_FINETUNE_HELP = "flare-xlt finetune --help lists every option."


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--learning_rate", "1", "--num_train_epochs", "2"],
            "--learning_rate: did you mean --train.learning_rate? --num_train_epochs: did you mean --train.epochs? "
            + SEE_FINETUNE_HELP,
        ),
        (
            ["--train.lerning_rate", "1"],
            f"--train.lerning_rate: did you mean --train.learning_rate? {SEE_FINETUNE_HELP}",
        ),
        (["--train.epochs", "abc"], "--train.epochs expects a number, got 'abc'."),
        (["--train.max_train_samples", "x"], "--train.max_train_samples expects an integer or null, got 'x'."),
        (["--adapter.r", "1.5"], "--adapter.r expects an integer, got '1.5'."),
        (["--train.bf16", "maybe"], "--train.bf16 expects true or false, got 'maybe'."),
        (["--config", "/no/such/flare.yaml"], "--config: File does not exist: '/no/such/flare.yaml'"),
    ],
)
def test_a_wrong_option_is_one_line_that_says_what_was_meant(argv, message):
    code, printed, errors = call("finetune", "--model", "m", "--task", "nusax", *argv)
    assert (code, printed, errors) == (2, "", f"error: {message}\n")


def test_a_missing_option_or_unknown_command_is_one_line():
    assert call("finetune", "--task", "nusax") == (2, "", f"error: --model is required. {SEE_FINETUNE_HELP}\n")
    code, _, errors = call("finetun", "--task", "nusax")
    assert (code, errors.count("\n")) == (2, 1)
    assert errors.startswith("error: unknown command 'finetun': did you mean finetune? Commands: translate, ")
    assert call("--bogus") == (2, "", "error: --bogus: no such option. flare-xlt --help lists the commands.\n")


@pytest.mark.parametrize("command", ["nosuchprog x", "false"])
def test_a_failing_mt_command_is_one_line_and_leaves_nothing_behind(tmp_path, command):
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "hola"}\n')
    translate = ["translate", "--backend", "command", "--fields", "[text]", "--src", "es", "--tgt", "en"]
    code, _, errors = call(
        *translate, "--command", command, "--input", tmp_path / "in.jsonl", "--output", tmp_path / "out" / "o.jsonl"
    )
    assert (code, errors.count("\n")) == (2, 1) and errors.startswith(f"error: MT command {command!r} ")
    assert [path.name for path in tmp_path.rglob("*")] == ["in.jsonl"]  # no translation_cache.sqlite, no output
    # A chunk the command translated before it failed stays in the cache, for the re-run to resume after it.
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "hola"}\n{"id": 2, "text": "FAIL"}\n')
    stub, output = f"{sys.executable} {MT_STUB} fail", tmp_path / "resumable" / "o.jsonl"
    code, _, errors = call(
        *translate, "--command", stub, "--chunk_size", "1", "--input", tmp_path / "in.jsonl", "--output", output
    )
    assert (code, errors.count("\n")) == (2, 1) and "failed on texts 2-2 of 2 with exit status 3" in errors
    assert [path.name for path in output.parent.iterdir()] == ["translation_cache.sqlite"]


def test_a_missing_logger_package_names_the_extra_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(LOGGER_PACKAGES, "tensorboard", ("flare_xlt_no_such_module",))  # whatever is installed here
    options = ["--train.report_to", "none,tensorboard", "--output", tmp_path / "runs"]
    assert call("finetune", "--model", "m", "--task", "nusax", *options) == (
        2,
        "",
        "error: report_to tensorboard needs the tensorboard package, which is not installed: "
        "pip install 'flare-xlt[tensorboard]'.\n",
    )
    assert not (tmp_path / "runs").exists()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(LOGGER_PACKAGES) <= set(extras)  # the extra the message names exists


def test_a_model_path_that_does_not_exist_is_named(tmp_path):
    for model in (tmp_path / "no-such-model", "./no-such-model", "a/b/c"):
        code, _, errors = call("finetune", "--model", model, "--task", "nusax", "--output", tmp_path / "runs")
        assert (code, errors) == (
            2,
            f"error: Model '{model}' is neither a local model folder (with config.json) nor a hub model name: no "
            "such folder.\n",
        )
    assert not (tmp_path / "runs").exists()


def test_tasks_lists_every_task_with_its_languages_metric_and_data():
    code, printed, _ = call("tasks")
    assert code == 0
    blocks = re.split(r"\n(?=\S)", printed.strip())
    for (name, task), hub in zip(TASKS.items(), (XNLI_HUB, TYDIQA_HUB, NUSAX_HUB), strict=True):
        [block] = [block for block in blocks if block.startswith(f"{name}: ")]
        assert block.startswith(f"{name}: {task.kind}, metric {task.metric}, source language en\n")
        assert f"\n  languages: {' '.join(task.languages)}\n" in block and f"\n  data: hub {hub}" in block
    assert "--data" in printed and blocks[-1].startswith("A custom task is a .yaml or .json spec file")


@pytest.mark.parametrize("flags", [["--print_config", "skip_default"], ["--print_config=skip_default"]])
def test_print_config_takes_its_flags_after_a_space_or_an_equals_sign(flags):
    code, printed, errors = call("finetune", "--model", "m", "--task", "nusax", "--train.seed", "7", *flags)
    assert (code, errors) == (0, "")
    assert yaml.safe_load(printed) == {"model": "m", "task": "nusax", "train": {"seed": 7}}


COMMAND_MODULES = {
    "finetune": "flare_xlt.pipeline.runs",
    "transfer": "flare_xlt.pipeline.runs",
    "evaluate": "flare_xlt.pipeline.finished_runs",
}


@pytest.mark.parametrize("name", list(COMMAND_MODULES))
def test_a_lazy_command_has_the_options_and_help_of_the_function_it_runs(name):
    def help_of(function) -> str:
        parser = FlareParser(prog="flare-xlt")
        parser.add_function_arguments(function)
        return parser.format_help()

    real = getattr(importlib.import_module(COMMAND_MODULES[name]), name)
    assert list(inspect.signature(COMMANDS[name]).parameters) == list(inspect.signature(real).parameters)
    assert help_of(COMMANDS[name]) == help_of(real)


def test_the_command_line_answers_help_and_wrong_options_without_torch():
    """flare-xlt --help, --version and a wrong option import no model library (they return in a fraction of a second
    instead of the seconds that importing torch, transformers and peft takes)."""
    script = (
        "import contextlib, io, sys\n"
        "from flare_xlt.cli import main\n"
        "for argv in (['--help'], ['--version'], ['finetune', '--help'], ['transfer', '--lerning_rate', '1'], "
        "['finetune', '--model', 'm', '--task', 'nusax', '--train.epochs', 'abc']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'transformers', 'peft', 'datasets'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout == "[]\n", done.stderr


# ----------------------------------------------------------------------------------------------- 6: plans
def test_run_prints_the_plan_and_dry_run_stops_there(workspace, tmp_path):
    recipe = {
        "model": str(workspace / "encoder"),
        "task": "nusax",
        "languages": ["id"],
        "methods": ["zero-shot", "flare"],
        "seeds": [1, 2],
        "output": str(tmp_path / "runs"),
        "translations": str(workspace / "translations"),
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, printed, _ = call("run", "--recipe", tmp_path / "recipe.yaml", "--dry_run", "--set.seeds", "[7]")
    assert code == 0 and printed.splitlines() == [
        "plan: 2 translations (2 done, 0 to make); 1 stage-1 runs (0 done, 1 to make); "
        "2 transfer runs (0 done, 2 to make)",
        "  done   translate id train",
        "  done   translate id test",
        "  to do  finetune en seed 7",
        "  to do  transfer id zero-shot seed 7",
        "  to do  transfer id flare seed 7",
    ]
    assert not (tmp_path / "runs").exists()


def test_finetune_and_transfer_dry_runs_say_what_is_done_resumable_or_to_make(tmp_path):
    """A dry run reads the disk only: no model is loaded (the model name is no model) and nothing is written."""
    runs, translations = tmp_path / "runs", tmp_path / "translations"
    stage1_args = ["finetune", "--model", "m", "--task", "nusax", "--output", runs, "--train.seed", "4"]

    def dry(*argv) -> list[str]:
        code, printed, errors = call(*argv, "--dry_run")
        assert code == 0, errors
        return printed.splitlines()

    stage1_dir = Path(dry(*stage1_args)[-1])
    assert dry(*stage1_args) == [
        "plan: 1 stage-1 runs (0 done, 1 to make)",
        "  to do  finetune en seed 4",
        str(stage1_dir),
    ]
    assert not runs.exists()
    # An interrupted run resumes from its newest complete checkpoint, unless --resume false starts it over.
    for step in (2, 6):
        (stage1_dir / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    (stage1_dir / "checkpoints" / ".checkpoint-8.staging").mkdir()
    assert dry(*stage1_args)[:2] == [
        "plan: 1 stage-1 runs (0 done, 1 to make, 1 resuming from a checkpoint)",
        "  to do  finetune en seed 4 (resumes from checkpoint-6)",
    ]
    assert dry(*stage1_args, "--resume", "false")[1] == (
        "  to do  finetune en seed 4 (starts over: --resume false discards checkpoint-6)"
    )
    # A finished stage 1 (the files transfer checks); the ensemble lists the lora run it reads first.
    (stage1_dir / "adapter").mkdir()
    (stage1_dir / "adapter" / "adapter_config.json").write_text("{}")
    (stage1_dir / "config.json").write_text(json.dumps({"stage": "finetune", "model": "m", "task": "nusax"}))
    (stage1_dir / "metrics.json").write_text("{}")
    assert dry(*stage1_args)[:2] == ["plan: 1 stage-1 runs (1 done, 0 to make)", "  done   finetune en seed 4"]
    transfer_args = ["transfer", "--model", "m", "--task", "nusax", "--language", "id", "--method", "ensemble"]
    transfer_args += ["--stage1", stage1_dir, "--translations", translations, "--output", runs, "--train.seed", "4"]
    code, printed, errors = call(*transfer_args, "--dry_run")
    assert code == 2 and "nusax_test_id-en.jsonl not found. Write it with: flare-xlt translate" in errors
    assert printed.splitlines() == [
        "plan: 2 transfer runs (0 done, 2 to make)",
        "  to do  transfer id lora seed 4",
        "  to do  transfer id ensemble seed 4",
    ]
    translations.mkdir()
    (translations / "nusax_test_id-en.jsonl").write_text("")
    ensemble_dir = Path(dry(*transfer_args)[-1])
    assert ensemble_dir.parent == runs and ensemble_dir.name.startswith("nusax-id-ensemble-seed4-")
    assert sorted(path.name for path in runs.iterdir()) == [stage1_dir.name]  # nothing written beside stage 1


# ------------------------------------------------------------------------------------------ 7: workflow features
def test_evaluate_reproduces_a_runs_score_and_scores_other_data(workspace, tmp_path):
    # A decoder: its predictions are generated text, which any change to the model it scores would change.
    quick = TrainConfig(batch_size=2, max_steps=2, learning_rate=0.05, max_length=48, seed=3, max_eval_samples=2)
    decoder, runs = str(workspace / "decoder"), tmp_path / "runs"
    stage1_run = finetune(decoder, "nusax", output=runs, data=NUSAX_DATA, train=quick)
    flare_run = transfer(
        decoder, "nusax", "id", "flare", stage1_run, workspace / "translations", runs, NUSAX_DATA, train=quick
    )
    for run_dir in (stage1_run, flare_run):
        evaluated = evaluate(run_dir, output=tmp_path / run_dir.name)
        assert evaluated["scores"] == json.loads((run_dir / "metrics.json").read_text())["scores"]
        assert (tmp_path / run_dir.name / "predictions.jsonl").read_text() == (
            run_dir / "predictions.jsonl"
        ).read_text()
    # The stage-1 run on Indonesian train data, through the command line.
    code, _, errors = call(
        "evaluate", "--run", stage1_run, "--language", "id", "--split", "train", "--output", tmp_path / "id-train"
    )
    assert code == 0, errors
    written = json.loads((tmp_path / "id-train" / "evaluation.json").read_text())
    predictions = [json.loads(line) for line in (tmp_path / "id-train" / "predictions.jsonl").read_text().splitlines()]
    indonesian = load_original_view(get_task("nusax"), "id", "train", NUSAX_DATA)[:2]  # the run's max_eval_samples
    assert (written["language"], written["split"], list(written["scores"])) == ("id", "train", ["id", "average"])
    assert [(row["id"], row["reference"]) for row in predictions] == [(r["id"], r["label"]) for r in indonesian]
    # A method that reads the English translation names the command that writes a missing one; an --output that
    # holds anything but an earlier evaluation is refused, not replaced.
    code, _, errors = call("evaluate", "--run", flare_run, "--split", "train")
    assert code == 2 and "flare-xlt translate --task nusax --src id --tgt en --splits '[train]'" in errors
    code, _, errors = call("evaluate", "--run", stage1_run, "--output", runs)
    assert code == 2 and "holds other files than an evaluation's" in errors
    assert (flare_run / "metrics.json").is_file()


def test_the_documented_python_api_example_runs(workspace, tmp_path, monkeypatch, capsys):
    document = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"
    example = re.search(r"### 2.10 Python API.*?```python\n(.*?)```", document.read_text(), flags=re.DOTALL).group(1)
    variables = {"MODEL": workspace / "encoder", "DATA": NUSAX_DATA, "TRANSLATIONS": workspace / "translations"}
    for name, value in variables.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(document.parents[1] / "configs")
    namespace = {"__name__": "example"}
    exec(compile(example, str(document), "exec"), namespace)
    assert namespace["scores"]["scores"] == json.loads((namespace["run"] / "metrics.json").read_text())["scores"]
    printed = capsys.readouterr().out
    assert "macro_f1 " in printed and "  to do  transfer id flare seed 1" in printed


def test_gradient_accumulation_and_weight_decay_reach_the_trainer(workspace, tmp_path):
    """Accumulating 2 batches halves the optimizer steps of an epoch; weight decay changes the trained weights."""
    from safetensors.torch import load_file

    def trained(name: str, *options: str) -> tuple[int, dict]:
        one_epoch = ["--train.batch_size", "1", "--train.epochs", "1", "--train.max_length", "48", "--train.seed", "3"]
        code, printed, errors = call(*finetune_args(workspace, tmp_path / name), *one_epoch, *options)
        assert code == 0, errors
        run = Path(printed.strip().splitlines()[-1])
        steps = json.loads((run / "logs" / "trainer_state.json").read_text())["global_step"]
        return steps, load_file(run / "adapter" / "adapter_model.safetensors")

    plain_steps, plain = trained("plain")
    accumulated_steps, _ = trained("accumulated", "--train.gradient_accumulation_steps", "2")
    assert plain_steps >= 3 and accumulated_steps == -(-plain_steps // 2), (plain_steps, accumulated_steps)
    _, decayed = trained("decayed", "--train.weight_decay", "0.5")
    assert plain.keys() == decayed.keys()
    assert any(not torch.equal(plain[name], decayed[name]) for name in plain)
