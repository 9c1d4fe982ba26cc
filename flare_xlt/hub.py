"""Models named by a local folder or a model-hub name: their config, with errors that name the model."""

from __future__ import annotations

import os

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import AutoConfig


def model_config(model_name: str):
    """The model's config, or an OSError that names the model (transformers' own does not, offline)."""
    if not os.path.isdir(model_name):
        try:
            validate_repo_id(model_name)
        except HFValidationError:  # a path: the hub library's complaint about repository names would mislead
            raise FileNotFoundError(
                f"Model {model_name!r} is neither a local model folder (with config.json) nor a hub model name: "
                "no such folder."
            ) from None
    try:
        return AutoConfig.from_pretrained(model_name)
    except OSError as error:
        raise OSError(
            f"Model {model_name!r} is neither a local model folder (with config.json) nor a hub model that can be "
            f"downloaded or is cached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}): {error}"
        ) from error
