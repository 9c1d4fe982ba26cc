"""The source pass: the English input runs through the same network to give each fused module its source tensor.

It runs under no_grad with the FLARE adapter off (any other adapter, e.g. a frozen stage-1 task LoRA, stays on).
Forward hooks record, for each fused module, the tensor it needs: its own input (source_site="linear_input"), or
the hidden state entering or leaving its block ("block_input").

Early exit: the rest of the network after the last capture point (later blocks, the LM head with its large
vocabulary) is not needed, so it does not run. The pass calls the backbone (`network.base_model`, which has no task
head) with its block list cut after the last block that holds a capture point. In a single process it also stops
inside that block, as soon as the last capture point has recorded, by raising an exception that the pass catches:
the rest of the block (for q/v projections: the attention and the MLP) would be a whole block of wasted compute,
about 9 % of a LoRA step on a 4-layer model. Inside a process group it does not: sharding frameworks (DeepSpeed
ZeRO-3, FSDP), which gather a module's parameters in its forward pre-hooks and release them in its post-hooks, must
see only ordinary, complete forwards, so there every module that starts also finishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


def enclosing_block(model: nn.Module, module_name: str) -> str:
    """The name of the transformer block that holds (or is) `module_name`: the element of the model's stack of
    blocks, the outermost ModuleList on its path. Inner lists are parts of a block (T5's sub-layers
    `block.i.layer.j`, a mixture of experts' `experts.k`), whose inputs are not the block's."""
    parts = module_name.split(".")
    for end in range(1, len(parts) + 1):
        if parts[end - 1].isdigit() and isinstance(model.get_submodule(".".join(parts[: end - 1])), nn.ModuleList):
            return ".".join(parts[:end])
    raise ValueError(
        f"source_site='block_input' needs the transformer block of {module_name!r}, but no ModuleList element "
        "encloses it; use source_site='linear_input'."
    )


@dataclass
class EarlyExit:
    """How the source pass skips what follows the last capture point."""

    runner: str  # the submodule to call: the backbone, the encoder of an encoder-decoder model, or "" (all of it)
    block_list: str  # the ModuleList holding the last capture point's block
    keep: int  # blocks of that list that run
    encoder_decoder: bool = False

    @property
    def encoder_only(self) -> bool:
        """Only the encoder of an encoder-decoder model runs: it takes no decoder inputs."""
        return self.runner != "" and self.encoder_decoder


def plan_early_exit(network: nn.Module, capture_points: set[str]) -> EarlyExit | None:
    """Call the backbone (no task head), with the block list cut after the last capture point's block."""
    order = {name: index for index, (name, _) in enumerate(network.named_modules())}
    try:
        blocks = (enclosing_block(network, point) for point in capture_points)
        last_block = max(blocks, key=order.__getitem__)
    except ValueError:  # a capture point outside every block list: run everything
        return None
    block_list, _, index = last_block.rpartition(".")
    encoder_decoder = bool(getattr(network.config, "is_encoder_decoder", False))
    backbone = network.get_encoder() if encoder_decoder else getattr(network, "base_model", network)
    runner = next((name for name, module in network.named_modules() if module is backbone), "")
    if not all(point.startswith(runner + ".") for point in capture_points):
        runner = ""  # e.g. decoder modules are fused: the whole encoder-decoder runs (on one decoder token)
    return EarlyExit(runner, block_list, int(index) + 1, encoder_decoder)


class _AllCaptured(Exception):
    """Raised by the last capture point's hook to stop the source pass there (single process only)."""


def may_stop_inside_a_forward() -> bool:
    """Whether the source pass may stop at its last capture point by unwinding the forwards that are running.
    Sharding frameworks run only in a process group (torch.distributed initialised, also by DeepSpeed on one
    GPU); without one, nothing holds state between a module's pre- and post-hooks that an exception could strand."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


def _first_hidden(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple | list) else value


def run_source_pass(
    network: nn.Module,
    inputs: dict,
    capture_points: set[str],
    capture_output: bool,
    compute_dtypes: dict[str, torch.dtype],
    early_exit: EarlyExit | None,
    deterministic: bool = False,
) -> dict[str, torch.Tensor]:
    """Run the network on the source `inputs` under no_grad and return capture point -> recorded tensor, in its
    compute dtype. With `deterministic`, every module runs in eval mode (no dropout, no attention dropout) whatever
    the network's mode; each module's own training flag is set back afterwards. With `early_exit`, the pass stops
    after the last capture point (see the module docstring).

    Points that read one tensor (q and v of a block read the same normalised input) share one copy of it, which
    autograd then saves once in the target pass.
    """
    captured: dict[str, torch.Tensor] = {}
    copies: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
    stop_at_last_point = early_exit is not None and may_stop_inside_a_forward()

    def record(point: str, tensor: torch.Tensor) -> None:
        if point in captured:
            raise RuntimeError(
                f"{point} ran twice in one source pass; FLARE needs each fused module to run once per forward "
                "(weight-shared layers are not supported)."
            )
        key = (id(tensor), compute_dtypes[point])
        if key not in copies:  # the original stays referenced until the pass ends, so its id is not reused
            copies[key] = (tensor, tensor.to(compute_dtypes[point]))
        captured[point] = copies[key][1]
        if stop_at_last_point and len(captured) == len(capture_points):
            raise _AllCaptured

    handles = []
    for point in capture_points:
        module = network.get_submodule(point)
        if capture_output:
            hook = lambda _m, _a, _k, output, point=point: record(point, _first_hidden(output))  # noqa: E731
            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        else:
            hook = lambda _m, args, kwargs, point=point: record(  # noqa: E731
                point, args[0] if args else kwargs["hidden_states"]
            )
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    runner, cut = network, None
    if early_exit is not None:
        runner = network.get_submodule(early_exit.runner)
        parent_name, _, attribute = early_exit.block_list.rpartition(".")
        parent = network.get_submodule(parent_name)
        blocks = getattr(parent, attribute)
        if early_exit.keep < len(blocks):
            cut = (parent, attribute, blocks)
            setattr(parent, attribute, nn.ModuleList(list(blocks)[: early_exit.keep]))
    # The flags themselves, not train()/eval(), which a module may override; and only those that are set.
    training = [module for module in network.modules() if module.training] if deterministic else []
    for module in training:
        module.training = False
    try:
        with torch.no_grad():
            runner(**inputs)
    except _AllCaptured:
        pass
    finally:
        for module in training:
            module.training = True
        for handle in handles:
            handle.remove()
        if cut is not None:
            setattr(cut[0], cut[1], cut[2])
    missing = sorted(capture_points - set(captured))
    if missing:
        raise RuntimeError(f"These fusion points never ran in the source pass, so they have no source: {missing}.")
    return captured
