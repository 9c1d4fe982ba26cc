"""The stage-1 model a transfer starts from: its run checked, its adapter loaded, merged or kept frozen."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from peft import PeftModel

from ..tasks import TaskSpec
from .loading import LoadedModel
from .phases import phase
from .run_folder import canonical_settings


def check_stage1(stage1: Path, model: str, task: TaskSpec) -> Path:
    """The stage-1 run's adapter folder. A transfer run, or a stage-1 run of another base model or task, would be
    loaded without complaint and trained on: refused, by the config.json the run wrote."""
    adapter = stage1 / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"{adapter / 'adapter_config.json'} not found: --stage1 must be a stage-1 run directory, as flare-xlt "
            "finetune writes it."
        )
    config_path = stage1 / "config.json"
    if not config_path.is_file():  # an adapter folder laid out by hand: nothing to check it against
        return adapter
    recorded = json.loads(config_path.read_text(encoding="utf-8"))
    if recorded.get("stage") != "finetune":
        raise ValueError(
            f"--stage1 {stage1} is a {recorded.get('stage')} run ({recorded.get('method')}), not a stage-1 run: give "
            "the folder flare-xlt finetune wrote (its name holds -finetune-)."
        )
    mismatched = [
        f"{name} {recorded[name]!r}, not {asked!r}"
        for name, asked in (("model", model), ("task", task.name))
        if canonical_settings(recorded[name], name) != canonical_settings(asked, name)
    ]
    if mismatched:
        raise ValueError(f"--stage1 {stage1} was trained with {' and '.join(mismatched)}: use its stage-1 run.")
    return adapter


def recorded_pooling(stage1: Path) -> str | None:
    """The classification pooling the stage-1 run resolved and recorded (pooling.py), which every method of a
    transfer reads; None (the architecture's own head) for an adapter folder laid out by hand or a run recorded
    before pooling was a setting."""
    config_path = Path(stage1) / "config.json"
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text(encoding="utf-8")).get("pooling")


@phase("build")
def stage1_model(
    loaded: LoadedModel, adapter: Path, model_name: str, stage1_mode: str, trains_adapter: bool
) -> PeftModel | torch.nn.Module:
    """The stage-1 model a transfer method starts from: a new adapter goes on the PeftModel (get_flare_model merges
    or freezes it); an evaluation-only method reads it merged, as the trained methods start from it."""
    network = load_stage1(loaded, adapter, model_name)
    if not trains_adapter and stage1_mode == "merge":
        # Evaluate the model the trained methods start from: on a 4-bit base a merge re-quantises.
        network = network.merge_and_unload()
    return network


def load_stage1(loaded: LoadedModel, adapter: Path, model_name: str) -> PeftModel:
    try:
        network = PeftModel.from_pretrained(loaded.model, adapter)
    except RuntimeError as error:  # torch's load_state_dict lists every size mismatch
        raise ValueError(f"The stage-1 adapter {adapter} does not fit {model_name}: {error}") from error
    report_untrained(loaded, network, model_name)
    return network


def report_untrained(loaded: LoadedModel, network: PeftModel, model_name: str) -> None:
    """Warn about the weights the base checkpoint lacks (models.load_model keeps transformers' report of them quiet)
    that no adapter of `network` trains or holds, such as a task head missing from a stage-1 adapter: they keep their
    random initialisation, and the scores of a model reading them mean little."""
    kept = {name for config in network.peft_config.values() for name in (config.modules_to_save or [])}
    untrained = [key for key in loaded.newly_initialized if not kept & set(key.split(".")[:-1])]
    if untrained:
        warnings.warn(
            f"{model_name} has no {', '.join(untrained)} and no adapter trains or holds them: they keep their random "
            "initialisation. A stage-1 adapter must save the task head (flare-xlt finetune does).",
            UserWarning,
            stacklevel=2,
        )


def check_target_modules(model: torch.nn.Module, target_modules: list[str] | str | None, model_name: str) -> None:
    """PEFT names only the missing targets; the linear layers the model does have are the valid choices."""
    if not isinstance(target_modules, list):  # None (PEFT's default), "all-linear" or a regex
        return
    # A transfer checks the stage-1 model, whose targets PEFT has already wrapped: a LoRA layer's linear layer is its
    # base_layer, and the target names the wrapper; the adapters' own lora_A/lora_B layers are no targets.
    names = [
        name.removesuffix(".base_layer")
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(part.startswith("lora_") for part in name.split("."))
    ]
    missing = [target for target in target_modules if not any(_is_suffix(target, name) for name in names)]
    if missing:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise ValueError(
            f"target_modules {missing} match no linear layer of {model_name}; its linear layers are named: "
            f"{', '.join(leaves)}."
        )


def _is_suffix(target: str, name: str) -> bool:
    return name == target or name.endswith("." + target)
