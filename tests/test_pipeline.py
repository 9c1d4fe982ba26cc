"""The workflow end to end on tiny models: finetune -> translate -> transfer with each method -> evaluate."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DECODER_SIZES, ENCODER_SIZES, FIXTURES, build_nllb, train_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM, XLMRobertaConfig, XLMRobertaForMaskedLM

from flare_xlt.cli import mt_states
from flare_xlt.mt import GenerationSettings, Translator
from flare_xlt.mt.data import translate_task, write_records
from flare_xlt.pipeline import AdapterConfig, TrainConfig, finetune, transfer
from flare_xlt.tasks import NUSAX, load_original_view

NUSAX_DATA = str(FIXTURES / "nusax")
QUICK = TrainConfig(batch_size=2, max_steps=2, learning_rate=1e-3, max_length=48, seed=3)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny encoder and decoder checkpoints with their tokenizers, and NusaX translations made by a tiny NLLB."""
    root = tmp_path_factory.mktemp("workflow")
    torch.manual_seed(0)
    encoder_tokenizer = train_tokenizer("encoder")
    XLMRobertaForMaskedLM(XLMRobertaConfig(**{**ENCODER_SIZES, "vocab_size": len(encoder_tokenizer)})).save_pretrained(
        root / "encoder"
    )
    encoder_tokenizer.save_pretrained(root / "encoder")
    decoder_tokenizer = train_tokenizer("decoder")
    sizes = {
        **DECODER_SIZES,
        "vocab_size": len(decoder_tokenizer),
        "pad_token_id": decoder_tokenizer.pad_token_id,
        "bos_token_id": decoder_tokenizer.bos_token_id,
        "eos_token_id": decoder_tokenizer.eos_token_id,
    }
    LlamaForCausalLM(LlamaConfig(**sizes)).save_pretrained(root / "decoder")
    decoder_tokenizer.save_pretrained(root / "decoder")

    corpus = [path.read_text(encoding="utf-8") for path in sorted(FIXTURES.rglob("*")) if path.is_file()]
    nllb_tokenizer, nllb = build_nllb(corpus, vocab_size=400)
    nllb.save_pretrained(root / "nllb")
    nllb_tokenizer.save_pretrained(root / "nllb")
    translator = Translator(root / "nllb", GenerationSettings(1, 48, 12), progress=False)
    translate_task(NUSAX, ["train"], "en", "id", translator, root / "translations", data=NUSAX_DATA)
    translate_task(NUSAX, ["test"], "id", "en", translator, root / "translations", data=NUSAX_DATA)
    mt_states(
        input=root / "translations" / "nusax_train_en-id.jsonl",
        language="id",
        output=root / "states" / "train",
        task="nusax",
        model=str(root / "nllb"),
        device="cpu",
    )
    write_records(root / "test_id.jsonl", load_original_view(NUSAX, "id", "test", NUSAX_DATA))
    mt_states(
        input=root / "test_id.jsonl",
        language="id",
        output=root / "states" / "test",
        task="nusax",
        model=str(root / "nllb"),
        device="cpu",
    )
    return root


def read_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    return metrics, predictions


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_every_method_runs_end_to_end(workspace, kind, capsys):
    runs = workspace / f"runs-{kind}"
    stage1 = finetune(str(workspace / kind), "nusax", output=runs, data=NUSAX_DATA, train=QUICK)
    assert (stage1 / "adapter" / "adapter_config.json").is_file()
    methods = ["zero-shot", "translate-test", "lora", "input-fusion", "flare"]
    if kind == "encoder":
        methods.append("flare-mt")
    for method in methods:
        run_dir = transfer(
            str(workspace / kind),
            "nusax",
            "id",
            method,
            stage1,
            workspace / "translations",
            output=runs,
            data=NUSAX_DATA,
            mt_states=workspace / "states",
            train=QUICK,
        )
        metrics, predictions = read_metrics(run_dir)
        assert (metrics["task"], metrics["language"], metrics["method"], metrics["seed"]) == ("nusax", "id", method, 3)
        assert metrics["metric"] == "macro_f1" and metrics["scores"]["id"]["count"] == 3
        assert [row["id"] for row in predictions] == ["11", "12", "13"]
        assert [row["reference"] for row in predictions] == [2, 0, 1]
        if method in ("lora", "input-fusion", "flare", "flare-mt"):
            assert (run_dir / "adapter" / "adapter_config.json").is_file()
        if method.startswith("flare"):
            assert (run_dir / "adapter" / "flare_config.json").is_file()
        assert json.loads((run_dir / "config.json").read_text())["method"] == method
        assert "torch" in json.loads((run_dir / "environment.json").read_text())
    # The same request again finds the finished run; another seed is another directory.
    again = transfer(
        str(workspace / kind),
        "nusax",
        "id",
        "flare",
        stage1,
        workspace / "translations",
        output=runs,
        data=NUSAX_DATA,
        train=QUICK,
    )
    assert "finished earlier, skipped" in capsys.readouterr().out
    other = transfer(
        str(workspace / kind),
        "nusax",
        "id",
        "flare",
        stage1,
        workspace / "translations",
        output=runs,
        data=NUSAX_DATA,
        train=TrainConfig(**{**vars(QUICK), "seed": 4}),
    )
    assert other != again and other.name.startswith("nusax-id-flare-seed4-")


def test_transfer_errors_name_the_choices(workspace):
    with pytest.raises(ValueError, match="Unknown method 'mixup'; valid choices: zero-shot, translate-test"):
        transfer(str(workspace / "encoder"), "nusax", "id", "mixup", workspace)
    with pytest.raises(ValueError, match="has no language 'xx'"):
        transfer(str(workspace / "encoder"), "nusax", "xx", "flare", workspace)
    with pytest.raises(ValueError, match="needs --translations"):
        transfer(str(workspace / "encoder"), "nusax", "id", "flare", workspace)
    with pytest.raises(ValueError, match=r"Unknown stage1_mode 'keep'; valid choices: merge, frozen"):
        transfer(str(workspace / "encoder"), "nusax", "id", "flare", workspace, workspace, stage1_mode="keep")
    assert AdapterConfig().fusion == "add_relu"
