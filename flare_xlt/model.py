"""FlareModel: source binding, token pairing, checkpointing, save/load and generate.

One forward of a FlareModel is two passes over the same network:

1. Source pass (source_pass.py): the English input runs under no_grad with the FLARE adapter off (any other
   adapter, e.g. a frozen stage-1 task LoRA, stays on), and hooks record, for each fused module, the tensor it needs.
2. Target pass: the target input runs normally; each fused FlareLinear reads its recorded source tensor.

Source and target are paired token by token (token_pairing.py). A pre-hook on the wrapped transformers model pairs
the positions of every call, with positions FLARE counts itself; that covers training, evaluation and each
generate() step with a KV cache. The bound source stays in place after forward() returns because gradient
checkpointing re-runs layer forwards during backward (each recompute gets its own forward's source back through
the checkpoint context); the next call of the model outside a binding drops it.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from safetensors.torch import load_file, save_file
from torch import nn

from .architecture import encoder_prefix, input_stream_is_causal, stream_of
from .checkpointing import CheckpointedSources
from .config import DEFAULT_FUSION_LEAVES, FlareConfig
from .fusion import POSITION_MIXING_FUSIONS
from .layer import FlareLinear
from .precision import autocast_dtype, keep_trainables_in_float32
from .source_pass import enclosing_block, plan_early_exit, run_source_pass
from .state import DECODER_STREAM, INPUT_STREAM, BoundSource, FlareState
from .token_pairing import (
    GenerationPlan,
    SequenceHistory,
    TokenAlignment,
    align_tokens,
    first_token_only,
    prompt_before_answer,
    visible_cache_length,
)

if TYPE_CHECKING:
    from .source_cache import SourceCache

STAGE1_MODES = ("merge", "frozen")
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FILES = (ADAPTER_WEIGHTS_NAME, "adapter_config.json", "flare_config.json")  # what save_pretrained writes
MT_PROJECTION_KEY = "lora_mt_projection"


def _matches(name: str, patterns: list[str] | str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == pattern or name.endswith("." + pattern) for pattern in patterns)


def _pop_source_kwargs(kwargs: dict) -> dict:
    """Remove `source_<name>` arguments from kwargs and return them as `<name>` for the source pass."""
    return {key.removeprefix("source_"): kwargs.pop(key) for key in list(kwargs) if key.startswith("source_")}


class FlareModel(CheckpointedSources, PeftModel):
    """A PeftModel whose FLARE adapter fuses a source representation into its LoRA bottlenecks."""

    # The source pass stops as soon as every fused module has its tensor. False runs the whole network, head
    # included, and records the same tensors: the benchmarks emulate the authors' source pass with it and the tests
    # check that both give identical results. The default is the only setting training needs.
    source_pass_early_exit: bool = True
    # The training source cache (source_cache.py) that forward(source_keys=...) reads and fills; None: no cache.
    source_cache: SourceCache | None = None

    def __init__(self, model: nn.Module, flare_config: FlareConfig, adapter_name: str = "flare") -> None:
        lora_config = flare_config.to_lora_config()
        lora_config._register_custom_module({nn.Linear: FlareLinear})
        super().__init__(model, lora_config, adapter_name)
        self.flare_config = flare_config
        self.flare_adapter_name = adapter_name
        self.flare_state = FlareState()

        network = self.get_base_model()
        self.is_encoder_decoder = bool(getattr(network.config, "is_encoder_decoder", False))
        self._input_stream_causal = input_stream_is_causal(network, flare_config.causal)
        self.encoder_prefix = encoder_prefix(network)
        self.fused_modules = self._configure_layers(network)
        self._mixes_causal_positions = flare_config.fusion in POSITION_MIXING_FUSIONS and any(
            self._stream_is_causal(layer.flare_stream) for layer in self.fused_modules.values()
        )
        self._capture_points = self._plan_capture(network)
        self._early_exit = plan_early_exit(network, set(self._capture_points.values()))
        self._flare_head_copies = [
            module
            for module in network.modules()
            if isinstance(module, ModulesToSaveWrapper) and adapter_name in module.modules_to_save
        ]
        if flare_config.mt_source_dim is not None:
            widths = {layer.in_features for layer in self.fused_modules.values()}
            if len(widths) != 1:
                raise ValueError(
                    f"FLARE-MT feeds one projected tensor to every fused module, but their input widths differ: "
                    f"{sorted(widths)}. Choose fusion_modules of one width."
                )
            reference = next(iter(self.fused_modules.values())).lora_A[adapter_name].weight
            projection = nn.Linear(flare_config.mt_source_dim, widths.pop())
            # Named like PEFT's adapter weights; save_pretrained adds it to the adapter file (PEFT saves layers only).
            self.lora_mt_projection = nn.ModuleDict(
                {adapter_name: projection.to(device=reference.device, dtype=reference.dtype)}
            )
        network.register_forward_pre_hook(self._align_target, with_kwargs=True)
        if self.is_encoder_decoder:
            network.get_encoder().register_forward_pre_hook(self._align_encoder, with_kwargs=True)
        keep_trainables_in_float32(self)

    # ------------------------------------------------------------------ construction
    def _configure_layers(self, network: nn.Module) -> dict[str, FlareLinear]:
        config, adapter = self.flare_config, self.flare_adapter_name
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
            layer.flare_state = self.flare_state
            layer.flare_module_name = name
            layer.flare_stream = stream_of(name, self.encoder_prefix)
            layer.flare_unpaired = config.unpaired
        return {name: targets[name] for name in fused_names}

    def _stream_is_causal(self, stream: str) -> bool:
        return stream == DECODER_STREAM or self._input_stream_causal

    def _plan_capture(self, network: nn.Module) -> dict[str, str]:
        """Fused module name -> the module whose input (or, for offset 1, output) the source pass records."""
        if self.flare_config.source_site == "linear_input":
            return {name: name for name in self.fused_modules}
        points = {}
        for name, layer in self.fused_modules.items():
            block = enclosing_block(network, name)  # T5: block.i, not its sub-layer block.i.layer.j
            in_encoder = self.encoder_prefix is None or block.startswith(self.encoder_prefix)
            if layer.flare_stream != (INPUT_STREAM if in_encoder else DECODER_STREAM):
                raise ValueError(
                    f"{name} reads encoder tokens inside decoder block {block}; source_site='block_input' cannot "
                    "pair it with that block's state. Use source_site='linear_input' or leave it out of fusion_modules."
                )
            points[name] = block
        return points

    # ------------------------------------------------------------------ source pass and binding
    @property
    def fusion_active(self) -> bool:
        return bool(self.fused_modules) and (self.training or self.flare_config.fuse_at_inference)

    def _run_source_pass(
        self, source_input_ids: torch.Tensor, source_attention_mask: torch.Tensor | None, source_kwargs: dict
    ) -> BoundSource:
        network = self.get_base_model()
        if source_attention_mask is None:
            source_attention_mask = torch.ones_like(source_input_ids)
        # Recorded in the dtype A·x_s is computed in: autocast's (every shipped config trains under bf16 autocast),
        # else the adapter's (fp32 adapters on a bf16 model).
        autocast = autocast_dtype(source_input_ids.device)
        compute_dtypes = {
            point: autocast or self.fused_modules[name].lora_A[self.flare_adapter_name].weight.dtype
            for name, point in self._capture_points.items()
        }
        inputs = {"input_ids": source_input_ids, "attention_mask": source_attention_mask}
        # A config that asks for every hidden state or attention map (the authors load their models that way) would
        # make the source pass collect them until it stops; it needs none. An explicit source_<name> argument wins.
        for flag in ("output_hidden_states", "output_attentions"):
            if getattr(network.config, flag, False):
                inputs[flag] = False
        inputs.update(source_kwargs)
        if getattr(network.config, "use_cache", None) is not None:
            inputs["use_cache"] = False
        early_exit = self._early_exit if self.source_pass_early_exit else None
        if self.is_encoder_decoder and not (early_exit is not None and early_exit.encoder_only):
            start = network.config.decoder_start_token_id
            if start is None:
                raise ValueError(
                    "The model config has no decoder_start_token_id, which the source pass feeds the decoder."
                )
            inputs["decoder_input_ids"] = torch.full(
                (source_input_ids.shape[0], 1), start, dtype=torch.long, device=source_input_ids.device
            )
        # The FLARE adapter's trained copies of modules_to_save (e.g. embed_tokens) are part of the adapter too.
        # The base-class switch flips only the flag; the subclass's would also change requires_grad.
        head_copies = [module for module in self._flare_head_copies if not module.disable_adapters]
        for module in head_copies:
            AuxiliaryTrainingWrapper.enable_adapters(module, False)
        self.flare_state.capturing = True
        try:
            captured = run_source_pass(
                network,
                inputs,
                set(self._capture_points.values()),
                capture_output=self.flare_config.source_layer_offset == 1,
                compute_dtypes=compute_dtypes,
                early_exit=early_exit,
                deterministic=not self.flare_config.source_dropout,
            )
        finally:
            self.flare_state.capturing = False
            for module in head_copies:
                AuxiliaryTrainingWrapper.enable_adapters(module, True)
        for name, point in self._capture_points.items():
            width, expected = captured[point].shape[-1], self.fused_modules[name].in_features
            if width != expected:  # only block_input can differ: a module reading another width than the block's
                raise ValueError(
                    f"{name} reads {expected}-wide inputs, but source_site='block_input' gives it its block's "
                    f"{width}-wide state. Fuse modules that read the model width (q, k, v, the MLP's input "
                    "projections) or use source_site='linear_input'."
                )
        return BoundSource(
            {name: captured[point] for name, point in self._capture_points.items()},
            self._source_masks(source_input_ids, source_attention_mask),
        )

    def _source_masks(self, source_input_ids: torch.Tensor, source_attention_mask: torch.Tensor) -> dict:
        """Stream -> (B, S) mask of the real source tokens the source pass records."""
        masks = {INPUT_STREAM: source_attention_mask.bool()}
        if self.is_encoder_decoder:  # the source decoder ran on the start token only
            masks[DECODER_STREAM] = torch.ones(
                source_input_ids.shape[0], 1, dtype=torch.bool, device=source_input_ids.device
            )
        return masks

    def _cached_source(
        self, source_keys: list[str], source_input_ids, source_attention_mask, source_kwargs
    ) -> BoundSource:
        """The batch's source from the attached cache when it holds every row, else from a source pass whose rows it
        then keeps."""
        if self.source_cache is None:
            raise ValueError(
                "source_keys name rows of a training source cache, but none is attached to this model; attach one "
                "with flare_xlt.source_cache.open_source_cache, or leave source_keys out."
            )
        if len(source_keys) != source_input_ids.shape[0]:
            raise ValueError(f"Got {len(source_keys)} source_keys for a source batch of {source_input_ids.shape[0]}.")
        if source_attention_mask is None:
            source_attention_mask = torch.ones_like(source_input_ids)
        source = self.source_cache.bound(source_keys, self._source_masks(source_input_ids, source_attention_mask))
        if source is None:
            source = self._run_source_pass(source_input_ids, source_attention_mask, source_kwargs)
            streams = {name: layer.flare_stream for name, layer in self.fused_modules.items()}
            self.source_cache.add(source_keys, source, streams)
        return source

    def _project_mt_source(
        self, source_embeds: torch.Tensor, source_attention_mask: torch.Tensor | None
    ) -> BoundSource:
        if self.flare_config.mt_source_dim is None:
            raise ValueError("source_embeds needs a FLARE-MT adapter: set FlareConfig.mt_source_dim to their width.")
        if source_embeds.dim() != 3 or source_embeds.shape[-1] != self.flare_config.mt_source_dim:
            raise ValueError(
                f"source_embeds must be (batch, length, {self.flare_config.mt_source_dim}) as set by mt_source_dim; "
                f"got shape {tuple(source_embeds.shape)}."
            )
        projection = self.lora_mt_projection[self.flare_adapter_name]
        projected = projection(source_embeds.to(device=projection.weight.device, dtype=projection.weight.dtype))
        if source_attention_mask is None:
            source_attention_mask = torch.ones(source_embeds.shape[:2], dtype=torch.bool, device=projected.device)
        mask = source_attention_mask.to(projected.device).bool()
        return BoundSource(
            dict.fromkeys(self.fused_modules, projected), dict.fromkeys((INPUT_STREAM, DECODER_STREAM), mask)
        )

    def _prepare_source(
        self, source_input_ids, source_attention_mask, source_embeds, source_kwargs, source_keys
    ) -> BoundSource:
        source = source_embeds if source_embeds is not None else source_input_ids
        if source is not None and source_attention_mask is not None:
            if source_attention_mask.shape != source.shape[:2]:
                raise ValueError(
                    f"source_attention_mask {tuple(source_attention_mask.shape)} does not match the source "
                    f"{tuple(source.shape)}: it needs the source's (batch, length) {tuple(source.shape[:2])}."
                )
        if source_embeds is not None:
            if source_input_ids is not None or source_keys is not None:
                raise ValueError(
                    "Pass either source_input_ids (FLARE, with source_keys for the source cache) or source_embeds "
                    "(FLARE-MT), not both."
                )
            return self._project_mt_source(source_embeds, source_attention_mask)
        if self.flare_config.mt_source_dim is not None:
            raise ValueError(
                "This is a FLARE-MT adapter: pass source_embeds (e.g. NLLB encoder states), not token ids."
            )
        if source_keys is not None:
            return self._cached_source(source_keys, source_input_ids, source_attention_mask, source_kwargs)
        return self._run_source_pass(source_input_ids, source_attention_mask, source_kwargs)

    @contextmanager
    def _binding(
        self,
        source_input_ids: torch.Tensor | None,
        source_attention_mask: torch.Tensor | None,
        source_embeds: torch.Tensor | None,
        source_kwargs: dict,
        allow_batch_expansion: bool,
        generation: GenerationPlan | None = None,
        source_keys: list[str] | None = None,
    ) -> Iterator[None]:
        state = self.flare_state
        self._refuse_unmanaged_checkpointing()
        outer = (state.source, state.allow_batch_expansion, state.positions.histories, state.positions.generation)
        given = source_input_ids is not None or source_embeds is not None
        if given and self.fusion_active:
            state.source = self._prepare_source(
                source_input_ids, source_attention_mask, source_embeds, source_kwargs, source_keys
            )
        elif state.open_bindings == 0:
            state.source = None  # not even the source kept from a training step for checkpointing
        state.allow_batch_expansion = allow_batch_expansion or state.allow_batch_expansion
        state.positions.reset(generation)  # every binding starts new sequences
        state.open_bindings += 1
        try:
            yield
        finally:
            state.open_bindings -= 1
            if state.open_bindings:  # nested: give the enclosing source() back its source and sequences
                state.source, state.allow_batch_expansion, state.positions.histories, state.positions.generation = outer
            else:  # keep the source for gradient checkpointing's recompute during backward
                state.allow_batch_expansion = False
                state.positions.generation = None

    @contextmanager
    def source(
        self,
        source_input_ids: torch.Tensor | None = None,
        source_attention_mask: torch.Tensor | None = None,
        source_embeds: torch.Tensor | None = None,
        **source_kwargs: Any,
    ) -> Iterator[FlareModel]:
        """Run the source pass once and fuse it into every call inside the block (forward, generate, the raw model)."""
        with self._binding(source_input_ids, source_attention_mask, source_embeds, source_kwargs, True):
            yield self

    def _current_source(self, batch: int, target: torch.Tensor | None) -> BoundSource | None:
        state = self.flare_state
        if state.open_bindings == 0 or not self.fusion_active:
            # Outside forward/generate/source() a source kept from an earlier call is stale; and in eval mode
            # with fuse_at_inference=False nothing is fused, even inside source().
            state.source = None
        if state.source is None:
            state.alignments = {}
            return None
        return self._match_batch(state.source, batch, target)

    @staticmethod
    def _input_tokens(args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(input ids or embeds, attention mask) of a model or encoder call."""
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        return tokens, kwargs.get("attention_mask")

    def _align_encoder(self, _encoder: nn.Module, args: tuple, kwargs: dict) -> None:
        """The encoder of an encoder-decoder model runs its whole input in one call (generate() runs it alone)."""
        if self.flare_state.capturing:
            return None
        tokens, attention_mask = self._input_tokens(args, kwargs)
        batch, length = tokens.shape[:2] if tokens is not None else attention_mask.shape
        if self._current_source(batch, tokens) is None:
            return None
        _, history = self.flare_state.positions.advance(
            INPUT_STREAM, batch, length, attention_mask, None, self._device(), lambda real: real
        )
        self.flare_state.alignments = {
            **self.flare_state.alignments,
            INPUT_STREAM: self._alignment(INPUT_STREAM, history, length, 0),
        }
        return None

    def _align_target(self, _network: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pair the positions this call of the wrapped model runs (a forward, a prefill or one generation step)."""
        state = self.flare_state
        if state.capturing:
            return None
        tokens, attention_mask = self._input_tokens(args, kwargs)
        cache_length = visible_cache_length(args, kwargs)
        if not self.is_encoder_decoder:
            batch, length = tokens.shape[:2]
            if self._current_source(batch, tokens) is None:
                return None
            labels = kwargs.get("labels") if self._input_stream_causal else None

            def prompt(real: torch.Tensor) -> torch.Tensor:
                usable = labels is not None and tuple(labels.shape) == tuple(real.shape)
                return prompt_before_answer(real, labels if usable else None)

            past, history = state.positions.advance(
                INPUT_STREAM, batch, length, attention_mask, cache_length, self._device(), prompt
            )
            state.alignments = {INPUT_STREAM: self._alignment(INPUT_STREAM, history, length, past)}
            return None

        decoder_tokens = next(
            (
                kwargs[key]
                for key in ("decoder_input_ids", "decoder_inputs_embeds", "labels")
                if kwargs.get(key) is not None
            ),
            None,
        )
        shaped = next((value for value in (decoder_tokens, tokens, attention_mask) if value is not None), None)
        batch = shaped.shape[0] if shaped is not None else kwargs["encoder_outputs"][0].shape[0]
        if self._current_source(batch, tokens) is None:
            return None
        alignments = {}
        if tokens is None:  # the encoder ran before this call (generate() runs it once, up front)
            history = state.positions.histories.get(INPUT_STREAM)
            if history is None:
                raise RuntimeError(
                    "This encoder-decoder call passes encoder_outputs from an encoder that did not run under the "
                    "bound source; run the encoder inside the same FlareModel.generate() or source() block."
                )
            history = history.rows_repeated(batch)
            alignments[INPUT_STREAM] = self._alignment(INPUT_STREAM, history, history.length, 0)
        if decoder_tokens is not None:
            decoder_length = decoder_tokens.shape[1]
            past, history = state.positions.advance(
                DECODER_STREAM,
                batch,
                decoder_length,
                kwargs.get("decoder_attention_mask"),
                cache_length,
                self._device(),
                first_token_only,  # the decoder start token, the one decoder token the source pass ran
            )
            alignments[DECODER_STREAM] = self._alignment(DECODER_STREAM, history, decoder_length, past)
        state.alignments = alignments  # the encoder's hook adds the input stream when the encoder runs in this call
        return None

    def _device(self) -> torch.device:
        return next(iter(self.flare_state.source.masks.values())).device

    def _alignment(self, stream: str, history: SequenceHistory, length: int, past: int) -> TokenAlignment:
        causal = self._stream_is_causal(stream)
        mixing = self.flare_config.fusion in POSITION_MIXING_FUSIONS
        if mixing and causal and past > 0:
            raise ValueError(
                f"fusion={self.flare_config.fusion!r} mixes target positions, which needs the whole sequence at once; "
                "it cannot run with a KV cache on a causal model. Pass use_cache=False (FlareModel.generate does)."
            )
        return align_tokens(
            self.flare_state.source.masks[stream],
            history.real,
            history.prompt,
            length,
            pairing=self.flare_config.pairing,
            mask_source_padding=self.flare_config.mask_source_padding,
            causal=causal,
            need_allowed=mixing,
        )

    def _match_batch(self, source: BoundSource, batch: int, target: torch.Tensor | None) -> BoundSource:
        if source.batch_size == batch:
            return source
        if self.flare_state.allow_batch_expansion and batch % source.batch_size == 0:
            self.flare_state.source = source.repeat_rows(batch // source.batch_size)
            return self.flare_state.source
        source_shape = tuple(next(iter(source.masks.values())).shape)
        target_shape = tuple(target.shape) if target is not None else (batch,)
        raise ValueError(
            f"Source batch size {source.batch_size} (source shape {source_shape}) differs from target batch size "
            f"{batch} (target shape {target_shape}); source and target rows must pair one to one."
        )

    # ------------------------------------------------------------------ public API
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        source_input_ids: torch.Tensor | None = None,
        source_attention_mask: torch.Tensor | None = None,
        source_embeds: torch.Tensor | None = None,
        source_keys: list[str] | None = None,
        **kwargs: Any,
    ):
        """The model's usual forward on the target input, with the source fused.

        Without a source (and outside `source()`), every FLARE layer computes plain LoRA, B·A·x_t·α/r: the same
        as inference without a source. Extra `source_<name>` arguments (e.g. source_token_type_ids) go to the
        source pass as `<name>`. `source_keys` (one per row, see source_cache.py) make the attached source cache
        give the source, or keep it when the cache lacks a row.
        """
        source_kwargs = _pop_source_kwargs(kwargs)
        with self._binding(
            source_input_ids, source_attention_mask, source_embeds, source_kwargs, False, source_keys=source_keys
        ):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def generate(
        self,
        *args: Any,
        source_input_ids: torch.Tensor | None = None,
        source_attention_mask: torch.Tensor | None = None,
        source_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """generate() with the source fused at every step; the source is repeated per beam/returned sequence.

        The prompt (the prefill) is paired as FlareConfig.pairing says and new tokens as answer tokens are in a
        teacher-forced forward, so generation and teacher forcing agree (see token_pairing.py). FLARE counts the
        positions itself and checks its count against the KV cache. Position-mixing fusions on causal models run
        without a KV cache. Extra `source_<name>` arguments go to the source pass as `<name>`, as in forward().
        """
        if self._mixes_causal_positions and self.fusion_active:
            if kwargs.get("use_cache"):
                raise ValueError(
                    f"fusion={self.flare_config.fusion!r} mixes target positions and cannot use a KV cache on a causal "
                    "model; drop use_cache=True."
                )
            kwargs["use_cache"] = False
        source_kwargs = _pop_source_kwargs(kwargs)
        network = self.get_base_model()
        generation_config = kwargs.get("generation_config") or network.generation_config
        prompt_mask = kwargs.get("attention_mask")
        plan = GenerationPlan(
            use_cache=bool(kwargs.get("use_cache", generation_config.use_cache)),
            prompt_masks={INPUT_STREAM: prompt_mask} if prompt_mask is not None and prompt_mask.dim() == 2 else {},
        )
        with self._binding(source_input_ids, source_attention_mask, source_embeds, source_kwargs, True, plan):
            return network.generate(*args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write adapter_config.json + adapter_model.safetensors (a standard PEFT LoRA) and flare_config.json.

        PEFT writes a non-default adapter into a subfolder; staging the files and moving each into place keeps
        them at the top of `save_directory`, where plain PEFT finds them, and keeps every file whole.
        """
        kwargs["selected_adapters"] = [self.flare_adapter_name]
        kwargs["safe_serialization"] = True
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as staging:
            super().save_pretrained(staging, **kwargs)
            written = Path(staging)
            if self.flare_adapter_name != "default":
                written = written / self.flare_adapter_name
            if self.flare_config.mt_source_dim is not None:
                # PEFT saves what lives in its tuner layers; the model-level MT projection joins the same file.
                weights = load_file(written / ADAPTER_WEIGHTS_NAME)
                projection = self.lora_mt_projection[self.flare_adapter_name].state_dict()
                weights.update({f"{MT_PROJECTION_KEY}.{key}": value.contiguous() for key, value in projection.items()})
                save_file(weights, written / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
            self.flare_config.save(written)
            for name in ADAPTER_FILES:
                os.replace(written / name, directory / name)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "flare",
        is_trainable: bool = False,
        stage1: str = "merge",
        revision: str | None = None,
        token: str | bool | None = None,
        **_: Any,
    ) -> FlareModel:
        """Restore a FLARE adapter saved by save_pretrained onto `model` (a base model, or a PeftModel whose
        stage-1 adapter is handled as `stage1`). `model_id` is a local folder or, as for PeftModel.from_pretrained,
        a hub repo id, downloaded (and cached) at `revision` with `token`."""
        directory = Path(model_id)
        if not directory.is_dir():
            directory = Path(
                huggingface_hub.snapshot_download(
                    str(model_id), revision=revision, token=token, allow_patterns=list(ADAPTER_FILES)
                )
            )
        config = FlareConfig.load(directory)
        flare = get_flare_model(model, config, adapter_name=adapter_name, stage1=stage1)
        weights_path = directory / ADAPTER_WEIGHTS_NAME
        if not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path} not found: the adapter weights are missing from {directory}.")
        flare.load_flare_weights(load_file(weights_path), source=str(weights_path))
        if not is_trainable:
            flare.requires_grad_(False)
            flare.eval()
        return flare

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str = "Upload FLARE adapter",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        **_: Any,
    ) -> str:
        """Upload what save_pretrained writes (the PEFT LoRA and flare_config.json) to a hub repo, created if
        missing; returns the commit's URL. from_pretrained(model, repo_id) loads it back."""
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision
            )
        return str(commit)

    def load_flare_weights(self, weights: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load FLARE adapter weights (as save_pretrained writes them), refusing missing or unexpected keys."""
        prefix = MT_PROJECTION_KEY + "."
        projection = {key.removeprefix(prefix): value for key, value in weights.items() if key.startswith(prefix)}
        weights = {key: value for key, value in weights.items() if not key.startswith(prefix)}
        try:
            result = set_peft_model_state_dict(self, weights, adapter_name=self.flare_adapter_name)
            if self.flare_config.mt_source_dim is not None:
                self.lora_mt_projection[self.flare_adapter_name].load_state_dict(projection)
        except RuntimeError as error:
            raise ValueError(f"{source} does not fit this base model: {error}") from error
        marker = f".{self.flare_adapter_name}."
        # The projection was loaded strictly on its own above.
        missing = [key for key in result.missing_keys if marker in key and not key.startswith(prefix)]
        unexpected = list(result.unexpected_keys)
        if projection and self.flare_config.mt_source_dim is None:
            unexpected += [prefix + key for key in projection]
        if missing or unexpected:
            raise ValueError(
                f"{source} does not match this FLARE model: {len(missing)} missing keys (first: {missing[:3]}), "
                f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})."
            )

    def add_frozen_adapter(self, adapter_name: str, lora_config, weights: dict[str, torch.Tensor]) -> None:
        """Add a trained LoRA (e.g. the stage-1 English task adapter) that stays on, frozen and unmerged, in both
        passes, under the FLARE adapter. It computes exactly what merging it would: no dropout on its input."""
        lora_config = copy.deepcopy(lora_config)
        lora_config.modules_to_save = None  # get_flare_model already put the trained copies in place
        lora_config.lora_dropout = 0.0
        self.add_adapter(adapter_name, lora_config)
        weights = {key: value for key, value in weights.items() if ".modules_to_save." not in key}
        set_peft_model_state_dict(self, weights, adapter_name=adapter_name)
        for module in self.get_base_model().modules():
            if isinstance(module, LoraLayer):
                module.set_adapter([self.flare_adapter_name, adapter_name])
        marker = f".{adapter_name}."
        for name, parameter in self.named_parameters():
            if marker in name:
                parameter.requires_grad_(False)


def _unload_keeping_trained_modules(model: PeftModel) -> nn.Module:
    """`model.unload()` with each trained modules_to_save copy (a task head, embeddings) in place of the module it
    was copied from. Which of the two unload() returns differs between PEFT versions (0.21 the copy, 0.22 the
    original), so the copies are taken here and put back by name."""
    adapter = model.active_adapter
    trained = {
        name: module.modules_to_save[adapter]
        for name, module in model.get_base_model().named_modules()
        if isinstance(module, ModulesToSaveWrapper) and adapter in module.modules_to_save
    }
    network = model.unload()
    for name, module in trained.items():
        parent, _, attribute = name.rpartition(".")
        setattr(network.get_submodule(parent), attribute, module)
    return network


def get_flare_model(
    model: nn.Module, config: FlareConfig, adapter_name: str = "flare", stage1: str = "merge"
) -> FlareModel:
    """Wrap `model` (any transformers PreTrainedModel) with a FLARE adapter.

    If `model` is a PeftModel carrying the stage-1 English task adapter, `stage1` decides its fate:
    "merge" folds it into the base weights (the authors' way); "frozen" keeps it as an unmerged, frozen LoRA that
    is on in both the source and the target pass (better for 4-bit bases, where merging re-quantises). Either way
    its trained modules_to_save (e.g. the classifier) become the base modules.
    """
    if stage1 not in STAGE1_MODES:
        raise ValueError(f"Unknown stage1 mode {stage1!r}; valid choices: {', '.join(STAGE1_MODES)}.")
    stage1_adapters = {}
    if isinstance(model, PeftModel):
        if stage1 == "merge":
            model = model.merge_and_unload()
        else:
            stage1_adapters = {
                name: (lora_config, get_peft_model_state_dict(model, adapter_name=name))
                for name, lora_config in model.peft_config.items()
            }
            model = _unload_keeping_trained_modules(model)
    flare = FlareModel(model, config, adapter_name)
    for name, (lora_config, weights) in stage1_adapters.items():
        flare.add_frozen_adapter(name, lora_config, weights)
    return flare
