"""FlareConfig: the settings of one FLARE adapter, saved next to the PEFT LoRA files as flare_config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..io import write_text_atomic

if TYPE_CHECKING:
    from peft import LoraConfig

FLARE_CONFIG_NAME = "flare_config.json"
# The choices of the settings below; fusion.py and token_pairing.py implement them. They are named here, in a module
# that imports no torch, so that the command line can check and explain them without loading a model library.
POSITION_MIXING_FUSIONS = ("matmul", "matmul_relu", "cross_attention")
FUSION_NAMES = ("add", "mul", "add_relu", "mul_relu", *POSITION_MIXING_FUSIONS)
PAIRING_MODES = ("start", "end", "proportional")
# How a training run keeps FLARE's source tensors between epochs (source_cache.py).
CACHE_MODES = ("off", "memory", "disk")
# The feature field that carries a training example's source-cache key; the collator hands them over as source_keys.
KEY_FIELD = "source_key"
UNPAIRED_MODES = ("lora", "zero_source")
SOURCE_SITES = ("linear_input", "block_input")
# Leaf names of the attention query and value projections across HF architectures (Llama/Gemma/Qwen/Mistral,
# BERT/XLM-R, T5/mT5). The paper fuses exactly these.
DEFAULT_FUSION_LEAVES = ("q_proj", "v_proj", "query", "value", "q", "v")


@dataclass
class FlareConfig:
    r: int = field(default=8, metadata={"help": "LoRA rank: width of the bottleneck in which source and target fuse."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator; the update is scaled by alpha/r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input (source and target)."})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "LoRA targets (PEFT semantics: suffixes or a regex). None: PEFT's default per architecture."},
    )
    fusion_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Which LoRA targets receive the source (suffixes or a regex). "
            "None: the attention query and value projections (q_proj/v_proj, query/value, q/v)."
        },
    )
    fusion: str | None = field(
        default="add_relu",
        metadata={
            "help": f"Fusion function phi(A·x_s, A·x_t): one of {', '.join(FUSION_NAMES)}, or None (plain LoRA)."
        },
    )
    cross_attention_heads: int = field(
        default=1, metadata={"help": "Heads of the cross_attention fusion; must divide r."}
    )
    cross_attention_dropout: float = field(
        default=0.0, metadata={"help": "Attention dropout of cross_attention fusion."}
    )
    source_site: str = field(
        default="linear_input",
        metadata={
            "help": "Which source tensor a fused module gets. linear_input: the input the same module saw in the "
            "source pass (the normalised input on pre-norm models). block_input: the residual stream entering the "
            "module's block, HF hidden_states[i] (the authors' code)."
        },
    )
    source_layer_offset: int = field(
        default=0,
        metadata={
            "help": "0: block i fuses the source state entering block i (authors' code). 1: the state leaving block i, "
            "i.e. one block deeper (the paper's figure). 1 requires source_site='block_input'."
        },
    )
    mask_source_padding: bool = field(
        default=True,
        metadata={
            "help": "True: source and target are aligned from their first real token and pad positions contribute "
            "nothing. False: align by padded position and fuse pads like tokens (the authors' code)."
        },
    )
    pairing: str = field(
        default="start",
        metadata={
            "help": "Which source token each target token reads. start: the k-th real tokens of both sides pair "
            "(every token, answer tokens included, while the source lasts). end: prompt ends pair, counting "
            "backwards. proportional: prompt token k of P pairs with source token round(k(S-1)/(P-1)). "
            "end and proportional pair prompt tokens only; answer and generated tokens have no partner."
        },
    )
    unpaired: str = field(
        default="lora",
        metadata={
            "help": "What a target token without a source partner computes. lora: plain LoRA B·A·x_t. "
            "zero_source: the fusion with a zero source, phi(0, A·x_t), so the adapter computes one function on "
            "every token (relu(A·x_t) for add_relu)."
        },
    )
    source_dropout: bool = field(
        default=True,
        metadata={
            "help": "True: the source pass runs in the model's train/eval mode, so dropout noises the English side in "
            "training (the authors' code). False: it always runs with every module in eval mode: a deterministic "
            "source, clean as at test time, which the training source cache (TrainConfig.source_cache) needs."
        },
    )
    fuse_at_inference: bool = field(
        default=True, metadata={"help": "Fuse the source in eval mode too. False: eval runs as plain LoRA."}
    )
    modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Extra modules trained in full and saved with the adapter, e.g. ['classifier']."},
    )
    causal: bool | None = field(
        default=None,
        metadata={
            "help": "Whether the model's input tokens attend causally. None: decided from the model's config (an "
            "encoder-decoder or a registered masked-LM architecture is bidirectional; is_decoder or a registered "
            "causal-LM architecture is causal), and a model it cannot place is refused. Set it only for such a model."
        },
    )
    mt_source_dim: int | None = field(
        default=None,
        metadata={
            "help": "FLARE-MT: width of external source_embeds (e.g. 1024 for NLLB-600M encoder states). A trainable "
            "Linear(mt_source_dim, d_model) maps them to the model width. None: FLARE-MT is off."
        },
    )

    def __post_init__(self) -> None:
        if self.fusion is not None and self.fusion not in FUSION_NAMES:
            raise ValueError(f"Unknown fusion {self.fusion!r}; valid choices: {', '.join(FUSION_NAMES)} or None.")
        if self.source_site not in SOURCE_SITES:
            raise ValueError(f"Unknown source_site {self.source_site!r}; valid choices: {', '.join(SOURCE_SITES)}.")
        if self.pairing not in PAIRING_MODES:
            raise ValueError(f"Unknown pairing {self.pairing!r}; valid choices: {', '.join(PAIRING_MODES)}.")
        if self.unpaired not in UNPAIRED_MODES:
            raise ValueError(f"Unknown unpaired {self.unpaired!r}; valid choices: {', '.join(UNPAIRED_MODES)}.")
        if self.pairing != "start" and not self.mask_source_padding:
            raise ValueError(
                f"pairing={self.pairing!r} counts real tokens; mask_source_padding=False pairs padded positions "
                "(the authors' code) and works with pairing='start' only."
            )
        if self.source_layer_offset not in (0, 1):
            raise ValueError(f"source_layer_offset must be 0 or 1, got {self.source_layer_offset!r}.")
        if self.source_layer_offset == 1 and self.source_site != "block_input":
            raise ValueError(
                "source_layer_offset=1 takes the state leaving the block, which is only defined for "
                "source_site='block_input'; got source_site='linear_input'."
            )
        if self.r <= 0:
            raise ValueError(f"r must be a positive integer, got {self.r!r}.")
        if self.cross_attention_heads <= 0 or self.r % self.cross_attention_heads:
            raise ValueError(
                f"cross_attention_heads={self.cross_attention_heads} must be positive and divide r={self.r}."
            )
        if self.causal not in (None, True, False):
            raise ValueError(f"causal must be True, False or None (decided from the model), got {self.causal!r}.")
        if self.mt_source_dim is not None and self.mt_source_dim <= 0:
            raise ValueError(f"mt_source_dim must be a positive integer or None, got {self.mt_source_dim!r}.")

    def to_lora_config(self) -> LoraConfig:
        """The PEFT LoRA config this adapter is saved as; plain PEFT can load it as a target-only LoRA."""
        from peft import LoraConfig  # imported here: reading and checking a config needs no torch

        return LoraConfig(
            r=self.r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            modules_to_save=self.modules_to_save,
        )

    def save(self, directory: str | Path) -> None:
        write_text_atomic(Path(directory) / FLARE_CONFIG_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> FlareConfig:
        path = Path(directory) / FLARE_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a FLARE adapter directory. A plain PEFT LoRA directory loads "
                "with peft.PeftModel.from_pretrained instead."
            )
        values = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path} has unknown fields {unknown}; valid fields: {sorted(known)}.")
        return cls(**values)
