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
from torch import nn

from .adapter_files import adapter_folder, load_adapter_weights, read_adapter_weights, write_adapter_files
from .alignment_hooks import PositionAligner
from .architecture import encoder_prefix, input_stream_is_causal
from .checkpointing import CheckpointedSources
from .config import FlareConfig
from .construction import configure_layers, plan_capture
from .fusion import POSITION_MIXING_FUSIONS
from .layer import FlareLinear
from .precision import autocast_dtype, keep_trainables_in_float32
from .source_pass import plan_early_exit, run_source_pass
from .state import DECODER_STREAM, INPUT_STREAM, BoundSource, FlareState
from .token_pairing import (
    GenerationPlan,
)

if TYPE_CHECKING:
    from .source_cache import SourceCache

STAGE1_MODES = ("merge", "frozen")


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
        self.encoder_prefix = encoder_prefix(network)
        self.fused_modules = configure_layers(
            network, flare_config, adapter_name, self.flare_state, self.encoder_prefix
        )
        causal = input_stream_is_causal(network, flare_config.causal)
        self.aligner = PositionAligner(
            self.flare_state, flare_config, self.is_encoder_decoder, causal, lambda: self.fusion_active
        )
        self._mixes_causal_positions = flare_config.fusion in POSITION_MIXING_FUSIONS and any(
            self.aligner.stream_is_causal(layer.flare_stream) for layer in self.fused_modules.values()
        )
        self._capture_points = plan_capture(network, flare_config, self.fused_modules, self.encoder_prefix)
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
        self.aligner.register(network)
        keep_trainables_in_float32(self)

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
                "with flare_xlt.adapter.source_cache.open_source_cache, or leave source_keys out."
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
        """Write adapter_config.json + adapter_model.safetensors (a standard PEFT LoRA) and flare_config.json at the
        top of `save_directory` (adapter_files.py)."""
        kwargs["selected_adapters"] = [self.flare_adapter_name]
        kwargs["safe_serialization"] = True
        write_adapter_files(
            self, Path(save_directory), lambda staging: super(FlareModel, self).save_pretrained(staging, **kwargs)
        )

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
        directory = adapter_folder(model_id, revision, token)
        flare = get_flare_model(model, FlareConfig.load(directory), adapter_name=adapter_name, stage1=stage1)
        flare.load_flare_weights(*read_adapter_weights(directory))
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
        load_adapter_weights(self, weights, source)

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
