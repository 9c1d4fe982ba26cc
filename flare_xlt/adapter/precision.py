"""Trainable copies of a 16-bit base stay in float32, so that the small updates of fine-tuning are not rounded away."""

from __future__ import annotations

from typing import Any

import torch
from peft.utils.other import ModulesToSaveWrapper
from torch import nn

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in on this device now, or None outside autocast."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def keep_trainables_in_float32(model: nn.Module) -> None:
    """Store every trainable module copy of a PEFT model (modules_to_save: heads, embeddings) in float32.

    transformers 5 loads a checkpoint in its own dtype (bf16 for Llama 3.1). PEFT upcasts LoRA weights but not the
    trainable copies of modules_to_save, and a bf16 weight cannot hold the small updates of a fine-tuning step:
    most round to zero. The copies keep the model's dtype at their edges: inputs are cast to float32 (autocast still
    computes matmuls in bf16) and outputs back to the dtype the rest of the model runs in.
    """
    for wrapper in model.modules():
        if isinstance(wrapper, ModulesToSaveWrapper):
            for copy_module in wrapper.modules_to_save.values():
                _run_in_float32(copy_module)
    left = [name for name, p in model.named_parameters() if p.requires_grad and p.dtype in _LOW_PRECISION]
    if left:
        raise RuntimeError(f"These trainable parameters are still in 16-bit precision: {left[:5]}.")


def _run_in_float32(module: nn.Module) -> None:
    dtypes = {parameter.dtype for parameter in module.parameters()} & set(_LOW_PRECISION)
    if not dtypes or not any(parameter.requires_grad for parameter in module.parameters()):
        return
    model_dtype = dtypes.pop()
    module.float()

    def to_dtype(value: Any, dtype: torch.dtype) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if isinstance(value, tuple):
            return tuple(to_dtype(item, dtype) for item in value)
        return value

    module.register_forward_pre_hook(
        lambda _m, args, kwargs: (
            to_dtype(args, torch.float32),
            {k: to_dtype(v, torch.float32) for k, v in kwargs.items()},
        ),
        with_kwargs=True,
    )
    module.register_forward_hook(lambda _m, _args, output: to_dtype(output, model_dtype))
