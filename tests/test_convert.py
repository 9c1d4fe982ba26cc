"""flare_xlt.convert.gguf_to_hf on a tiny Llama written as GGUF here: the HF folder holds the same model and tokenizer
as transformers' own GGUF loading, is written once, and bad input fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flare_xlt.convert import gguf_to_hf

gguf = pytest.importorskip("gguf")

TOKENS = ["<unk>", "<s>", "</s>", "▁", *("▁" + word for word in "the cat sat on a mat".split()), *"abcdehmnorst"]
HIDDEN, FFN, LAYERS, HEADS = 16, 32, 2, 2


def write_tiny_llama(path) -> None:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([0.0, 0.0, 0.0, *(-float(i) for i in range(len(TOKENS) - 3))])
    writer.add_token_types([2, 3, 3, *[1] * (len(TOKENS) - 3)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    shapes = {"token_embd.weight": (len(TOKENS), HIDDEN), "output_norm.weight": (HIDDEN,)}
    shapes["output.weight"] = (len(TOKENS), HIDDEN)
    for layer in range(LAYERS):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes[f"blk.{layer}.{name}.weight"] = (HIDDEN, HIDDEN)
        shapes.update({f"blk.{layer}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{layer}.ffn_up.weight": (FFN, HIDDEN)})
        shapes[f"blk.{layer}.ffn_down.weight"] = (HIDDEN, FFN)
        shapes.update({f"blk.{layer}.attn_norm.weight": (HIDDEN,), f"blk.{layer}.ffn_norm.weight": (HIDDEN,)})
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_to_hf_keeps_the_model_and_tokenizer(tmp_path):
    write_tiny_llama(tmp_path / "tiny.gguf")
    folder = gguf_to_hf(tmp_path / "tiny.gguf", tmp_path / "hf")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("the cat sat on a mat", return_tensors="pt").input_ids
    assert ids[0, 0] == 1 and tokenizer.decode(ids[0], skip_special_tokens=True) == "the cat sat on a mat"
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, reference(ids).logits)
    assert not hasattr(converted.config, "quantization_config")

    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert gguf_to_hf(tmp_path / "tiny.gguf", folder) == folder  # present: kept, not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == written


def test_gguf_to_hf_refuses_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "hf")
    with pytest.raises(ValueError, match="Unknown dtype 'int4'"):
        gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "hf", dtype="int4")
    assert not (tmp_path / "hf").exists()
