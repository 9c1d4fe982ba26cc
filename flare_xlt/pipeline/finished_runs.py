"""Scoring a finished run again: its model rebuilt as it was scored, on any language and split."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapter.config import FlareConfig
from ..adapter.model import FlareModel
from ..io import replace_directory_atomically
from ..methods import REGISTRY, get_method
from ..methods.linear_probe import PROBE_FEATURES
from ..mt.states import EncoderStateStore
from ..tasks import TaskEncoder, TaskSpec, get_task, load_task_splits
from .expected_warnings import without_expected_warnings
from .phases import phase
from .run_data import check_states, load, self_pairs, target_pairs, translation_file
from .scoring import evaluation, write_evaluation
from .settings import DEFAULT_TRAIN, TrainConfig
from .stage1 import check_stage1, load_stage1, recorded_pooling, report_untrained, stage1_model

# What `evaluate` writes next to predictions.jsonl: not metrics.json, which marks a finished run, so that a report
# over a folder holding evaluations does not count one as a second run of its method.
EVALUATION_NAME = "evaluation.json"


SAVED_ADAPTER = "saved-adapter"  # the `stage` of an adapter folder that no run of this pipeline recorded


@without_expected_warnings
def evaluate(
    run: Path,
    language: str | None = None,
    split: str = "test",
    output: Path | None = None,
    data: str | None = None,
    translations: Path | None = None,
    mt_states: Path | None = None,
    model: str | None = None,
    task: str | None = None,
    stage1: Path | None = None,
    max_length: int | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
) -> dict:
    """Score a finished run, or a saved FLARE adapter, on one language and split; print or write the scores.

    The run's model is rebuilt as it was scored (base model, stage-1 adapter, the run's adapter) and reads the split
    as its method does. Evaluating a run on its own language and test split reproduces its metrics.json. Returns the
    scores as metrics.json holds them, with `split` and `evaluated` (the run folder) added.

    Args:
        run: A run folder that flare-xlt finetune or transfer wrote (or its adapter/), or a folder that
            FlareModel.save_pretrained wrote (then give --model and --task).
        language: The language to score; default: the run's (English for a stage-1 run).
        split: train, validation or test (the task's roles), or a split name of the dataset.
        output: A new folder for predictions.jsonl and evaluation.json (written whole or not at all; a folder of an
            earlier evaluation is replaced). Default: print the scores only.
        data: Where the split comes from: hub, or a folder of the original release files; default: the run's.
        translations: For the methods that read an English translation (translate-test, input-fusion, flare,
            x-mixup): the folder with {task}_{split}_{language}-<source>.jsonl; default: the run's.
        mt_states: For flare-mt: a folder with a state store named after the split; default: the run's.
        model: The base model; default: the run's. Required for a saved adapter.
        task: A built-in task or a task spec file; default: the run's. Required for a saved adapter.
        stage1: A saved adapter: the stage-1 run folder whose adapter is merged into the base first, if any.
        max_length: Tokens per input; default: the run's train.max_length (128 for a saved adapter).
        max_samples: Score the first N examples only; default: the run's train.max_eval_samples (all).
        batch_size: Examples per batch; default: the run's training batch size (32 where it has none).
    """
    run_dir, config = recorded_run(Path(run), model, task, stage1)
    model = model or config["model"]
    spec = get_task(task or config["task"])
    method = config["method"]
    language = language or config.get("language") or spec.source_language
    spec.check_language(language)
    data = data or config["data"]
    scored_method = get_method(method) if config["stage"] != "finetune" else None
    # A stage-1 run reads the target view, as in its own evaluation.
    view = scored_method.view if scored_method is not None else "target"
    translated = None
    if scored_method is not None and scored_method.reads_test_translation:
        translations = translations or config.get("translations")
        if translations is None:
            raise ValueError(f"A {method} run reads the split's translation into English: give --translations.")
        translated = translation_file(Path(translations), spec, split, language, spec.source_language)
    train = scoring_settings(config, max_length, max_samples, batch_size)
    pairs = target_pairs(spec, language, split, data, translated, train.max_eval_samples)
    states = None
    loaded = load(model, spec, config["architecture"], config["load_in_4bit"], train, run_pooling(config))
    if scored_method is not None and scored_method.needs_mt_states:
        folder = mt_states or config.get("mt_states")
        if folder is None:
            raise ValueError("A flare-mt run reads encoder states: give --mt_states.")
        states = EncoderStateStore(Path(folder) / split)
        check_states(states, TaskEncoder(spec, loaded.tokenizer, loaded.architecture, view, train.max_length), pairs)
    network = run_model(loaded, run_dir, config, model, spec)
    summary = {
        "task": spec.name,
        "method": config.get("variant") or method,
        "seed": train.seed,
        "language": language,
        "split": split,
        "evaluated": str(run_dir),
        "run": run_dir.name,
    }
    rows, metrics = evaluation(network, loaded, spec, pairs, view, train, summary, states)
    if output is None:
        headline = metrics["scores"]["average"][metrics["metric"]]
        print(f"{run_dir.name} on {language} {split}: {metrics['metric']} {headline:.4f}")
        print(json.dumps(metrics["scores"], indent=2))
    else:
        _check_evaluation_folder(Path(output))
        replace_directory_atomically(output, lambda folder: write_evaluation(folder, rows, metrics, EVALUATION_NAME))
    return metrics


def scoring_settings(
    config: dict, max_length: int | None, max_samples: int | None = None, batch_size: int | None = None
) -> TrainConfig:
    """The run's recorded training settings, with the scoring overrides of evaluate and predict: tokens per input
    (default: the run's), examples scored and examples per batch."""
    recorded = config.get("train", {})
    return TrainConfig(
        **{
            **recorded,
            "max_length": max_length or recorded.get("max_length", DEFAULT_TRAIN.max_length),
            "max_eval_samples": max_samples or recorded.get("max_eval_samples"),
            "eval_batch_size": batch_size,
        }
    )


def recorded_run(path: Path, model: str | None, task: str | None, stage1: Path | None) -> tuple[Path, dict]:
    """(the run folder, the config it recorded) of a run folder or its adapter/; for an adapter saved outside a run,
    (its folder, the settings of a FLARE adapter on `model`, merged onto `stage1` if given)."""
    for folder in (path, path.parent) if path.name == "adapter" else (path,):
        config_path = folder / "config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            if config.get("stage") in ("finetune", "transfer"):  # not a model's config.json
                return folder, {"method": "finetune", **config}
    if not (path / "flare_config.json").is_file():
        raise FileNotFoundError(
            f"{path} is neither a run folder (with the config.json flare-xlt finetune or transfer writes) nor a "
            "FLARE adapter folder (with flare_config.json)."
        )
    if model is None or task is None:
        raise ValueError(f"{path} is a saved FLARE adapter, not a run folder: give --model and --task.")
    flare_config = FlareConfig.load(path)
    fuses, reads_states = flare_config.fusion is not None, flare_config.mt_source_dim is not None
    method = next(  # the first method, in registry order, that trains such an adapter
        name
        for name, candidate in REGISTRY.items()
        if candidate.trains and candidate.fuses == fuses and candidate.needs_mt_states == reads_states
    )
    return path, {
        "stage": SAVED_ADAPTER,
        "model": model,
        "task": task,
        "method": method,
        "stage1": str(stage1) if stage1 is not None else None,
        "stage1_mode": "merge",
        "data": "hub",
        "architecture": "auto",
        "load_in_4bit": False,
    }


def run_pooling(config: dict) -> str | None:
    """The classification pooling a recorded run's model reads: a stage-1 run's own, a transfer's stage-1 run's; a
    saved adapter's, as its stage-1 run recorded it (the architecture's own head without one)."""
    if config["stage"] == "finetune":
        return config.get("pooling")
    return recorded_pooling(Path(config["stage1"])) if config.get("stage1") is not None else None


def run_model(loaded, run_dir: Path, config: dict, model_name: str, task: TaskSpec) -> torch.nn.Module:
    """The model a run scored: its stage-1 adapter on the base, and the run's own adapter, as the run built them."""
    adapter = run_dir if config["stage"] == SAVED_ADAPTER else run_dir / "adapter"
    if config["stage"] == "finetune":
        return load_stage1(loaded, adapter, model_name)
    scored_method = get_method(config["method"])
    if scored_method.fits_source_probe:  # the frozen base model: no stage-1 adapter goes on it
        train = TrainConfig(**config["train"])
        return fitted_probe(scored_method, loaded, task, config["data"], train, run_pooling(config), run_dir.parent)
    trained = scored_method.trains
    network = loaded.model
    if config["stage1"] is not None:
        stage1_adapter = check_stage1(Path(config["stage1"]), model_name, task)
        network = stage1_model(loaded, stage1_adapter, model_name, config["stage1_mode"], trained)
    if scored_method.reuses is not None:
        reused_dir, train = run_dir.parent / config["reuses"], TrainConfig(**config["train"])
        return combined_with_reused_run(scored_method, reused_dir, network, loaded, model_name, task, train)
    if not trained:
        return network
    flare = FlareModel.from_pretrained(network, adapter, stage1=config["stage1_mode"])
    if config["stage1"] is None:  # a saved adapter on the bare base: its own modules_to_save must hold the head
        report_untrained(loaded, flare, model_name)
    return scored_method.restore(flare, adapter)


@phase("load")
def combined_with_reused_run(method, reused_dir: Path, stage1, loaded, model_name: str, task: TaskSpec, train):
    """A method that reads another finished run (the ensemble): the model it scores, from the stage-1 model and that
    run's model, rebuilt on a base of its own."""
    reused_config = json.loads((reused_dir / "config.json").read_text(encoding="utf-8"))
    reused_loaded = load(
        model_name,
        task,
        reused_config["architecture"],
        reused_config["load_in_4bit"],
        train,
        run_pooling(reused_config),
    )
    reused = run_model(reused_loaded, reused_dir, reused_config, model_name, task)
    encoder = TaskEncoder(task, loaded.tokenizer, loaded.architecture, method.view, train.max_length)
    return method.combine(stage1, reused, encoder)


def fitted_probe(
    method, loaded, task: TaskSpec, data: str, train: TrainConfig, pooling: str | None, runs: Path
) -> torch.nn.Module:
    """A method that fits a probe (the linear probe): its model, fitted on the frozen base model's features of the
    first train.max_train_samples English training examples, kept in `runs`/PROBE_FEATURES for the other probe runs
    there. Fitting is deterministic, so `evaluate` fits again the head the run scored with."""
    english = load_task_splits(task, task.source_language, ["train"], data)["train"][: train.max_train_samples]
    reader = TaskEncoder(task, loaded.tokenizer, loaded.architecture, method.view, train.max_length)
    base = loaded.model.base_model  # the encoder without its (untrained) head
    batch_size = train.eval_batch_size or train.batch_size
    return method.fit(base, reader, self_pairs(task, english), pooling, batch_size, Path(runs) / PROBE_FEATURES)


def _check_evaluation_folder(output: Path) -> None:
    """`output` is replaced whole: only an empty folder or an earlier evaluation may be there (not, say, runs/)."""
    if output.exists() and not {entry.name for entry in output.iterdir()} <= {EVALUATION_NAME, "predictions.jsonl"}:
        raise ValueError(
            f"--output {output} exists and holds other files than an evaluation's; evaluate writes a new folder, "
            "which would replace it: give another --output."
        )
