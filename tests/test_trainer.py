"""The paired collator feeds a FlareModel through the HF Trainer, with the source fused in every step."""

from __future__ import annotations

import torch
from conftest import DECODER_SIZES, FIXTURES, train_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from flare_xlt import FlareConfig, get_flare_model
from flare_xlt.tasks import XNLI, PairedCollator, TaskEncoder, load_original_view, pair_views


def test_trainer_runs_fused_steps(tmp_path):
    tokenizer = train_tokenizer("decoder")
    torch.manual_seed(0)
    sizes = {**DECODER_SIZES, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    model = LlamaForCausalLM(LlamaConfig(**sizes))
    flare = get_flare_model(model, FlareConfig())
    pairs = pair_views(
        XNLI,
        load_original_view(XNLI, "es", "validation", FIXTURES / "XNLI-1.0"),
        load_original_view(XNLI, "en", "validation", FIXTURES / "XNLI-1.0"),
    )
    features, _, _ = TaskEncoder(XNLI, tokenizer, "decoder").encode(pairs)

    source_passes = []
    q_proj = flare.get_base_model().model.layers[0].self_attn.q_proj
    q_proj.register_forward_pre_hook(lambda *_: source_passes.append(flare.flare_state.capturing))
    before = {n: p.detach().clone() for n, p in flare.named_parameters() if p.requires_grad}

    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        remove_unused_columns=False,  # the Trainer would otherwise drop source_* (not in the base forward signature)
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
    )
    trainer = Trainer(
        model=flare, args=arguments, train_dataset=features, data_collator=PairedCollator.for_tokenizer(tokenizer)
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert source_passes.count(True) == 2  # one source pass per step
    changed = [n for n, p in flare.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed and all("lora_" in n for n in changed)
