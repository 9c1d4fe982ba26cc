"""The stage-1 model a transfer starts from: merged or kept frozen, the new model at init computes the stage-1 model.

Stage 1 is saved and restored the way the pipeline does it: `PeftModel.from_pretrained` onto a fresh base whose
task head is newly initialised, so only the adapter's saved copies (modules_to_save) hold the trained head. PEFT
versions differ in what `unload()` returns for such a copy (0.21: the trained copy; 0.22: the original module), so
every case also runs with the newer behaviour.
"""

from __future__ import annotations

import pytest
import torch
from conftest import batch_for, build
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.other import ModulesToSaveWrapper

from flare_xlt import FlareConfig, get_flare_model

QUERY_VALUE = {"llama": ["q_proj", "v_proj"], "xlmr-cls": ["query", "value"]}
# (model, stage-1 LoRA targets, modules stage 1 saves, modules_to_save of the new adapter): the pipeline's choices
# (the encoder's head, with and without embeddings; the decoder's lora, lora+head, lora+head+embeddings) and
# stage-1 LoRA on every linear layer.
CASES = [
    ("xlmr-cls", QUERY_VALUE["xlmr-cls"], ["classifier"], ["classifier"]),
    ("xlmr-cls", QUERY_VALUE["xlmr-cls"], ["classifier", "word_embeddings"], ["classifier", "word_embeddings"]),
    ("xlmr-cls", "all-linear", ["classifier"], ["classifier"]),
    ("llama", QUERY_VALUE["llama"], None, None),
    ("llama", QUERY_VALUE["llama"], ["lm_head"], ["lm_head"]),
    ("llama", QUERY_VALUE["llama"], ["lm_head", "embed_tokens"], ["lm_head", "embed_tokens"]),
    ("llama", "all-linear", ["lm_head", "embed_tokens"], ["lm_head", "embed_tokens"]),
    ("llama", QUERY_VALUE["llama"], ["lm_head", "embed_tokens"], None),
]


@pytest.fixture(params=["installed", "original-module"])
def peft_unload(request):
    """Run a test with the installed PEFT's unload() and with the behaviour of the other PEFT versions."""
    if request.param == "original-module":
        request.getfixturevalue("unload_gives_original_modules")
    return request.param


def saved_stage1(kind: str, targets, saved: list[str] | None, folder, lora_dropout: float = 0.0) -> None:
    """A trained-looking stage-1 adapter (random LoRA A and B, perturbed head/embedding copies) saved to `folder`."""
    stage1 = get_peft_model(
        build(kind), LoraConfig(r=4, target_modules=targets, modules_to_save=saved, lora_dropout=lora_dropout)
    )
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in stage1.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    stage1.save_pretrained(folder)


def restored_stage1(kind: str, folder) -> PeftModel:
    """The saved stage 1 on a fresh base whose head and embeddings are newly (differently) initialised."""
    return PeftModel.from_pretrained(build(kind, seed=9), folder)


def target_inputs(kind: str) -> dict:
    batch = batch_for(kind)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@pytest.mark.parametrize("mode", ["merge", "frozen"])
@pytest.mark.parametrize(("kind", "targets", "saved", "modules_to_save"), CASES)
def test_the_new_model_at_init_computes_the_stage1_model(
    peft_unload, tmp_path, kind, targets, saved, modules_to_save, mode
):
    saved_stage1(kind, targets, saved, tmp_path)
    inputs = target_inputs(kind)
    with torch.no_grad():
        expected = restored_stage1(kind, tmp_path).eval()(**inputs).logits
    config = FlareConfig(target_modules=QUERY_VALUE[kind], modules_to_save=modules_to_save)
    flare = get_flare_model(restored_stage1(kind, tmp_path), config, stage1=mode).eval()
    with torch.no_grad():
        torch.testing.assert_close(flare(**inputs).logits, expected, atol=1e-5, rtol=0)
        source = batch_for(kind)  # fused with an English source: still the stage-1 model while LoRA B is zero
        torch.testing.assert_close(flare(**source).logits, expected, atol=1e-5, rtol=0)
    # The trained copies are what the new adapter's own copies start from, so training starts from stage 1 too.
    for name in modules_to_save or []:
        copies = [m for n, m in flare.named_modules() if n.endswith(name) and isinstance(m, ModulesToSaveWrapper)]
        assert copies, name
        for wrapper in copies:
            for original, copied in zip(
                wrapper.original_module.parameters(), wrapper.modules_to_save["flare"].parameters(), strict=True
            ):
                assert torch.equal(original, copied)


def test_a_frozen_stage1_adapter_applies_no_dropout(tmp_path):
    """Kept frozen, the stage-1 LoRA computes what merging it would: its dropout is off even in training mode."""
    saved_stage1("xlmr-cls", QUERY_VALUE["xlmr-cls"], ["classifier"], tmp_path, lora_dropout=0.5)
    inputs = target_inputs("xlmr-cls")
    with torch.no_grad():
        expected = restored_stage1("xlmr-cls", tmp_path).eval()(**inputs).logits
    config = FlareConfig(modules_to_save=["classifier"])
    flare = get_flare_model(restored_stage1("xlmr-cls", tmp_path), config, stage1="frozen").train()
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(flare(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_named_target_modules_are_found_on_a_stage1_model_that_peft_already_wrapped():
    """A transfer checks its targets on the stage-1 model, where a frozen stage-1 LoRA has wrapped the same layers."""
    from flare_xlt.pipeline.stage1 import check_target_modules

    wrapped = get_peft_model(build("xlmr-cls"), LoraConfig(target_modules=["query", "value"]))
    check_target_modules(wrapped, ["query", "value"], "m")
    with pytest.raises(
        ValueError, match=r"\['nope'\] match no linear layer of m; its linear layers are named: "
    ) as error:
        check_target_modules(wrapped, ["query", "nope"], "m")
    assert "query" in str(error.value) and "default" not in str(error.value)  # the adapters' layers are no targets
