"""How a FlareModel sets itself up on a network: which of the adapter's LoRA layers fuse, which token stream each
reads, and which module's input (or output) the source pass records for each."""

from __future__ import annotations

import re

from peft.tuners.lora import LoraLayer
from torch import nn

from .architecture import stream_of
from .config import DEFAULT_FUSION_LEAVES, FlareConfig
from .layer import FlareLinear
from .source_pass import enclosing_block
from .state import DECODER_STREAM, INPUT_STREAM, FlareState


def _matches(name: str, patterns: list[str] | str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == pattern or name.endswith("." + pattern) for pattern in patterns)


def configure_layers(
    network: nn.Module, config: FlareConfig, adapter: str, state: FlareState, encoder_prefix: str | None
) -> dict[str, FlareLinear]:
    """Set up every FlareLinear of `adapter` (its fusion, the shared state, its name and stream); returns the fused
    ones by name. Targets that are not nn.Linear, and fusion_modules that match no target, are refused."""
    targets: dict[str, FlareLinear] = {}
    unsupported = []
    for name, module in network.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            if isinstance(module, FlareLinear):
                targets[name] = module
            else:
                unsupported.append(f"{name} ({type(module.get_base_layer()).__name__})")
    if unsupported:
        raise ValueError(
            f"FLARE supports nn.Linear targets only; these targets are not: {unsupported}. Narrow target_modules."
        )
    fused_names = []
    if config.fusion is not None:
        patterns = config.fusion_modules if config.fusion_modules is not None else list(DEFAULT_FUSION_LEAVES)
        fused_names = [name for name in targets if _matches(name, patterns)]
        if isinstance(config.fusion_modules, list):
            for pattern in config.fusion_modules:
                if not any(_matches(name, [pattern]) for name in targets):
                    raise ValueError(
                        f"fusion_modules entry {pattern!r} matches none of the LoRA targets: {sorted(targets)}."
                    )
        if not fused_names:
            raise ValueError(f"fusion_modules={patterns!r} matches none of the LoRA targets: {sorted(targets)}.")
    for name, layer in targets.items():
        fused = name in fused_names
        layer.configure_flare(
            adapter,
            config.fusion if fused else None,
            heads=config.cross_attention_heads,
            dropout=config.cross_attention_dropout,
        )
        layer.flare_state = state
        layer.flare_module_name = name
        layer.flare_stream = stream_of(name, encoder_prefix)
        layer.flare_unpaired = config.unpaired
    return {name: targets[name] for name in fused_names}


def plan_capture(
    network: nn.Module, config: FlareConfig, fused_modules: dict[str, FlareLinear], encoder_prefix: str | None
) -> dict[str, str]:
    """Fused module name -> the module whose input (or, for offset 1, output) the source pass records."""
    if config.source_site == "linear_input":
        return {name: name for name in fused_modules}
    points = {}
    for name, layer in fused_modules.items():
        block = enclosing_block(network, name)  # T5: block.i, not its sub-layer block.i.layer.j
        in_encoder = encoder_prefix is None or block.startswith(encoder_prefix)
        if layer.flare_stream != (INPUT_STREAM if in_encoder else DECODER_STREAM):
            raise ValueError(
                f"{name} reads encoder tokens inside decoder block {block}; source_site='block_input' cannot "
                "pair it with that block's state. Use source_site='linear_input' or leave it out of fusion_modules."
            )
        points[name] = block
    return points
