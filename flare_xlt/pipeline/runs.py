"""The stage-1 and transfer commands: `finetune` trains on English, `transfer` carries the stage-1 model to a
target language with one method; each writes one run folder (run_folder.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from ..adapter.model import get_flare_model, keep_trainables_in_float32
from ..methods import get_method
from ..mt.states import EncoderStateStore
from ..tasks import PairedCollator, TaskEncoder, get_task, load_record_file, load_task_splits, pair_views
from .expected_warnings import without_expected_warnings
from .finished_runs import combined_with_reused_run, fitted_probe
from .phases import phase, recorded_run, write_timings
from .plans import PlannedStep, describe_plan, run_status
from .run_data import (
    check_states,
    check_validation_role,
    load,
    self_pairs,
    target_pairs,
    translation_file,
    with_mt_states,
)
from .run_folder import (
    finetune_run,
    finished,
    link_latest,
    run_train_settings,
    save_adapter,
    started,
    transfer_run,
)
from .scoring import evaluate_run, validation_callback
from .settings import DEFAULT_ADAPTER, DEFAULT_TRAIN, AdapterConfig, TrainConfig, resolve_stage1_mode
from .stage1 import (
    check_stage1,
    check_target_modules,
    recorded_pooling,
    report_untrained,
    stage1_model,
)
from .training import train_adapter


@without_expected_warnings
@recorded_run
def finetune(
    model: str,
    task: str,
    output: Path = Path("runs"),
    data: str = "hub",
    architecture: str = "auto",
    trainable: str = "lora",
    load_in_4bit: bool = False,
    adapter: AdapterConfig = DEFAULT_ADAPTER,
    train: TrainConfig = DEFAULT_TRAIN,
    resume: bool = True,
    pooling: str = "auto",
    dry_run: bool = False,
) -> Path:
    """Stage 1: train a LoRA and the task head on English and score it on the English test set.

    Prints the run folder last; <output>/latest-finetune links to it.

    Args:
        model: Base model: a hub name or a local folder with the model and its tokenizer.
        task: A built-in task (xnli, tydiqa, nusax) or a task spec file (.yaml/.json).
        output: Folder that receives the run folder.
        data: Where the splits come from: hub, or a folder of the original release files.
        architecture: auto (from the model's config), encoder, decoder or seq2seq.
        trainable: lora, lora+head (decoders: also lm_head) or lora+head+embeddings (also embed_tokens). Encoders
            always train their task head.
        load_in_4bit: Load the base in 4-bit NF4 with bitsandbytes (GPU).
        adapter: The LoRA's settings; stage 1 reads r, lora_alpha, lora_dropout and target_modules.
        train: Training settings.
        resume: Continue an interrupted run from the newest checkpoint in its run folder (asking for the same run
            again does this); false discards the run's checkpoints and trains from the start.
        pooling: How an encoder's classification head reads the sequence: cls (the architecture's own head, which
            reads the first token), mean (over the real tokens), last (the last real token), or auto: what the
            model folder's sentence-transformers Pooling config names (mean for e5), else cls. Other tasks and
            architectures take auto only. Transfers and evaluations read it from this run.
        dry_run: Print whether the run is done, to make, or resumable and from which checkpoint, and its folder;
            change nothing.
    """
    settings = dict(locals())  # the arguments, by name: the run folder's settings
    spec = get_task(task)
    run_dir, config = finetune_run(settings)
    if dry_run:
        step = PlannedStep("finetune", spec.source_language, seed=train.seed)
        print(describe_plan([run_status(step, run_dir, resume)], every_step=True))
        return run_dir
    if finished(run_dir, config):
        link_latest(run_dir, "finetune")
        return run_dir
    loaded = load(model, spec, architecture, load_in_4bit, train, config["pooling"])
    check_target_modules(loaded.model, adapter.target_modules, model)
    lora = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.lora_alpha,
        lora_dropout=adapter.lora_dropout,
        target_modules=adapter.target_modules,
        modules_to_save=loaded.head_modules(spec, trainable),
    )
    network = get_peft_model(loaded.model, lora)
    report_untrained(loaded, network, model)
    keep_trainables_in_float32(network)  # a bf16 checkpoint's head copy would round most updates away
    roles = ["train", "validation", "test"] if train.select_best_on_validation else ["train", "test"]
    splits = load_task_splits(spec, spec.source_language, roles, data)
    features, report, _ = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, "target", train.max_length).encode(
        self_pairs(spec, splits["train"][: train.max_train_samples])
    )
    print(f"train: {report.summary()}")
    callbacks = []
    if train.select_best_on_validation:
        check_validation_role(spec)
        pairs = self_pairs(spec, splits["validation"][: train.max_eval_samples])
        callbacks.append(validation_callback(network, loaded, spec, pairs, "target", train))
    collator = PairedCollator.for_tokenizer(loaded.tokenizer)
    test_pairs = self_pairs(spec, splits["test"][: train.max_eval_samples])
    with started(run_dir, config):
        train_adapter(network, features, train, run_dir, collator, callbacks, resume)
        save_adapter(network, run_dir)
        summary = {
            **(callbacks[0].summary() if callbacks else {}),
            "task": spec.name,
            "method": "finetune",
            "seed": train.seed,
            "language": spec.source_language,
            "config_hash": run_dir.name.rsplit("-", 1)[1],
        }
        evaluate_run(network, loaded, spec, test_pairs, "target", train, run_dir, summary)
        write_timings(run_dir)
    link_latest(run_dir, "finetune")
    return run_dir


@without_expected_warnings
@recorded_run
def transfer(
    model: str,
    task: str,
    language: str,
    method: str,
    stage1: Path,
    translations: Path | None = None,
    output: Path = Path("runs"),
    data: str = "hub",
    mt_states: Path | None = None,
    stage1_mode: str = "auto",
    architecture: str = "auto",
    trainable: str = "lora",
    load_in_4bit: bool = False,
    adapter: AdapterConfig = DEFAULT_ADAPTER,
    train: TrainConfig = DEFAULT_TRAIN,
    resume: bool = True,
    name: str | None = None,
    dry_run: bool = False,
) -> Path:
    """Stage 2: transfer the stage-1 model to one target language with one method and score it on its test set.

    zero-shot and translate-test evaluate the stage-1 model; linear-probe fits a logistic regression on the frozen
    base encoder's features of the English examples stage 1 read (the table's floor); lora, input-fusion, flare,
    flare-mt and x-mixup train a new adapter on translated data first; ensemble averages the lora run (made first
    if missing) with translate-test. Prints the run folder last; <output>/latest-transfer links to it.

    Args:
        model: The base model of the stage-1 run (a hub name or a local folder).
        task: A built-in task (xnli, tydiqa, nusax) or a task spec file (.yaml/.json).
        language: Target language; one of the task's languages.
        method: zero-shot, translate-test, lora, input-fusion, x-mixup, ensemble, flare, flare-mt or linear-probe
            (translate-test and ensemble: classification tasks only; x-mixup: encoders only; linear-probe: encoder
            classification only).
        stage1: The stage-1 run folder that flare-xlt finetune wrote, e.g. runs/latest-finetune.
        output: Folder that receives the run folder.
        data: Where the target test set and the English splits come from: hub, or a folder of the original release
            files.
        stage1_mode: How the stage-1 adapter is kept: auto (frozen on 4-bit bases, merge otherwise), merge (folded
            into the base) or frozen (a frozen LoRA under the new one).
        architecture: auto (from the model's config), encoder, decoder or seq2seq.
        trainable: The new adapter's trained modules: lora, lora+head or lora+head+embeddings.
        load_in_4bit: Load the base in 4-bit NF4 with bitsandbytes (GPU).
        adapter: The new adapter's settings (methods that train).
        train: Training settings.
        translations: Folder with {task}_train_<source>-{language}.jsonl and {task}_test_{language}-<source>.jsonl
            (and {task}_validation_<source>-{language}.jsonl when selecting on validation), as written by
            flare-xlt translate.
        mt_states: For flare-mt, a folder with the encoder-state stores train/, test/ (and validation/ when
            selecting), as written by flare-xlt mt-states.
        resume: Continue an interrupted run from the newest checkpoint in its run directory (asking for the same run
            again does this); false discards the run's checkpoints and trains from the start.
        name: The run's name in folders and reports, for a variant of a method (e.g. flare-end, a FLARE adapter
            with pairing=end); default: the method.
        dry_run: Print the runs this command would make (the ensemble's lora run too) and whether each is done, to
            make, or resumable and from which checkpoint, then check the translated files it reads; change nothing.
    """
    settings = dict(locals())  # the arguments, by name: the run folder's settings
    spec = get_task(task)
    spec.check_language(language)
    transfer_method = get_method(method)
    transfer_method.check_fit(spec.kind, None if architecture == "auto" else architecture)
    stage1_mode = settings["stage1_mode"] = resolve_stage1_mode(stage1_mode, load_in_4bit)
    if transfer_method.needs_translations and translations is None:
        raise ValueError(f"Method {method!r} needs --translations (the folder written by flare-xlt translate).")
    if transfer_method.needs_mt_states and mt_states is None:
        raise ValueError(f"Method {method!r} needs --mt_states (a folder with train/ and test/ state stores).")
    stage1_adapter = check_stage1(Path(stage1), model, spec)
    # The floor of stage 1 (linear-probe) fits on the English examples stage 1 read.
    train = settings["train"] = run_train_settings(transfer_method, Path(stage1), train)
    run_dir, config = transfer_run(settings)
    if dry_run:
        _print_transfer_plan(settings, run_dir)
    elif finished(run_dir, config):
        link_latest(run_dir, "transfer")
        return run_dir
    if transfer_method.reuses is not None and not dry_run:  # the run it reads, made first if missing
        transfer(**{**settings, "method": transfer_method.reuses, "name": None})
    # The translated files this method reads, each checked here, before any model loads.
    source = spec.source_language
    translated = {
        role: translation_file(Path(translations), spec, role, *((source, language) if out else (language, source)))
        for role, out in transfer_method.translation_roles(train.select_best_on_validation).items()
    }
    if dry_run:
        return run_dir
    loaded = load(model, spec, architecture, load_in_4bit, train, recorded_pooling(Path(stage1)))
    transfer_method.check_fit(spec.kind, loaded.architecture)
    trains_adapter = transfer_method.trains
    if transfer_method.fits_source_probe:  # the frozen base model, read by a head fitted on English
        pooling = recorded_pooling(Path(stage1))
        network = fitted_probe(transfer_method, loaded, spec, data, train, pooling, run_dir.parent)
    else:
        network = stage1_model(loaded, stage1_adapter, model, stage1_mode, trains_adapter)
    view = transfer_method.view
    test_pairs = target_pairs(spec, language, "test", data, translated.get("test"), train.max_eval_samples)
    if transfer_method.reuses is not None:
        reused_dir = run_dir.parent / config["reuses"]
        network = combined_with_reused_run(transfer_method, reused_dir, network, loaded, model, spec, train)
    training = (
        _training(transfer_method, settings, spec, loaded, network, translated, test_pairs) if trains_adapter else None
    )
    summary = {
        "task": spec.name,
        "method": name or method,
        "seed": train.seed,
        "language": language,
        "config_hash": run_dir.name.rsplit("-", 1)[1],
    }
    with started(run_dir, config):
        if training is not None:
            network = training.network
            train_adapter(network, training.features, train, run_dir, training.collator, training.callbacks, resume)
            save_adapter(network, run_dir)
            summary = {**(training.callbacks[0].summary() if training.callbacks else {}), **summary}
        states = training.test_states if training is not None else None
        evaluate_run(network, loaded, spec, test_pairs, view, train, run_dir, summary, states)
        write_timings(run_dir)
    link_latest(run_dir, "transfer")
    return run_dir


def _print_transfer_plan(settings: dict, run_dir: Path) -> None:
    """The plan of one transfer command: the run a method reads (made first if missing), then its own run."""
    reused = get_method(settings["method"]).reuses
    status = []
    if reused is not None:
        reused_dir = transfer_run({**settings, "method": reused, "name": None})[0]
        status.append(
            run_status(
                PlannedStep("transfer", settings["language"], reused, settings["train"].seed),
                reused_dir,
                settings["resume"],
            )
        )
    step = PlannedStep("transfer", settings["language"], settings["name"] or settings["method"], settings["train"].seed)
    status.append(run_status(step, run_dir, settings["resume"]))
    print(describe_plan(status, every_step=True))


@dataclass
class Training:
    """What a transfer method trains: its model around the new adapter, the features and collator, the callbacks,
    and (FLARE-MT) the test set's encoder states, checked before training."""

    network: torch.nn.Module
    features: list[dict]
    collator: Callable
    callbacks: list
    test_states: EncoderStateStore | None


@phase("build")
def _training(transfer_method, settings: dict, spec, loaded, network, translated: dict, test_pairs) -> Training:
    """The new adapter on the stage-1 model (merged or kept frozen) and the translated data it trains on."""
    adapter, train, data, mt_states = (settings[name] for name in ("adapter", "train", "data", "mt_states"))
    check_target_modules(loaded.model, adapter.target_modules, settings["model"])
    view, source = transfer_method.view, spec.source_language
    store = EncoderStateStore(Path(mt_states) / "train") if transfer_method.needs_mt_states else None
    # The training features; for FLARE-MT also the reader whose text the encoder states must cover.
    state_reader = TaskEncoder(spec, loaded.tokenizer, loaded.architecture, view, train.max_length)
    test_states = None
    if store is not None:  # the test states are read after training: check them before it
        test_states = EncoderStateStore(Path(mt_states) / "test")
        check_states(test_states, state_reader, test_pairs)
    flare_config = adapter.flare_config(
        transfer_method.fusion(adapter.fusion),
        loaded.head_modules(spec, settings["trainable"]),
        store.d_model if store else None,
    )
    network = transfer_method.wrap(get_flare_model(network, flare_config, stage1=settings["stage1_mode"]))
    english = load_task_splits(spec, source, ["train"], data)["train"]
    train_pairs = pair_views(spec, load_record_file(spec, translated["train"]), english)[: train.max_train_samples]
    train_keys = check_states(store, state_reader, train_pairs) if store is not None else None
    features, report, _ = state_reader.encode(train_pairs)
    print(f"train: {report.summary()}")
    collator = PairedCollator.for_tokenizer(loaded.tokenizer)
    if store is not None:
        for feature, key in zip(features, train_keys, strict=True):
            feature["state_key"] = key
        collator = with_mt_states(collator, store)
    callbacks = []
    if train.select_best_on_validation:
        check_validation_role(spec)
        validation = pair_views(
            spec,
            load_record_file(spec, translated["validation"]),
            load_task_splits(spec, source, ["validation"], data)["validation"],
        )[: train.max_eval_samples]
        validation_states = None
        if store is not None:
            validation_states = EncoderStateStore(Path(mt_states) / "validation")
            check_states(validation_states, state_reader, validation)
        callbacks.append(validation_callback(network, loaded, spec, validation, view, train, validation_states))
    return Training(network, features, collator, callbacks, test_states)
