"""Checkpoints in other formats -> ordinary HF model folders the pipeline loads with `--model <folder>`.

`gguf_to_hf(file.gguf, folder)`: transformers reads a GGUF checkpoint (llama.cpp's format; quantised tensors are
dequantised) with `from_pretrained(..., gguf_file=...)`, but refuses to save a model loaded that way. Here the model
is rebuilt from its config without the GGUF quantisation record, given the dequantised weights, and saved with the
tokenizer read from the same file. Needs the `gguf` package (`pip install "flare-xlt[gguf]"`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .io import replace_directory_atomically

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def gguf_to_hf(gguf_file: str | Path, output: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write `output` (config.json, model.safetensors, the tokenizer) from a causal-LM GGUF file, atomically; an
    existing complete folder is kept unless `overwrite`. Returns the folder."""
    gguf_file, output = Path(gguf_file), Path(output)
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; valid choices: {', '.join(DTYPES)}.")
    if (output / "config.json").is_file() and not overwrite:
        return output
    if not gguf_file.is_file():
        raise FileNotFoundError(f"No GGUF file at {gguf_file}.")
    try:
        import gguf  # noqa: F401  (transformers imports it lazily and fails with a less direct message)
    except ImportError as error:
        raise ImportError('Reading GGUF needs the gguf package: pip install "flare-xlt[gguf]".') from error
    folder, name = str(gguf_file.parent), gguf_file.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # A model loaded from GGUF carries a quantisation record that makes save_pretrained refuse; its tensors are
    # already dequantised, so a model built from the config without the record holds the same weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    state = loaded.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{gguf_file}: the GGUF weights do not fit the model built from its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )
    model.generation_config = loaded.generation_config

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    replace_directory_atomically(output, write)
    return output
