"""The files of a saved FLARE adapter: a standard PEFT LoRA (adapter_config.json, adapter_model.safetensors, which
plain PEFT loads as a target-only LoRA) and flare_config.json; FLARE-MT's projection joins the weights file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import huggingface_hub
import torch
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

if TYPE_CHECKING:
    from .model import FlareModel

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_WEIGHTS_NAME, "adapter_config.json", "flare_config.json")  # what save_pretrained writes
MT_PROJECTION_KEY = "lora_mt_projection"


def write_adapter_files(flare: FlareModel, directory: Path, peft_save: Callable[[str], None]) -> None:
    """Write the adapter's files into `directory` with `peft_save` (PEFT's save_pretrained of the FLARE adapter).

    PEFT writes a non-default adapter into a subfolder; staging the files and moving each into place keeps them at
    the top of `directory`, where plain PEFT finds them, and keeps every file whole."""
    adapter = flare.flare_adapter_name
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as staging:
        peft_save(staging)
        written = Path(staging) if adapter == "default" else Path(staging) / adapter
        if flare.flare_config.mt_source_dim is not None:
            # PEFT saves what lives in its tuner layers; the model-level MT projection joins the same file.
            weights = load_file(written / ADAPTER_WEIGHTS_NAME)
            projection = flare.lora_mt_projection[adapter].state_dict()
            weights.update({f"{MT_PROJECTION_KEY}.{key}": value.contiguous() for key, value in projection.items()})
            save_file(weights, written / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        flare.flare_config.save(written)
        for name in ADAPTER_FILES:
            os.replace(written / name, directory / name)


def adapter_folder(model_id: str | os.PathLike, revision: str | None, token: str | bool | None) -> Path:
    """A local adapter folder, or a hub repo's adapter files downloaded (and cached) at `revision`."""
    directory = Path(model_id)
    if directory.is_dir():
        return directory
    return Path(
        huggingface_hub.snapshot_download(
            str(model_id), revision=revision, token=token, allow_patterns=list(ADAPTER_FILES)
        )
    )


def read_adapter_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a saved adapter and the file they come from."""
    path = directory / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the adapter weights are missing from {directory}.")
    return load_file(path), str(path)


def load_adapter_weights(flare: FlareModel, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load FLARE adapter weights (as save_pretrained writes them) into `flare`, refusing missing or unexpected
    keys."""
    adapter, prefix = flare.flare_adapter_name, MT_PROJECTION_KEY + "."
    projection = {key.removeprefix(prefix): value for key, value in weights.items() if key.startswith(prefix)}
    weights = {key: value for key, value in weights.items() if not key.startswith(prefix)}
    try:
        result = set_peft_model_state_dict(flare, weights, adapter_name=adapter)
        if flare.flare_config.mt_source_dim is not None:
            flare.lora_mt_projection[adapter].load_state_dict(projection)
    except RuntimeError as error:
        raise ValueError(f"{source} does not fit this base model: {error}") from error
    marker = f".{adapter}."
    # The projection was loaded strictly on its own above.
    missing = [key for key in result.missing_keys if marker in key and not key.startswith(prefix)]
    unexpected = list(result.unexpected_keys)
    if projection and flare.flare_config.mt_source_dim is None:
        unexpected += [prefix + key for key in projection]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match this FLARE model: {len(missing)} missing keys (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})."
        )
